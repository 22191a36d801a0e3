"""A person in a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import ARTIFACTS, PASSWORD

CHROMIUM = os.environ.get("CRIER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    if getattr(request.node, "failed", False):
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
    context.close()


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
