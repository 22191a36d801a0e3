"""A campaign's report in a real browser: some recipients fail for good, the report says who and
why, and the CSV download holds one row per recipient."""

from __future__ import annotations

import csv
import re

from playwright.sync_api import Page, expect

from tests.browsers import contacts_on_a_list, write_campaign
from tests.conftest import ARTIFACTS
from tests.test_browser_campaigns import _sign_up_and_connect_a_sandbox_page

RECIPIENTS = 60
REFUSED = 6  # the sandbox refuses every recipient whose number ends in 0000 (permanent_suffixes)


def _phone(n: int) -> str:
    return f"+55119{n:04d}0000" if n % 10 == 0 else f"+5511962{n:04d}1"


def test_the_report_shows_who_failed_and_the_csv_has_every_recipient(
    app, live_server, worker_process, sandbox, page: Page
):
    _sign_up_and_connect_a_sandbox_page(page, live_server)
    # one in ten with a number the sandbox refuses
    contacts_on_a_list(app, "Launch Co", "Report list", [_phone(n) for n in range(RECIPIENTS)])

    page.get_by_role("link", name="Campaigns").click()
    page.get_by_role("button", name="New campaign").click()
    write_campaign(page, "Report day", "Sandbox WhatsApp", "Hi {{firstName}}!", "Report list")
    expect(page.get_by_test_id("audience-count")).to_contain_text(f"{RECIPIENTS} will receive it")
    page.get_by_role("button", name="Save campaign").click()
    page.get_by_role("button", name="Start now").click()
    expect(page.get_by_test_id("campaign-state")).to_have_text("completed", timeout=30_000)
    expect(page.get_by_test_id("count-failed")).to_have_text(f"{REFUSED} failed")
    expect(page.get_by_test_id("latest-problems")).to_contain_text("Message undeliverable to this recipient")

    page.get_by_role("link", name="Recipients report").click()
    expect(page.get_by_role("heading", name="Recipients of Report day")).to_be_visible()
    expect(page.get_by_test_id("state-all")).to_have_text(f"All {RECIPIENTS}")
    expect(page.get_by_test_id("timeline").locator("figure.chart")).to_have_attribute(
        "data-total-sent", str(RECIPIENTS - REFUSED)
    )

    page.get_by_test_id("state-failed").click()
    expect(page).to_have_url(re.compile(r"/campaigns/\d+/report\?state=failed$"))
    rows = page.get_by_test_id("recipient-table").locator("tbody tr")
    expect(rows).to_have_count(REFUSED)
    for n in range(REFUSED):
        row = rows.nth(n)
        expect(row).to_have_attribute("data-state", "failed")
        expect(row).to_contain_text("0000")
        expect(row).to_contain_text("131026")
        expect(row).to_contain_text("Message undeliverable to this recipient")
    page.screenshot(path=str(ARTIFACTS / "campaign-report-failed.png"), full_page=True)

    page.get_by_test_id("state-all").click()
    expect(page).to_have_url(re.compile(r"/campaigns/\d+/report$"))
    with page.expect_download() as download_info:
        page.get_by_test_id("export").click()
    download = download_info.value
    assert re.fullmatch(r"campaign-\d+-recipients\.csv", download.suggested_filename)
    with open(download.path(), newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == RECIPIENTS
    states = {
        row["address"].removeprefix("'"): row["state"] for row in table
    }  # '+55…: a phone, not a formula
    assert {address for address, state in states.items() if state == "failed"} == {
        _phone(n) for n in range(0, RECIPIENTS, 10)
    }
    assert {state for state in states.values()} - {"failed"} <= {"sent", "delivered", "read"}
    assert all(row["error code"] == "131026" for row in table if row["state"] == "failed")
