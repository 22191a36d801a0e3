"""Debian's Chromium driven by Playwright: the fixtures every browser test module imports, and the first
steps those tests take (sign up, connect a sandbox page, contacts on a list)."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import insert

from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db
from tenants.scoping import all_tenants, tenant
from tests.conftest import ARTIFACTS, PASSWORD, mark_verified
from tests.factories import tenant_named

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
    """A fresh browser context's page; a screenshot in the test artifacts when the test fails."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    if getattr(request.node, "failed", False):
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


# --------------------------------------------------------------------------- what a person does first


def sign_up(page, live_server: str, workspace: str, email: str, verified: bool = True) -> None:
    """Create an account and its workspace through the sign-up page; ``verified``: then count its
    address as verified, as if the emailed link had been opened (campaigns may reach everyone)."""
    page.goto(f"{live_server}/signup")
    page.get_by_label("Workspace name").fill(workspace)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create workspace").click()
    expect(page).to_have_url(re.compile(r"/dashboard$"))
    if verified:
        mark_verified(email)


def connect_sandbox_whatsapp(page, name: str, phone_number_id: str, rate: int | float) -> None:
    """From the pages list: connect a WhatsApp page that sends through the built-in sandbox."""
    page.get_by_role("button", name="WhatsApp Cloud API").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Send through the built-in sandbox").check()
    page.get_by_label("Phone number ID").fill(phone_number_id)
    page.get_by_label("Access token").fill(f"token-{phone_number_id}")
    page.get_by_label("App secret").fill(f"secret-{phone_number_id}")
    page.get_by_label("Webhook verify token").fill(f"verify-{phone_number_id}")
    page.get_by_label("Send rate (messages per second)").fill(str(rate))
    page.get_by_role("button", name="Connect page").click()
    expect(page.get_by_text(f"Page {name} connected.")).to_be_visible()


def contacts_on_a_list(app, workspace: str, list_name: str, phones: list[str]) -> None:
    """Contacts Person0, Person1… with these phones, all on a new list (Core inserts: quick)."""
    with app.app_context(), all_tenants(db.session):
        tenant_id = tenant_named(workspace).id
    with app.app_context(), tenant(db.session, tenant_id):
        people = ContactList(name=list_name)
        db.session.add(people)
        db.session.flush()
        ids = db.session.scalars(
            insert(Contact).returning(Contact.id),
            [
                {"tenant_id": tenant_id, "phone": phone, "first_name": f"Person{n}"}
                for n, phone in enumerate(phones)
            ],
        ).all()
        db.session.execute(
            insert(ContactListMember),
            [{"tenant_id": tenant_id, "list_id": people.id, "contact_id": i} for i in ids],
        )
        db.session.commit()


def write_campaign(page, name: str, through: str, message: str, list_name: str) -> None:
    """From the campaign editor: fill in a campaign through the page called ``through`` to one list."""
    page.get_by_label("Name").fill(name)
    page.get_by_label("Send through").select_option(label=f"{through} (WhatsApp Cloud API)")
    page.get_by_label("Message", exact=True).fill(message)
    page.get_by_label("Lists").select_option(label=list_name)
