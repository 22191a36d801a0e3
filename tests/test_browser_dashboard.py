"""The dashboard in a real browser: a campaign started in another tab moves today's count, the
campaign's row and the chart without a reload; on a phone the menu folds and nothing scrolls sideways."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants, tenant
from tests.browsers import connect_sandbox_whatsapp, contacts_on_a_list, sign_up, write_campaign
from tests.conftest import ARTIFACTS
from tests.factories import make_page, make_segment, tenant_named

RECIPIENTS = 200
PAGE_RATE = "40"  # messages per second: the send lasts about five seconds, long enough to watch
WORKSPACE = "Dash Co"
QUOTA_USED = "() => Number(document.querySelector('[data-testid=quota-used]')?.textContent.replace(/,/g, ''))"
TOTAL_SENT = "() => Number(document.getElementById('activity-whatsapp')?.dataset.totalSent ?? -1)"


@pytest.fixture
def page(page):
    page.on("dialog", lambda dialog: dialog.accept())
    return page


def _sign_up_and_connect_a_sandbox_page(page: Page, live_server: str) -> None:
    sign_up(page, live_server, WORKSPACE, "dash@acme.example")
    expect(page.get_by_test_id("first-steps")).to_be_visible()
    page.get_by_role("link", name="Connect a page").click()
    connect_sandbox_whatsapp(page, "Sandbox WhatsApp", "109876543210089", rate=PAGE_RATE)


def _add_contacts_and_more_pages(app) -> None:
    """RECIPIENTS contacts on the list "Dash list", two more pages (a wider usage table) and a segment."""
    contacts_on_a_list(app, WORKSPACE, "Dash list", [f"+5511963{n:04d}1" for n in range(RECIPIENTS)])
    with app.app_context(), all_tenants(db.session):
        tenant_id = tenant_named(WORKSPACE).id
    with app.app_context(), tenant(db.session, tenant_id):
        workspace = db.session.get(Tenant, tenant_id)
        for name in ("Second WhatsApp line (backup for the busy season)", "Third WhatsApp line"):
            make_page(workspace, {}).name = name
        make_segment(workspace, {})
        db.session.commit()


def _start_a_campaign(tab: Page, live_server: str) -> None:
    tab.goto(f"{live_server}/campaigns/new")
    write_campaign(
        tab, "Dashboard day", "Sandbox WhatsApp", "Hi {{firstName}}, look at the dashboard!", "Dash list"
    )
    tab.get_by_role("button", name="Save campaign").click()
    expect(tab.get_by_test_id("campaign-state")).to_have_text("draft")
    tab.get_by_role("button", name="Start now").click()
    expect(tab.get_by_test_id("campaign-state")).to_have_text(re.compile("running|completed"))


def test_the_dashboard_follows_a_campaign_live_and_folds_on_a_phone(
    app, live_server, worker_process, sandbox, page
):
    _sign_up_and_connect_a_sandbox_page(page, live_server)
    _add_contacts_and_more_pages(app)

    page.goto(f"{live_server}/dashboard")
    expect(page.get_by_test_id("quota-used")).to_have_text("0")
    expect(page.get_by_test_id("quota-limit")).to_have_text("10,000")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    expect(page.get_by_text("Nothing sent in the last 30 days.")).to_be_visible()
    page.evaluate("window.stillTheSamePage = true")

    other_tab = page.context.new_page()
    _start_a_campaign(other_tab, live_server)

    # the dashboard moves while the campaign runs, and lands on the final numbers, without a reload
    page.wait_for_function(f"() => {{ const n = ({QUOTA_USED})(); return n > 0 && n < {RECIPIENTS}; }}")
    row = page.locator("[data-campaign-row]", has_text="Dashboard day")
    expect(row).to_be_visible()
    expect(page.get_by_test_id("quota-used")).to_have_text(str(RECIPIENTS), timeout=30_000)
    page.wait_for_function(f"() => ({TOTAL_SENT})() === {RECIPIENTS}", timeout=15_000)
    expect(row.locator('[data-live="state"]')).to_have_text("completed", timeout=15_000)
    expect(row.locator('[data-live="percent"]')).to_have_text("100.0%")
    expect(row.locator("progress")).to_have_attribute("value", str(RECIPIENTS))
    expect(page.locator("#activity-whatsapp .chart-canvas canvas")).to_have_count(1)  # uPlot drew it
    expect(page.locator("#activity-whatsapp .u-legend")).to_contain_text("sent")
    assert page.evaluate("window.stillTheSamePage") is True
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
    page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
    other_tab.close()

    # a phone: the links fold behind the menu button, and only tables scroll sideways
    page.set_viewport_size({"width": 390, "height": 844})
    menu = page.get_by_role("button", name="Menu")
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(page.get_by_role("link", name="Usage", exact=True)).to_be_hidden()
    page.wait_for_function("() => document.documentElement.scrollWidth <= 390")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_role("link", name="Usage", exact=True)).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "dashboard-phone-menu.png"), full_page=True)
    page.get_by_role("link", name="Usage", exact=True).click()

    expect(page.get_by_role("heading", name="Usage")).to_be_visible()
    expect(page.get_by_role("link", name="Dashboard", exact=True)).to_be_hidden()
    expect(page.get_by_test_id("quota-used")).to_have_text(str(RECIPIENTS))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator(".table-scroll", has=page.get_by_test_id("usage-days"))
    assert box.evaluate("(el) => el.scrollWidth > el.clientWidth"), "the usage table is wider than a phone"
    box.evaluate("(el) => { el.scrollLeft = el.scrollWidth; }")
    assert box.evaluate("(el) => el.scrollLeft") > 0
    assert page.evaluate("window.scrollX") == 0
    page.screenshot(path=str(ARTIFACTS / "usage-phone.png"), full_page=True)

    for path in ("/contacts", "/lists", "/segments", "/pages", "/members", "/templates", "/imports"):
        page.goto(f"{live_server}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, f"{path} scrolls sideways"
