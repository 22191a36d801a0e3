"""The platform operator in a real browser: a quota raised shows on the tenant's open dashboard at once,
a suspension stops a running campaign within seconds, and the audit log lists both."""

from __future__ import annotations

import time

import httpx
from playwright.sync_api import expect
from sqlalchemy import select

from tenants.accounts import make_platform_admin
from tenants.campaigns import Campaign, CampaignState
from tenants.db import db
from tenants.scoping import all_tenants
from tests.browsers import connect_sandbox_whatsapp, contacts_on_a_list, sign_up, write_campaign
from tests.conftest import ARTIFACTS

RECIPIENTS = 600
RATE = 25  # messages per second: the campaign runs for half a minute unless stopped
ADMIN_EMAIL, ADMIN_PASSWORD = "operator@crier.example", "an operator password"


def _accepted(sandbox) -> int:
    return httpx.get(f"{sandbox.url}/_sandbox/stats", timeout=5).json()["accepted"]


def _campaign_state(app) -> CampaignState:
    with app.app_context(), all_tenants(db.session):
        state = db.session.scalar(select(Campaign.state).where(Campaign.name == "Big send"))
        db.session.rollback()
        return state


def test_the_operator_raises_a_quota_live_suspends_a_sending_tenant_and_the_audit_log_says_so(
    app, live_server, worker_process, sandbox, browser
):
    with app.app_context(), all_tenants(db.session):
        make_platform_admin(ADMIN_EMAIL, ADMIN_PASSWORD)
    owner = browser.new_context().new_page()
    owner.set_default_timeout(15_000)
    operator = browser.new_context().new_page()
    operator.set_default_timeout(15_000)
    try:
        sign_up(owner, live_server, "Ops Co", "owner@ops.example")
        owner.get_by_role("link", name="Pages", exact=True).click()
        connect_sandbox_whatsapp(owner, "Ops WhatsApp", "109876543210088", rate=RATE)
        contacts_on_a_list(app, "Ops Co", "Everyone", [f"+5511963{n:04d}1" for n in range(RECIPIENTS)])
        owner.get_by_role("link", name="Dashboard").click()
        expect(owner.locator("#live-status")).to_have_attribute("data-state", "live")
        expect(owner.get_by_test_id("quota-limit")).to_have_text("10,000")
        owner.evaluate("window.stillTheSamePage = true")

        # the operator finds the tenant and raises its daily quota
        operator.goto(f"{live_server}/login")
        operator.get_by_label("Email").fill(ADMIN_EMAIL)
        operator.get_by_label("Password").fill(ADMIN_PASSWORD)
        operator.get_by_role("button", name="Sign in").click()
        operator.goto(f"{live_server}/admin")
        operator.get_by_role("link", name="Ops Co").click()
        operator.get_by_label("Daily message quota").fill("25000")
        operator.get_by_role("button", name="Save limits").click()
        expect(operator.get_by_test_id("tenant-quota")).to_contain_text("25,000")

        # the tenant's dashboard, open all along, shows the new limit without a reload
        expect(owner.get_by_test_id("quota-limit")).to_have_text("25,000", timeout=5_000)
        assert owner.evaluate("window.stillTheSamePage") is True
        owner.screenshot(path=str(ARTIFACTS / "admin-quota-live.png"), full_page=True)

        # the tenant starts a campaign that would take half a minute
        owner.get_by_role("link", name="Campaigns").click()
        owner.get_by_role("button", name="New campaign").click()
        write_campaign(owner, "Big send", "Ops WhatsApp", "Hello {{first_name}}", "Everyone")
        owner.get_by_role("button", name="Save campaign").click()
        owner.get_by_role("button", name="Start now").click()
        deadline = time.monotonic() + 20
        while _accepted(sandbox) < 3 * RATE and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _accepted(sandbox) >= 3 * RATE, "the campaign never got going"

        # the operator suspends the workspace: sending stops within seconds
        operator.get_by_label("Reason").fill("Unpaid invoice #1042")
        suspended_at = time.monotonic()
        operator.get_by_role("button", name="Suspend workspace").click()
        expect(operator.get_by_test_id("tenant-status")).to_contain_text("suspended")
        while _campaign_state(app) is not CampaignState.PAUSED and time.monotonic() - suspended_at < 5:
            time.sleep(0.1)
        assert _campaign_state(app) is CampaignState.PAUSED
        time.sleep(1.0)  # sends already under way when it paused finish
        stopped_at = _accepted(sandbox)
        assert time.monotonic() - suspended_at < 5 + 1.5
        time.sleep(3.0)
        assert _accepted(sandbox) == stopped_at < RECIPIENTS, "the sink saw sends after the suspension"

        # the tenant's members see why
        owner.goto(f"{live_server}/dashboard")
        expect(owner.get_by_test_id("suspension-reason")).to_have_text("Unpaid invoice #1042")

        # the audit log lists both, with who did them
        operator.goto(f"{live_server}/admin/audit")
        entries = operator.get_by_test_id("audit-entry")
        expect(entries.filter(has_text="suspended the workspace")).to_contain_text("Unpaid invoice #1042")
        expect(entries.filter(has_text="changed limits")).to_contain_text("25,000")
        expect(entries.first).to_contain_text(ADMIN_EMAIL)
        operator.screenshot(path=str(ARTIFACTS / "admin-audit.png"), full_page=True)
    finally:
        owner.context.close()
        operator.context.close()
