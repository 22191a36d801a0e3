"""Several workspaces per person, switching between them, and managing members."""

from __future__ import annotations

import re

from sqlalchemy import select

from tenants.db import db
from tenants.models import Membership, Tenant, TenantStatus
from tenants.scoping import all_tenants
from tests.conftest import Auth, invite_and_join


def _membership_id(app, email: str, workspace: str) -> int:
    with app.app_context(), all_tenants(db.session):
        from tenants.models import User

        return db.session.scalar(
            select(Membership.id).join(User).join(Tenant).where(User.email == email, Tenant.name == workspace)
        )


def test_create_a_second_workspace_and_switch_between_them(app, auth, client):
    auth.signup(workspace="Acme")
    response = auth.post("/workspaces/new", {"name": "Bravo", "timezone": "Europe/Berlin"})
    assert response.status_code == 302
    dashboard = client.get("/dashboard").get_data(as_text=True)
    assert "<h1>Bravo</h1>" in dashboard and "Europe/Berlin" in dashboard

    with app.app_context(), all_tenants(db.session):
        acme_id = db.session.scalar(select(Tenant.id).where(Tenant.name == "Acme"))
    auth.post(f"/workspaces/{acme_id}/switch")
    assert "<h1>Acme</h1>" in client.get("/dashboard").get_data(as_text=True)


def test_switching_to_a_workspace_you_are_not_in_is_404(app, auth, other_client):
    auth.signup(workspace="Acme")
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    with app.app_context(), all_tenants(db.session):
        bravo_id = db.session.scalar(select(Tenant.id).where(Tenant.name == "Bravo"))
    assert auth.post(f"/workspaces/{bravo_id}/switch").status_code == 404


def test_an_invited_existing_user_joins_and_then_sees_both_workspaces(
    app, auth, client, other_client, mailbox
):
    bob = Auth(other_client)
    bob.signup(email="bob@bravo.example", workspace="Bravo")
    auth.signup(workspace="Acme")

    response = auth.post(
        "/members", {"email": "BOB@bravo.example", "role": "admin"}, headers={"HX-Request": "true"}
    )
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" not in fragment
    assert "We sent an invitation to bob@bravo.example to join as admin." in fragment
    assert "HX-Request" in response.headers["Vary"]

    joined = invite_and_join(auth, bob, mailbox, "bob@bravo.example", "admin")
    assert joined.status_code == 302
    page = other_client.get("/dashboard").get_data(as_text=True)
    switcher = re.search(r'id="workspace-switcher">(.*?)</details>', page, re.S).group(1)
    assert "Acme" in switcher and "Bravo" in switcher
    assert switcher.strip().startswith("<summary>Acme</summary>")  # joining switched to Acme


def test_the_last_owner_cannot_be_demoted_or_removed(app, auth, client):
    auth.signup()
    mine = _membership_id(app, "owner@acme.example", "Acme")
    demoted = auth.post(f"/members/{mine}", {"role": "member"})
    assert "A workspace needs at least one owner." in demoted.get_data(as_text=True)
    auth.post(f"/members/{mine}/remove")
    assert "A workspace needs at least one owner." in client.get(f"/members/{mine}").get_data(as_text=True)


def test_members_cannot_manage_members(app, auth, client, other_client, mailbox):
    Auth(other_client).signup(email="carol@crier.example", workspace="Carol's")
    auth.signup()
    carol = Auth(other_client)
    invite_and_join(auth, carol, mailbox, "carol@crier.example")
    acme_id = None
    with app.app_context(), all_tenants(db.session):
        acme_id = db.session.scalar(select(Tenant.id).where(Tenant.name == "Acme"))
    carol.post(f"/workspaces/{acme_id}/switch")
    mine = _membership_id(app, "owner@acme.example", "Acme")
    assert other_client.get("/members").status_code == 200
    assert carol.post("/members", {"email": "x@crier.example", "role": "owner"}).status_code == 403
    assert carol.post(f"/members/{mine}/remove").status_code == 403


def test_a_suspended_workspace_shows_why(app, auth, client):
    auth.signup()
    with app.app_context(), all_tenants(db.session):
        db.session.scalar(select(Tenant)).status = TenantStatus.SUSPENDED
        db.session.commit()
    response = client.get("/dashboard", follow_redirects=True)
    assert response.status_code == 403
    assert "is suspended" in response.get_data(as_text=True)


def test_workspace_settings_set_the_phone_country_and_time_zone(app, auth, client):
    auth.signup()
    page = client.get("/workspace/settings").get_data(as_text=True)
    assert "BR (+55)" in page
    response = auth.post(
        "/workspace/settings",
        {"name": "Acme Brasil", "timezone": "America/Sao_Paulo", "default_country": "BR"},
    )
    assert response.status_code == 302
    with app.app_context(), all_tenants(db.session):
        acme = db.session.scalar(select(Tenant))
        assert (acme.name, acme.timezone, acme.default_country) == ("Acme Brasil", "America/Sao_Paulo", "BR")
    bad = auth.post("/workspace/settings", {"name": "Acme", "timezone": "UTC", "default_country": "XX"})
    assert bad.status_code == 400


def test_an_admin_cannot_invite_an_owner_and_so_cannot_remove_the_real_one(
    app, auth, client, other_client, mailbox
):
    """Only owners create owners (the rule a role change already had): an admin who could invite a
    second owner would have that owner remove the first."""
    Auth(other_client).signup(email="adam@crier.example", workspace="Adam's")
    mallory = app.test_client()
    Auth(mallory).signup(email="mallory@crier.example", workspace="Mallory's")
    auth.signup()
    adam = Auth(other_client)
    invite_and_join(auth, adam, mailbox, "adam@crier.example", "admin")  # and Acme is adam's workspace now

    refused = adam.post("/members", {"email": "mallory@crier.example", "role": "owner"})

    assert refused.status_code == 400
    assert "Only an owner can change who owns the workspace." in refused.get_data(as_text=True)
    assert not [m for m in mailbox.messages("mallory@crier.example") if "invites you" in m["subject"]]
    assert adam.post("/members", {"email": "mallory@crier.example", "role": "member"}).status_code == 200
    assert auth.post("/members", {"email": "x@crier.example", "role": "owner"}).status_code == 200
