"""Verify and Test send against the sandbox provider, and its receipts coming back to Crier."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from html import unescape

import httpx
import pytest
from sqlalchemy import select, update

from tasks import lifecycle
from tasks.sandbox.wire import page_id_for_token
from tenants.campaigns import Campaign, apply_campaign_form
from tenants.contacts import Contact, ContactChannelId, ContactList, ContactListMember
from tenants.db import db, utcnow
from tenants.events import Receipt, ReceiptStatus
from tenants.models import Tenant, User
from tenants.pages import Page, ProviderKind
from tenants.scoping import all_tenants, tenant
from tests.conftest import PASSWORD, SANDBOX_PORT, SANDBOX_SMTP_PORT, Auth, built_app, csrf_token

SANDBOX_WHATSAPP = {
    "name": "Sandbox WhatsApp",
    "use_sandbox": "1",
    "setting_phone_number_id": "109876543210001",
    "setting_api_version": "v21.0",
    "credential_access_token": "sandbox-token-abcdef-7777",
    "credential_app_secret": "sandbox-app-secret-8888",
    "credential_verify_token": "sandbox-verify-9999",
}
SECRETS = ("sandbox-token-abcdef-7777", "sandbox-app-secret-8888", "sandbox-verify-9999")


def _page_id(app) -> int:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(select(Page.id))


def _ledger(sandbox) -> list[dict]:
    return httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=5).json()["entries"]


def test_verify_shows_what_the_provider_says(app, auth, sandbox):
    auth.signup()
    assert auth.post("/pages/new?kind=whatsapp", SANDBOX_WHATSAPP).status_code == 302
    page_id = _page_id(app)
    html = auth.post(f"/pages/{page_id}/verify", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "Verified:" in html and "<html" not in html
    with app.app_context(), all_tenants(db.session):
        page = db.session.get(Page, page_id)
        assert page.last_verify_ok is True and page.last_verified_at is not None


def test_verify_reports_a_bad_token(app, auth, sandbox):
    auth.signup()
    auth.post(
        "/pages/new?kind=whatsapp", {**SANDBOX_WHATSAPP, "credential_access_token": "expired-token-123456"}
    )
    html = auth.post(f"/pages/{_page_id(app)}/verify", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "Failed:" in html and "190" in html and "expired-token-123456" not in html


def test_test_send_shows_the_providers_answer(app, auth, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    auth.signup()
    auth.post("/pages/new?kind=whatsapp", SANDBOX_WHATSAPP)
    page_id = _page_id(app)
    sent = auth.post(
        f"/pages/{page_id}/test-send",
        {"address": "+5511961234567", "text": "Olá from Crier"},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    message_id = re.search(r"message id is <code>([^<]+)</code>", sent).group(1)
    entries = _ledger(sandbox)
    assert [(e["recipient"], e["body"], e["message_id"]) for e in entries] == [
        ("5511961234567", "Olá from Crier", message_id)
    ]

    refused = auth.post(
        f"/pages/{page_id}/test-send",
        {"address": "+5511961230000", "text": "hi"},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    assert "Not sent (permanent), code 131026" in refused
    missing = auth.post(
        f"/pages/{page_id}/test-send", {"address": "", "text": "hi"}, headers={"HX-Request": "true"}
    )
    assert missing.status_code == 400 and "Type a phone number and a message." in missing.get_data(
        as_text=True
    )
    for secret in SECRETS:
        assert secret not in caplog.text and secret not in sent and secret not in refused


def test_sandbox_receipts_reach_crier_and_become_receipts(app, live_server, worker_process, sandbox):
    http = httpx.Client(base_url=live_server, timeout=15)
    try:
        token = csrf_token(http.get("/signup").text)
        http.post(
            "/signup",
            data={
                "csrf_token": token,
                "email": "ops@acme.example",
                "workspace_name": "Acme",
                "password": PASSWORD,
                "timezone": "UTC",
            },
        )
        token = csrf_token(http.get("/pages/new?kind=whatsapp").text)
        assert (
            http.post("/pages/new?kind=whatsapp", data={"csrf_token": token, **SANDBOX_WHATSAPP}).status_code
            == 302
        )
        page_id = _page_id(app)
        verified = http.post(
            f"/pages/{page_id}/verify", data={"csrf_token": token}, headers={"HX-Request": "true"}
        )
        assert "receipts from the sandbox now arrive at" in verified.text, verified.text
        httpx.put(
            f"{sandbox.url}/_sandbox/config",
            json={"delivered_after_ms": 50, "read_after_ms": 100, "read_share": 1.0},
            timeout=5,
        ).raise_for_status()
        sent = http.post(
            f"/pages/{page_id}/test-send",
            data={"csrf_token": token, "address": "+5511961234567", "text": "hello"},
            headers={"HX-Request": "true"},
        )
        message_id = re.search(r"message id is <code>([^<]+)</code>", sent.text).group(1)
    finally:
        http.close()

    deadline, statuses = time.monotonic() + 20, []
    while time.monotonic() < deadline and len(statuses) < 2:
        with app.app_context(), all_tenants(db.session):
            statuses = db.session.scalars(
                select(Receipt.status).where(Receipt.provider_message_id == message_id).order_by(Receipt.id)
            ).all()
        time.sleep(0.2)
    # The two callbacks are posted separately and may be stored in either order.
    assert sorted(statuses) == sorted([ReceiptStatus.DELIVERED, ReceiptStatus.READ])


# --------------------------------------------------------------------------- one private-host policy


@dataclass(frozen=True)
class SandboxKind:
    """A page of one kind on the sandbox, as the page form fills it in, and a recipient it accepts."""

    kind: ProviderKind
    form: dict[str, str]
    address: str  # typed into Test send; the campaign's contact has it too (webhook: the contact id)

    def __str__(self) -> str:
        return self.kind.value

    def base_url(self, host: str) -> str:
        """This page's sandbox address with ``host`` instead of 127.0.0.1."""
        if self.kind is ProviderKind.SMTP:
            return f"smtp://{host}:{SANDBOX_SMTP_PORT}"
        suffix = "/webhook/acme" if self.kind is ProviderKind.WEBHOOK else ""
        return f"http://{host}:{SANDBOX_PORT}{suffix}"


