"""Pages as a person manages them: connect, edit, disable, delete — secrets stay secret."""

from __future__ import annotations

import logging

from sqlalchemy import select, text

from tenants.db import db
from tenants.pages import Page, PageState
from tenants.scoping import all_tenants

WHATSAPP_FORM = {
    "name": "Support line",
    "base_url": "https://graph.facebook.com",
    "setting_phone_number_id": "106540352242922",
    "setting_api_version": "v21.0",
    "credential_access_token": "EAAG-super-secret-token-9876",
    "credential_app_secret": "app-secret-5555",
    "credential_verify_token": "verify-me-4321",
    "send_rate": "",
    "daily_cap": "5000",
}


def _page(app) -> Page:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(select(Page))


def test_connect_a_whatsapp_page_with_the_documented_defaults(app, auth, client):
    auth.signup()
    form = client.get("/pages/new?kind=whatsapp").get_data(as_text=True)
    assert "Phone number ID" in form and 'value="80"' in form  # WhatsApp Cloud's documented 80 msg/s
    response = auth.post("/pages/new?kind=whatsapp", WHATSAPP_FORM)
    assert response.status_code == 302
    page = _page(app)
    assert (page.name, page.send_rate, page.daily_cap, page.state) == (
        "Support line",
        80,
        5000,
        PageState.ACTIVE,
    )
    assert page.settings["phone_number_id"] == "106540352242922"
    listing = client.get("/pages").get_data(as_text=True)
    assert "Support line" in listing and "80/s" in listing and "5,000" in listing


def test_credentials_are_encrypted_at_rest_and_never_shown_or_logged(app, auth, client, caplog):
    caplog.set_level(logging.DEBUG)
    auth.signup()
    auth.post("/pages/new?kind=whatsapp", WHATSAPP_FORM)
    page = _page(app)
    with app.app_context():
        raw = db.session.execute(text("SELECT * FROM pages")).mappings().one()
    row_text = " ".join(str(v) for v in raw.values())
    for secret in ("EAAG-super-secret-token-9876", "app-secret-5555", "verify-me-4321"):
        assert secret not in row_text
        assert secret.encode() not in bytes(raw["credentials_sealed"])
    html = client.get(f"/pages/{page.id}").get_data(as_text=True)
    assert "EAAG-super-secret-token-9876" not in html and "••••9876" in html
    assert "app-secret-5555" not in html and "verify-me-4321" not in html
    assert "EAAG-super-secret-token-9876" not in caplog.text


def test_saving_with_blank_secrets_keeps_the_stored_ones(app, auth, client):
    auth.signup()
    auth.post("/pages/new?kind=whatsapp", WHATSAPP_FORM)
    page_id = _page(app).id
    blank = {k: ("" if k.startswith("credential_") else v) for k, v in WHATSAPP_FORM.items()}
    assert auth.post(f"/pages/{page_id}", {**blank, "name": "Renamed", "send_rate": "20"}).status_code == 302
    with app.app_context(), all_tenants(db.session):
        page = db.session.get(Page, page_id)
        assert (page.name, page.send_rate) == ("Renamed", 20)
        assert page.credentials["access_token"] == "EAAG-super-secret-token-9876"


def test_bad_forms_say_what_is_wrong(app, auth):
    auth.signup()
    missing = auth.post("/pages/new?kind=whatsapp", {**WHATSAPP_FORM, "credential_access_token": ""})
    assert missing.status_code == 400 and "Missing: Access token." in missing.get_data(as_text=True)
    bad_rate = auth.post("/pages/new?kind=whatsapp", {**WHATSAPP_FORM, "send_rate": "fast"})
    assert bad_rate.status_code == 400 and "is not a number" in bad_rate.get_data(as_text=True)
    bad_url = auth.post("/pages/new?kind=whatsapp", {**WHATSAPP_FORM, "base_url": "ftp://x"})
    assert bad_url.status_code == 400 and "must look like http://" in bad_url.get_data(as_text=True)
    evolution = auth.post(
        "/pages/new?kind=evolution",
        {"name": "Evo", "credential_api_key": "k", "credential_webhook_token": "t", "setting_instance": "i"},
    )
    assert evolution.status_code == 400 and "needs the address of your server" in evolution.get_data(
        as_text=True
    )
    assert auth.post("/pages/new?kind=carrier-pigeon", {}).status_code == 404
    assert _page(app) is None


def test_disable_enable_and_delete(app, auth, client):
    auth.signup()
    auth.post("/pages/new?kind=whatsapp", WHATSAPP_FORM)
    page_id = _page(app).id
    auth.post(f"/pages/{page_id}/disable", {"reason": "number under review"})
    html = client.get(f"/pages/{page_id}").get_data(as_text=True)
    assert "disabled" in html and "number under review" in html
    auth.post(f"/pages/{page_id}/enable")
    assert _page(app).state is PageState.ACTIVE
    auth.post(f"/pages/{page_id}/delete")
    assert _page(app) is None and client.get(f"/pages/{page_id}").status_code == 404


def test_the_plans_page_limit_is_enforced(app, auth):
    auth.signup()
    with app.app_context(), all_tenants(db.session):
        from tenants.models import Tenant

        db.session.scalar(select(Tenant)).max_pages = 1
        db.session.commit()
    assert auth.post("/pages/new?kind=whatsapp", WHATSAPP_FORM).status_code == 302
    refused = auth.post("/pages/new?kind=whatsapp", WHATSAPP_FORM)
    assert refused.status_code == 400 and "Your plan allows 1 pages" in refused.get_data(as_text=True)


def test_members_see_pages_but_cannot_change_them(app, auth, client, other_client, mailbox):
    from tests.conftest import Auth, invite_and_join

    member = Auth(other_client)
    member.signup(email="m@crier.example", workspace="Mine")
    auth.signup()
    auth.post("/pages/new?kind=whatsapp", WHATSAPP_FORM)
    invite_and_join(auth, member, mailbox, "m@crier.example")  # and switches to Acme
    page_id = _page(app).id
    assert other_client.get(f"/pages/{page_id}").status_code == 200
    assert member.post(f"/pages/{page_id}", {**WHATSAPP_FORM, "name": "Hijack"}).status_code == 403
    assert member.post(f"/pages/{page_id}/delete").status_code == 403
    assert member.post("/pages/new?kind=whatsapp", WHATSAPP_FORM).status_code == 403
