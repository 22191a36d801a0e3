"""Accounts in a real browser: an invitation accepted from the emailed link, a password reset."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from sqlalchemy import select

from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants
from tests.browsers import sign_up
from tests.conftest import ARTIFACTS, PASSWORD

NEW_PASSWORD = "a brand new passphrase"


def test_an_invitee_signs_up_from_the_emailed_link_and_lands_in_the_inviting_workspace(
    app, live_server, mailbox, page, browser
):
    sign_up(page, live_server, "Team Co", "owner@team.example")
    page.get_by_role("link", name="Members").click()
    expect(page.get_by_text("What each role may do")).to_be_visible()
    page.get_by_text("Invite someone").click()
    page.get_by_label("Email").fill("newcomer@team.example")
    page.locator("select#role").select_option("admin")
    page.get_by_role("button", name="Send invitation").click()
    expect(
        page.get_by_text("We sent an invitation to newcomer@team.example to join as admin.")
    ).to_be_visible()
    expect(page.get_by_test_id("invitation")).to_contain_text("newcomer@team.example")
    link = mailbox.link("newcomer@team.example", "/invitations/")
    assert link.startswith(live_server)

    invitee = browser.new_context().new_page()
    invitee.set_default_timeout(15_000)
    try:
        invitee.goto(link)
        expect(invitee.get_by_role("heading", name="Join Team Co")).to_be_visible()
        expect(invitee.get_by_label("Email")).to_have_value("newcomer@team.example")
        invitee.get_by_label("Password").fill(PASSWORD)
        invitee.get_by_role("button", name="Create account and join").click()

        expect(invitee).to_have_url(re.compile(r"/dashboard$"))
        expect(invitee.get_by_text("Welcome to Crier! You joined Team Co as admin.")).to_be_visible()
        expect(invitee.locator("#workspace-switcher summary")).to_have_text("Team Co")
        expect(invitee.get_by_test_id("verify-banner")).to_have_count(0)  # the link proved the address
        invitee.screenshot(path=str(ARTIFACTS / "invitation-accepted.png"), full_page=True)
        invitee.locator("#workspace-switcher summary").click()
        expect(invitee.locator("#workspace-switcher form button")).to_have_count(1)  # no stray workspace
    finally:
        invitee.context.close()
    with app.app_context(), all_tenants(db.session):
        assert list(db.session.scalars(select(Tenant.name))) == ["Team Co"]

    page.reload()
    expect(page.get_by_test_id("invitation")).to_have_count(0)
    expect(page.get_by_role("cell", name="newcomer@team.example")).to_be_visible()


def test_a_forgotten_password_is_reset_from_the_emailed_link(live_server, mailbox, page):
    sign_up(page, live_server, "Reset Co", "forgetful@reset.example")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill("forgetful@reset.example")
    page.get_by_role("button", name="Email me a link").click()
    expect(
        page.get_by_text("If a Crier account uses forgetful@reset.example, we have sent it a link")
    ).to_be_visible()

    link = mailbox.link("forgetful@reset.example", "/password/reset/", count=2)
    page.goto(link)
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set the new password").click()
    expect(page).to_have_url(re.compile(r"/dashboard$"))
    expect(page.get_by_text("Your new password is set and you are signed in.")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Email").fill("forgetful@reset.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Wrong email or password.")).to_be_visible()
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/dashboard$"))

    page.goto(link)  # used once: dead now
    expect(page.get_by_text("This password reset link has expired or was already used.")).to_be_visible()
