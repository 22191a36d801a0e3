"""A session ends when its user signs out or is removed: a saved cookie stops opening anything."""

from __future__ import annotations

from sqlalchemy import select

from tenants.db import db
from tenants.models import Membership, Role, Tenant, User
from tenants.scoping import all_tenants, tenant
from tests.conftest import Auth


def join(app, email: str, workspace: str, role: Role = Role.MEMBER) -> int:
    """Make the user ``email`` a member of ``workspace``; returns the membership's id."""
    with app.app_context(), all_tenants(db.session):
        user = db.session.scalar(select(User).where(User.email == email))
        found = db.session.scalar(select(Tenant).where(Tenant.name == workspace))
        with tenant(db.session, found.id):
            membership = Membership(user=user, role=role)
            db.session.add(membership)
            db.session.commit()
            return membership.id


def _opens_the_dashboard(app, cookie: str) -> bool:
    browser = app.test_client()
    browser.set_cookie("session", cookie)
    return browser.get("/dashboard").status_code == 200


def test_a_saved_cookie_stops_working_after_signing_out(app, auth, client, other_client):
    auth.signup()
    saved = client.get_cookie("session").value
    assert _opens_the_dashboard(app, saved)
    Auth(other_client).login()  # the same person in a second browser
    assert other_client.get("/dashboard").status_code == 200

    auth.logout()

    assert not _opens_the_dashboard(app, saved), "a copy of the cookie still opened the dashboard"
    response = other_client.get("/dashboard")
    assert response.status_code == 302 and "/login" in response.location, "signing out signs out everywhere"
    assert auth.login().status_code == 302 and client.get("/dashboard").status_code == 200


def test_a_removed_member_is_signed_out_and_their_cookie_opens_nothing(app, auth, client, other_client):
    auth.signup()
    member = Auth(other_client)
    member.signup("sam@bravo.example", "Bravo")
    membership_id = join(app, "sam@bravo.example", "Acme")
    acme = app.test_client()
    Auth(acme).login("sam@bravo.example")
    with app.app_context(), all_tenants(db.session):
        acme_id = db.session.scalar(select(Tenant.id).where(Tenant.name == "Acme"))
    assert Auth(acme).post(f"/workspaces/{acme_id}/switch").status_code == 302
    assert "Acme" in acme.get("/dashboard").get_data(as_text=True)
    saved = acme.get_cookie("session").value

    assert auth.post(f"/members/{membership_id}/remove").status_code == 302

    assert not _opens_the_dashboard(app, saved)
    for browser in (acme, other_client):
        response = browser.get("/contacts")
        assert response.status_code == 302 and "/login" in response.location
    # they sign in again and are where they still belong: their own workspace only
    member.login("sam@bravo.example")
    page = other_client.get("/dashboard").get_data(as_text=True)
    assert "Bravo" in page and f"/workspaces/{acme_id}/switch" not in page
