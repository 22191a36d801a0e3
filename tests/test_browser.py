"""A person in a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.browsers import sign_up
from tests.conftest import ARTIFACTS, PASSWORD
from tests.test_realtime import Browser
from tests.test_sessions import join


def test_sign_up_see_dashboard_check_workers_sign_out_and_in(live_server, worker_process, page):
    page.goto(f"{live_server}/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_role("link", name="Create a workspace").click()

    page.get_by_label("Workspace name").fill("Acme Café")
    page.get_by_label("Email").fill("owner@acme.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Time zone").select_option("Europe/Lisbon")
    page.get_by_role("button", name="Create workspace").click()

    expect(page).to_have_url(re.compile(r"/dashboard$"))
    expect(page.get_by_role("heading", name="Acme Café")).to_be_visible()
    expect(page.get_by_text("Welcome to Crier! Your workspace Acme Café is ready.")).to_be_visible()
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

    page.get_by_role("button", name="Check workers").click()
    expect(page.get_by_text(re.compile(r"A worker answered in \d+ ms"))).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.get_by_text("You are signed out.")).to_be_visible()

    page.get_by_label("Email").fill("owner@acme.example")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Wrong email or password.")).to_be_visible()

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/dashboard$"))
    expect(page.get_by_role("heading", name="Acme Café")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_connect_a_sandbox_page_verify_it_and_send_a_test_message(live_server, sandbox, page):
    page.goto(f"{live_server}/signup")
    page.get_by_label("Workspace name").fill("Pages Co")
    page.get_by_label("Email").fill("pages@acme.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create workspace").click()

    page.get_by_role("link", name="Pages", exact=True).click()
    expect(page.get_by_text("No pages yet.")).to_be_visible()
    page.get_by_role("button", name="WhatsApp Cloud API").click()
    page.get_by_label("Name").fill("Support")
    page.get_by_label("Send through the built-in sandbox").check()
    page.get_by_label("Phone number ID").fill("109876543210002")
    page.get_by_label("Access token").fill("browser-token-0123456789")
    page.get_by_label("App secret").fill("browser-app-secret")
    page.get_by_label("Webhook verify token").fill("browser-verify")
    page.get_by_role("button", name="Connect page").click()

    expect(page.get_by_text("Page Support connected.")).to_be_visible()
    expect(page.get_by_test_id("page-state")).to_have_text("active")
    assert "browser-token-0123456789" not in page.content()
    expect(page.get_by_label("Access token")).to_have_attribute("placeholder", re.compile("••••6789"))

    page.get_by_role("button", name="Verify credentials").click()
    expect(page.locator("#verify-result")).to_contain_text("Verified:")

    page.get_by_label("To (phone number)").fill("+5511961234567")
    page.get_by_role("button", name="Send one message").click()
    expect(page.locator("#test-send-result")).to_contain_text("Sent. The provider's message id is")
    page.get_by_label("To (phone number)").fill("+5511961230000")
    page.get_by_role("button", name="Send one message").click()
    expect(page.locator("#test-send-result")).to_contain_text("Not sent (permanent), code 131026")
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)


def test_template_preview_updates_as_the_user_types(live_server, page):
    page.goto(f"{live_server}/signup")
    page.get_by_label("Workspace name").fill("Preview Co")
    page.get_by_label("Email").fill("writer@acme.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create workspace").click()

    page.get_by_role("link", name="Templates").click()
    page.get_by_role("button", name="WhatsApp", exact=True).click()
    page.get_by_label("Name", exact=True).fill("Welcome")
    body = page.get_by_label("Message", exact=True)
    body.fill('Hi {{ firstName }}, welcome to {{ company|default("us") }}!')
    expect(page.get_by_test_id("rendered")).to_have_text("Hi Ana, welcome to Acme!")
    body.fill("Hi {{ firstName }")
    expect(page.get_by_test_id("preview-problems")).to_contain_text("line 1, column")
    body.fill("Hi {{ nickname }}")
    expect(page.get_by_test_id("missing")).to_contain_text("This contact has no nickname.")
    body.fill("Hi {{ firstName|default('there') }}")
    page.get_by_role("button", name="Save template").click()
    expect(page.get_by_text("Template Welcome saved.")).to_be_visible()


def test_import_the_messy_csv_and_watch_it_finish(live_server, worker_process, page):
    messy = Path(__file__).resolve().parents[2] / "shared" / "data" / "contacts-messy.csv"
    page.goto(f"{live_server}/signup")
    page.get_by_label("Workspace name").fill("Import Co")
    page.get_by_label("Email").fill("importer@acme.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create workspace").click()

    page.get_by_role("link", name="Contacts").click()
    page.get_by_role("link", name="Import a CSV").click()
    page.get_by_label("CSV file").set_input_files(str(messy))
    page.get_by_role("button", name="Upload and map columns").click()
    expect(page.get_by_text("Which column is what?")).to_be_visible()
    expect(page.get_by_label("Import E-mail as")).to_have_value("email")
    expect(page.get_by_label("Import city as")).to_have_value("custom")
    page.get_by_label("Target list").select_option("new")
    page.get_by_role("button", name="Import").click()

    expect(page.get_by_test_id("import-status")).to_have_text("completed", timeout=30_000)
    expect(page.get_by_test_id("created")).to_have_text("164")
    expect(page.get_by_test_id("merged")).to_have_text("10")
    expect(page.get_by_test_id("rejected")).to_have_text("6")
    with page.expect_download() as download:
        page.get_by_test_id("rejections").click()
    rejected = Path(download.value.path()).read_text(encoding="utf-8-sig").splitlines()
    assert rejected[0] == "line,reason,row" and len(rejected) >= 7
    page.get_by_role("link", name="See the imported contacts").click()
    expect(page.get_by_test_id("contact-count")).to_have_text("164 contacts")


def test_a_removed_members_open_page_loses_its_live_connection(app, live_server, worker_process, page):
    owner = Browser(live_server, "alice@acme.example", "Acme")
    try:
        sign_up(page, live_server, "Bravo", "bob@bravo.example")
        membership_id = join(app, "bob@bravo.example", "Acme")
        page.reload()
        page.locator("#workspace-switcher summary").click()
        page.get_by_role("button", name="Acme").click()
        expect(page.get_by_text("Now working in Acme.")).to_be_visible()
        live = page.locator("#live-status")
        expect(live).to_have_attribute("data-state", "live")

        assert owner.post(f"/members/{membership_id}/remove").status_code == 302

        expect(live).to_have_attribute("data-state", "offline", timeout=5000)
        expect(live).to_have_attribute("title", re.compile("session ended"))
        page.reload()
        expect(page).to_have_url(re.compile(r"/login"))
    finally:
        owner.close()
