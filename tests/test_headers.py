"""What every answer tells caches and browsers: nothing personal is stored, sockets go home only."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tenants.campaigns import Campaign
from tenants.contacts import Contact, ContactList
from tenants.db import db
from tenants.models import Tenant
from tenants.pages import Page
from tenants.scoping import all_tenants, tenant
from tenants.templates import Template
from tests.factories import FACTORIES


def _campaign_and_contact(app) -> tuple[int, int]:
    """A contact and a draft campaign of the signed-up workspace."""
    with app.app_context(), all_tenants(db.session):
        tenant_id = db.session.scalar(select(Tenant.id))
    with app.app_context(), tenant(db.session, tenant_id):
        workspace, made = db.session.get(Tenant, tenant_id), {}
        for model in (Page, Contact, ContactList, Template, Campaign):
            made[model] = FACTORIES[model](workspace, made)
            db.session.flush()
        db.session.commit()
        return made[Campaign].id, made[Contact].id


def test_pages_and_exports_naming_people_are_never_stored_by_a_cache(app, auth, client):
    """The contacts page and a contact's page could be kept by a shared or back-button cache."""
    auth.signup()
    campaign_id, contact_id = _campaign_and_contact(app)
    for path in (
        "/contacts",
        f"/contacts/{contact_id}",
        f"/campaigns/{campaign_id}/report",
        f"/campaigns/{campaign_id}/export.csv",
        "/contacts/export.csv",
        "/dashboard",
    ):
        with client.get(path) as response:
            assert response.status_code == 200, path
            assert response.headers["Cache-Control"] == "no-store", path


def test_an_answer_setting_a_cookie_is_not_stored_but_static_assets_keep_their_caching(auth, client):
    with client.get("/login") as sign_in:  # anonymous, but it sets the session cookie (CSRF)
        assert "Set-Cookie" in sign_in.headers and sign_in.headers["Cache-Control"] == "no-store"
    auth.signup()
    with client.get("/vendor/htmx.min.js") as vendor:
        assert vendor.headers["Cache-Control"] == "public, max-age=86400"
    with client.get("/static/app.css") as static:
        assert static.status_code == 200 and "no-store" not in static.headers["Cache-Control"]


def _connect_src(response) -> str:
    return re.search(r"connect-src ([^;]*);", response.headers["Content-Security-Policy"]).group(1)


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://crier.example:8080", "'self' ws://crier.example:8080"),
        ("https://crier.example", "'self' wss://crier.example"),
    ],
)
def test_scripts_may_open_a_websocket_only_to_this_origin(client, base_url, expected):
    """``connect-src 'self' ws: wss:`` let a script open a websocket to any host."""
    with client.get("/login", base_url=base_url) as response:
        assert _connect_src(response) == expected


def test_a_host_header_cannot_add_to_the_policy(client):
    with client.get("/login", headers={"Host": "evil.example; script-src *"}) as response:
        assert _connect_src(response) == "'self'"
        assert "script-src *" not in response.headers["Content-Security-Policy"]
