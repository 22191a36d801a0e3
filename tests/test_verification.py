"""A new workspace sends to a test audience only until one of its owners verifies their address."""

from __future__ import annotations

import re

from sqlalchemy import select

from tenants.campaigns import Campaign, CampaignState
from tenants.contacts import ContactList
from tenants.db import db
from tenants.models import Tenant, User
from tenants.scoping import all_tenants, tenant
from tests.browsers import contacts_on_a_list
from tests.factories import sandbox_whatsapp_page

VERIFY_FIRST = "Verify your email address to send to more than 10 recipients"


def _text(response) -> str:
    return response.get_data(as_text=True)


def _page_and_list(app, people: int) -> tuple[int, int]:
    """A sandbox WhatsApp page and a list of ``people`` contacts in Acme."""
    contacts_on_a_list(app, "Acme", "Everyone", [f"+5511964{n:04d}1" for n in range(people)])
    acme, page_id = sandbox_whatsapp_page(app, "Acme", "109876543210002")
    with app.app_context(), tenant(db.session, acme):
        return page_id, db.session.scalar(select(ContactList.id).where(ContactList.name == "Everyone"))


def _draft(auth, page_id: int, list_id: int) -> int:
    response = auth.post(
        "/campaigns/new",
        {
            "name": "Launch",
            "page_id": str(page_id),
            "template_id": "",
            "body": "Hi {{firstName}}",
            "list_ids": str(list_id),
            "schedule": "manual",
            "scheduled_at": "",
            "send_rate": "",
        },
    )
    assert response.status_code == 302, _text(response)
    return int(re.search(r"/campaigns/(\d+)$", response.headers["Location"]).group(1))


def _state(app, campaign_id: int) -> CampaignState:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(select(Campaign.state).where(Campaign.id == campaign_id))


def test_an_unverified_owner_gets_a_banner_and_a_test_audience_until_the_emailed_link_is_opened(
    app, auth, client, mailbox
):
    signed_up = auth.signup(verified=False)
    assert signed_up.status_code == 302
    dashboard = _text(client.get("/dashboard"))
    assert "Verify your email address" in dashboard and "Resend the link" in dashboard
    page_id, list_id = _page_and_list(app, 11)
    campaign_id = _draft(auth, page_id, list_id)

    refused = auth.post(f"/campaigns/{campaign_id}/start")

    assert refused.status_code == 409 and VERIFY_FIRST in _text(refused)
    assert _state(app, campaign_id) is CampaignState.DRAFT

    link = mailbox.link("owner@acme.example", "/verify-email/")
    verified = client.get(link)
    assert verified.status_code == 302
    dashboard = _text(client.get("/dashboard"))
    assert "owner@acme.example is verified" in dashboard and "Resend the link" not in dashboard
    assert auth.post(f"/campaigns/{campaign_id}/start").status_code == 302
    assert _state(app, campaign_id) is CampaignState.RUNNING


def test_a_test_audience_may_be_sent_to_before_verifying(app, auth):
    auth.signup(verified=False)
    page_id, list_id = _page_and_list(app, 10)
    campaign_id = _draft(auth, page_id, list_id)
    assert auth.post(f"/campaigns/{campaign_id}/start").status_code == 302
    assert _state(app, campaign_id) is CampaignState.RUNNING


def test_resend_the_link_sends_a_new_one_and_a_bad_link_is_refused(app, auth, client, mailbox):
    auth.signup(verified=False)
    mailbox.wait_for("owner@acme.example")

    resent = auth.post("/account/verification")
    assert resent.status_code == 302
    assert "We sent a new link to owner@acme.example." in _text(client.get("/account"))
    assert len(mailbox.wait_for("owner@acme.example", 2)) == 2
    assert client.get("/verify-email/not-a-token").status_code == 410
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(User.email_verified_at)) is None


def test_sign_up_proposes_the_country_of_the_time_zone_and_loads_the_zone_script(app, auth, client):
    page = _text(client.get("/signup"))
    assert '<script src="/static/timezone.js" defer></script>' in page
    auth.signup(timezone="America/Sao_Paulo")
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(Tenant.default_country)) == "BR"


def test_settings_propose_the_zones_country_when_none_is_set(app, auth, client):
    auth.signup(timezone="Europe/Lisbon")
    with app.app_context(), all_tenants(db.session):
        db.session.scalar(select(Tenant)).default_country = None
        db.session.commit()
    settings = _text(client.get("/workspace/settings"))
    assert re.search(r'<option selected value="PT">|<option value="PT" selected>', settings)
