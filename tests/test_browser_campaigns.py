"""A campaign in a real browser: write it, start it, watch it finish live, pause and resume a copy."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browsers import connect_sandbox_whatsapp, contacts_on_a_list, sign_up, write_campaign
from tests.conftest import ARTIFACTS

RECIPIENTS = 300
SENT_COUNT = "() => Number(document.querySelector('[data-count=sent]')?.textContent.replace(/,/g, '') || 0)"


@pytest.fixture
def page(page):
    page.on("dialog", lambda dialog: dialog.accept())  # the campaign page confirms cancel
    return page


def _sandbox_tally(sandbox) -> tuple[int, int]:
    stats = httpx.get(f"{sandbox.url}/_sandbox/stats", timeout=5).json()
    return stats["accepted"], stats["duplicates"]


def _sign_up_and_connect_a_sandbox_page(page: Page, live_server: str) -> None:
    sign_up(page, live_server, "Launch Co", "launch@acme.example")
    page.get_by_role("link", name="Pages", exact=True).click()
    connect_sandbox_whatsapp(page, "Sandbox WhatsApp", "109876543210077", rate=100)


def test_start_a_campaign_watch_it_complete_live_then_pause_and_resume_a_copy(
    app, live_server, worker_process, sandbox, page
):
    _sign_up_and_connect_a_sandbox_page(page, live_server)
    contacts_on_a_list(app, "Launch Co", "Launch list", [f"+5511962{n:04d}1" for n in range(RECIPIENTS)])

    page.get_by_role("link", name="Campaigns").click()
    expect(page.get_by_text("No campaigns yet.")).to_be_visible()
    page.get_by_role("button", name="New campaign").click()
    write_campaign(page, "Launch day", "Sandbox WhatsApp", "Hi {{firstName}}, we launched!", "Launch list")
    expect(page.get_by_test_id("audience-count")).to_contain_text(
        f"{RECIPIENTS} will receive it; excluded: 0 opted out"
    )
    page.screenshot(path=str(ARTIFACTS / "campaign-editor.png"), full_page=True)
    page.get_by_role("button", name="Save campaign").click()
    expect(page.get_by_text("Campaign Launch day saved as a draft.")).to_be_visible()
    expect(page.get_by_test_id("campaign-state")).to_have_text("draft")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

    page.evaluate("window.stillTheSamePage = true")
    page.get_by_role("button", name="Start now").click()
    expect(page.get_by_test_id("action-notice")).to_contain_text(f"started: {RECIPIENTS} recipients")
    # the counters move while it runs, without reloading the page
    page.wait_for_function(f"() => {{ const n = ({SENT_COUNT})(); return n > 0 && n < {RECIPIENTS}; }}")
    expect(page.get_by_test_id("campaign-state")).to_have_text("completed", timeout=30_000)
    expect(page.get_by_test_id("count-sent")).to_have_text(f"{RECIPIENTS} sent")
    expect(page.get_by_test_id("count-pending")).to_have_text("0 pending")
    expect(page.locator('[data-live="percent"]')).to_have_text("100.0")
    expect(page.locator('[data-live="bar"]')).to_have_attribute("value", str(RECIPIENTS))
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    expect(page.get_by_role("button", name="Duplicate")).to_be_visible()
    assert page.evaluate("window.stillTheSamePage") is True
    assert _sandbox_tally(sandbox) == (RECIPIENTS, 0)
    page.screenshot(path=str(ARTIFACTS / "campaign-completed.png"), full_page=True)

    page.get_by_role("button", name="Duplicate").click()
    expect(page.get_by_text("Campaign copied as Launch day (copy), a draft.")).to_be_visible()
    page.get_by_label("Send rate (messages per second, optional)").fill("30")
    page.get_by_role("button", name="Save campaign").click()
    page.get_by_role("button", name="Start now").click()
    page.wait_for_function(f"() => ({SENT_COUNT})() >= 30", timeout=30_000)
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_test_id("campaign-state")).to_have_text("paused")
    expect(page.get_by_test_id("pause-reason")).to_contain_text("Paused by launch@acme.example on ")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "campaign-paused.png"), full_page=True)
    time.sleep(1.5)  # sends already under way finish; nothing new starts
    accepted_while_paused = _sandbox_tally(sandbox)[0]
    time.sleep(1.5)
    assert _sandbox_tally(sandbox)[0] == accepted_while_paused < 2 * RECIPIENTS
    expect(page.get_by_test_id("count-in_flight")).to_have_text("0 being sent", timeout=10_000)
    expect(page.get_by_test_id("count-sent")).to_have_text(f"{accepted_while_paused - RECIPIENTS} sent")

    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_test_id("campaign-state")).to_have_text(re.compile("running|completed"))
    expect(page.get_by_test_id("campaign-state")).to_have_text("completed", timeout=30_000)
    expect(page.get_by_test_id("count-sent")).to_have_text(f"{RECIPIENTS} sent")
    assert _sandbox_tally(sandbox) == (2 * RECIPIENTS, 0)

    page.get_by_role("link", name="← Campaigns").click()
    rows = page.get_by_test_id("campaigns")
    expect(rows).to_contain_text("Launch day (copy)")
    expect(rows.locator("tr", has_text="Launch day (copy)")).to_contain_text("100.0%")
