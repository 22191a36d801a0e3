"""The API in a real browser: an owner makes a token on the settings page, then opens the API's
reference, which lists every operation and answers a request made with that token, with no script
error and nothing refused by the Content Security Policy."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browsers import sign_up
from tests.conftest import ARTIFACTS

RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


@pytest.fixture
def page(page):
    page.on("dialog", lambda dialog: dialog.accept())
    page.add_init_script(RECORD_CSP_VIOLATIONS)
    return page


def test_an_owner_makes_a_token_and_tries_it_in_the_api_reference(live_server, page):
    sign_up(page, live_server, "Docs Co", "docs@acme.example")
    page.locator("#workspace-switcher summary").click()
    page.get_by_role("link", name="API tokens").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    page.get_by_label("Name").fill("Shop CRM")
    page.get_by_label("Read everything").check()
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_text("Token Shop CRM created")).to_be_visible()
    secret = page.get_by_test_id("token-secret").input_value()
    assert re.fullmatch(r"crier_[A-Za-z0-9_-]{40}", secret)
    expect(page.get_by_test_id("token-status")).to_have_text("active")
    page.screenshot(path=str(ARTIFACTS / "api-token-created.png"), full_page=True)

    problems: list[str] = []  # on the reference page
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.get_by_role("link", name="Crier API").click()
    expect(page).to_have_url(f"{live_server}/api/v1/docs")
    expect(page.locator(".opblock-tag", has_text="pages")).to_be_visible()
    expect(page.locator('.opblock-get [data-path="/api/v1/pages/{page_id}"]')).to_have_count(1)
    get_pages = page.locator(".opblock-get", has=page.locator('[data-path="/api/v1/pages"]'))
    expect(get_pages).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=True)

    page.get_by_role("button", name="Authorize").first.click()
    page.get_by_label("auth-bearer-value").fill(secret)
    page.get_by_role("button", name="Apply credentials").click()
    page.locator(".modal-ux").get_by_role("button", name="Close").click()
    get_pages.locator(".opblock-summary").click()
    get_pages.get_by_role("button", name="Try it out").click()
    get_pages.get_by_role("button", name="Execute").click()
    live_answer = get_pages.locator(".live-responses-table tbody .response-col_status")
    expect(live_answer).to_have_text("200")
    expect(get_pages.locator(".live-responses-table")).to_contain_text('"data": []')

    assert page.evaluate("window.cspViolations") == []
    assert problems == []