MESSENGER_TOKEN = "sandbox-page-token-4444"
SANDBOX_KINDS = [
    SandboxKind(
        ProviderKind.MESSENGER,
        {
            "name": "Sandbox Messenger",
            "setting_page_id": page_id_for_token(MESSENGER_TOKEN),
            "setting_api_version": "v21.0",
            "credential_page_access_token": MESSENGER_TOKEN,
            "credential_app_secret": "sandbox-app-secret-8888",
            "credential_verify_token": "sandbox-verify-9999",
        },
        "24021984",
    ),
    SandboxKind(ProviderKind.WHATSAPP, SANDBOX_WHATSAPP, "+5511961234567"),
    SandboxKind(
        ProviderKind.EVOLUTION,
        {
            "name": "Sandbox Evolution",
            "setting_instance": "acme",
            "credential_api_key": "evolution-key-B6D711FC",
            "credential_webhook_token": "evo-webhook-token",
        },
        "+5511961234567",
    ),
    SandboxKind(
        ProviderKind.SMTP,
        {
            "name": "Sandbox email",
            "setting_from_address": "news@acme.example",
            "setting_starttls": "false",
            "credential_username": "news@acme.example",
            "credential_password": "smtp-secret",
        },
        "ana@example.com",
    ),
    SandboxKind(ProviderKind.WEBHOOK, {"name": "Webhook", "credential_signing_secret": "whsec-1"}, "c-17"),
]
each_kind = pytest.mark.parametrize("page_kind", SANDBOX_KINDS, ids=str)
HTMX = {"HX-Request": "true"}


@pytest.fixture
def sending_app():
    """An app whose campaigns the session's worker sends (the ``app`` fixture's queue has no worker)."""
    with built_app(REDIS_PREFIX=os.environ["REDIS_PREFIX"]) as app:
        yield app


def _connect(auth: Auth, page_kind: SandboxKind, host: str | None = None) -> None:
    """Connect the page through its form: on the sandbox, or at the sandbox's ports on ``host``."""
    form = {key: value for key, value in page_kind.form.items() if key != "use_sandbox"}
    form |= {"base_url": page_kind.base_url(host)} if host else {"use_sandbox": "1"}
    response = auth.post(f"/pages/new?kind={page_kind.kind.value}", form)
    assert response.status_code == 302, response.get_data(as_text=True)


def _verify_and_test_send(auth: Auth, page_id: int, page_kind: SandboxKind) -> tuple[str, str]:
    verified = auth.post(f"/pages/{page_id}/verify", headers=HTMX).get_data(as_text=True)
    sent = auth.post(
        f"/pages/{page_id}/test-send", {"address": page_kind.address, "text": "Hi Ana"}, headers=HTMX
    ).get_data(as_text=True)
    return _words(verified), _words(sent)


def _words(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _send_a_campaign(app, page_id: int, page_kind: SandboxKind) -> tuple[str, str | None]:
    """A one-contact campaign through the page, started and sent by the session's worker: its state
    once it settles (completed or paused) and the page's disabled reason, if it was disabled."""
    with app.app_context(), all_tenants(db.session):
        tenant_id = db.session.scalar(select(Page.tenant_id).where(Page.id == page_id))
        db.session.execute(update(User).values(email_verified_at=utcnow()))  # may send beyond tests
        db.session.commit()
    with app.app_context(), tenant(db.session, tenant_id):
        contact = Contact(first_name="Ana", phone="+5511961234567", email="ana@example.com")
        customers = ContactList(name="Customers")
        db.session.add_all([contact, customers])
        db.session.flush()
        db.session.add(ContactListMember(list_id=customers.id, contact_id=contact.id))
        if page_kind.kind is ProviderKind.MESSENGER:
            db.session.add(ContactChannelId(contact_id=contact.id, page_id=page_id, external_id="24021984"))
        campaign = apply_campaign_form(
            Campaign(),
            {
                "name": "Policy check",
                "page_id": page_id,
                "list_ids": [customers.id],
                "subject": "Hello",
                "body": "Hi {{first_name}}",
            },
            db.session.get(Tenant, tenant_id),
        )
        db.session.add(campaign)
        db.session.commit()
        assert lifecycle.start_campaign(campaign).running
        campaign_id = campaign.id
    deadline = time.monotonic() + 30
    while True:
        with app.app_context(), tenant(db.session, tenant_id):
            state = db.session.get(Campaign, campaign_id).state.value
            reason = db.session.get(Page, page_id).disabled_reason
        if state in ("completed", "paused") or time.monotonic() > deadline:
            return state, reason
        time.sleep(0.2)


@each_kind
def test_a_sandbox_page_verifies_test_sends_and_sends_campaigns_alike(
    sending_app, sandbox, worker_process, page_kind
):
    """One private-host policy: what a campaign may reach, Verify and Test send may reach too
    (the demo SMTP page failed Verify and Test send while its campaigns went out)."""
    auth = Auth(sending_app.test_client())
    auth.signup()
    _connect(auth, page_kind)
    page_id = _page_id(sending_app)

    verified, sent = _verify_and_test_send(auth, page_id, page_kind)

    assert "Verified:" in verified, verified
    assert "Sent. The provider's message id is" in sent, sent
    assert _send_a_campaign(sending_app, page_id, page_kind) == ("completed", None)
    assert len(_ledger(sandbox)) == 2  # the test message and the campaign's


@each_kind
def test_a_private_host_not_allowed_is_refused_alike_by_verify_test_send_and_campaigns(
    sending_app, sandbox, worker_process, page_kind
):
    auth = Auth(sending_app.test_client())
    auth.signup()
    _connect(auth, page_kind, host="127.0.0.2")  # loopback, but not the sandbox's address
    page_id = _page_id(sending_app)

    verified, sent = _verify_and_test_send(auth, page_id, page_kind)
    state, disabled_reason = _send_a_campaign(sending_app, page_id, page_kind)

    found = re.search(r"Failed: (\w+ (URL|host) resolves to a loopback address 127\.0\.0\.2)", verified)
    assert found, verified
    refusal = found.group(1)  # "Messenger URL resolves to …", "SMTP host resolves to …"
    assert f"Not sent (page fatal), code ssrf: {refusal}" in sent, sent
    assert state == "paused" and refusal in disabled_reason
    assert _ledger(sandbox) == []


@each_kind
def test_hosts_in_crier_allowed_private_hosts_pass_verify_and_test_send(sandbox, page_kind):
    allowed = [f"localhost:{SANDBOX_PORT}", f"localhost:{SANDBOX_SMTP_PORT}"]
    with built_app(EXTRA_ALLOWED_HOSTS=allowed) as app:
        auth = Auth(app.test_client())
        auth.signup()
        _connect(auth, page_kind, host="localhost")

        verified, sent = _verify_and_test_send(auth, _page_id(app), page_kind)

    assert "Verified:" in verified, verified
    assert "Sent. The provider's message id is" in sent, sent
