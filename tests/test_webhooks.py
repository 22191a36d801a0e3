"""Provider callbacks: signature first, then stored, then read into receipts and messages by a worker."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from tasks.receipts import process_webhook_event
from tenants.contacts import Contact, ContactChannelId
from tenants.db import db
from tenants.events import InboundMessage, Receipt, ReceiptStatus, WebhookEvent
from tenants.models import Tenant
from tenants.pages import Page, ProviderKind, apply_form
from tenants.scoping import all_tenants, tenant
from tenants.signatures import crier_signature, meta_signature

SECRETS = {
    ProviderKind.WHATSAPP: (
        {"access_token": "wa-token-123456", "app_secret": "wa-app-secret", "verify_token": "wa-verify"},
        {"phone_number_id": "1055"},
    ),
    ProviderKind.MESSENGER: (
        {"page_access_token": "fb-token-123456", "app_secret": "fb-app-secret", "verify_token": "fb-verify"},
        {"page_id": "777"},
    ),
    ProviderKind.EVOLUTION: ({"api_key": "evo-key", "webhook_token": "evo-hook-token"}, {"instance": "shop"}),
    ProviderKind.WEBHOOK: ({"signing_secret": "hook-signing-secret"}, {}),
}


@pytest.fixture
def pages(app):
    """One page of each callback-capable kind, in one tenant; yields kind → page id."""
    with app.app_context(), all_tenants(db.session):
        owner = Tenant(name="Acme", slug="acme")
        db.session.add(owner)
        db.session.flush()
        ids = {}
        with tenant(db.session, owner.id):
            for kind, (credentials, settings) in SECRETS.items():
                page = apply_form(
                    Page(kind=kind),
                    name=kind.value,
                    base_url="https://provider.example",
                    send_rate=10,
                    daily_cap=None,
                    credentials=credentials,
                    settings=settings,
                )
                db.session.add(page)
                db.session.flush()
                ids[kind] = page.id
            db.session.commit()
    return ids


def _signed_meta(kind: ProviderKind, payload: dict) -> tuple[bytes, dict]:
    body = json.dumps(payload).encode()
    return body, {
        "X-Hub-Signature-256": meta_signature(SECRETS[kind][0]["app_secret"], body),
        "Content-Type": "application/json",
    }


def _process_all(app) -> None:
    """What the worker does with each stored event (the actor's body, run here)."""
    with app.app_context(), all_tenants(db.session):
        ids = db.session.scalars(select(WebhookEvent.id).order_by(WebhookEvent.id)).all()
    for event_id in ids:
        with app.app_context():
            process_webhook_event(event_id)


def _count(app, model, *where) -> int:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


WHATSAPP_RECEIPTS = {
    "object": "whatsapp_business_account",
    "entry": [
        {
            "id": "waba",
            "changes": [
                {
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"phone_number_id": "1055"},
                        "statuses": [
                            {
                                "id": "wamid.A",
                                "status": "delivered",
                                "timestamp": "1717689100",
                                "recipient_id": "5511961234567",
                                "biz_opaque_callback_data": "d-1",
                            },
                            {
                                "id": "wamid.A",
                                "status": "read",
                                "timestamp": "1717689200",
                                "recipient_id": "5511961234567",
                                "biz_opaque_callback_data": "d-1",
                            },
                            {
                                "id": "wamid.B",
                                "status": "failed",
                                "timestamp": "1717689300",
                                "recipient_id": "5511961230000",
                                "errors": [{"code": 131026, "title": "Message undeliverable"}],
                            },
                            {"id": "wamid.C", "status": "sent", "timestamp": "1717689300"},
                        ],
                    },
                }
            ],
        }
    ],
}


def test_meta_verification_handshake(client, pages):
    url = f"/webhooks/whatsapp/{pages[ProviderKind.WHATSAPP]}"
    ok = client.get(
        url,
        query_string={
            "hub.mode": "subscribe",
            "hub.verify_token": "wa-verify",
            "hub.challenge": "1158201444",
        },
    )
    assert ok.status_code == 200 and ok.get_data(as_text=True) == "1158201444"
    wrong = client.get(
        url,
        query_string={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1158201444"},
    )
    assert wrong.status_code == 403 and "1158201444" not in wrong.get_data(as_text=True)


def test_signed_whatsapp_statuses_become_receipts_once(app, client, pages):
    body, headers = _signed_meta(ProviderKind.WHATSAPP, WHATSAPP_RECEIPTS)
    url = f"/webhooks/whatsapp/{pages[ProviderKind.WHATSAPP]}"
    assert client.post(url, data=body, headers=headers).status_code == 200
    assert client.post(url, data=body, headers=headers).status_code == 200  # Meta retries happen
    _process_all(app)
    with app.app_context(), all_tenants(db.session):
        receipts = db.session.execute(
            select(
                Receipt.provider_message_id, Receipt.status, Receipt.reference, Receipt.error_code
            ).order_by(Receipt.id)
        ).all()
    assert receipts == [
        ("wamid.A", ReceiptStatus.DELIVERED, "d-1", None),
        ("wamid.A", ReceiptStatus.READ, "d-1", None),
        ("wamid.B", ReceiptStatus.FAILED, None, "131026"),
    ]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, 403),
        ({"X-Hub-Signature-256": meta_signature("someone-elses-secret", b"{}")}, 403),
    ],
)
def test_unsigned_or_badly_signed_callbacks_change_nothing(app, client, pages, headers, status):
    response = client.post(f"/webhooks/whatsapp/{pages[ProviderKind.WHATSAPP]}", data=b"{}", headers=headers)
    assert response.status_code == status
    assert _count(app, WebhookEvent) == 0


def test_signature_is_checked_on_the_exact_bytes(app, client, pages):
    body, headers = _signed_meta(ProviderKind.WHATSAPP, WHATSAPP_RECEIPTS)
    tampered = body.replace(b"delivered", b"read     ")
    response = client.post(
        f"/webhooks/whatsapp/{pages[ProviderKind.WHATSAPP]}", data=tampered, headers=headers
    )
    assert response.status_code == 403 and _count(app, WebhookEvent) == 0


def test_a_page_of_another_kind_or_no_page_is_404(client, pages):
    body, headers = _signed_meta(ProviderKind.WHATSAPP, WHATSAPP_RECEIPTS)
    assert (
        client.post(
            f"/webhooks/messenger/{pages[ProviderKind.WHATSAPP]}", data=body, headers=headers
        ).status_code
        == 404
    )
    assert client.post("/webhooks/whatsapp/999999", data=body, headers=headers).status_code == 404


def test_a_new_messenger_sender_becomes_a_contact_with_the_pages_id(app, client, pages):
    page_id = pages[ProviderKind.MESSENGER]
    payload = {
        "object": "page",
        "entry": [
            {
                "id": "777",
                "time": 1717689100000,
                "messaging": [
                    {
                        "sender": {"id": "PSID-42"},
                        "recipient": {"id": "777"},
                        "timestamp": 1717689100000,
                        "message": {"mid": "m_1", "text": "hello!"},
                    },
                    {
                        "sender": {"id": "PSID-42"},
                        "recipient": {"id": "777"},
                        "timestamp": 1717689105000,
                        "message": {"mid": "m_2", "text": "anyone there?"},
                    },
                    {
                        "sender": {"id": "PSID-42"},
                        "recipient": {"id": "777"},
                        "delivery": {"mids": ["m_out"], "watermark": 1717689101000},
                    },
                    {
                        "sender": {"id": "PSID-42"},
                        "recipient": {"id": "777"},
                        "read": {"watermark": 1717689102000},
                    },
                ],
            }
        ],
    }
    body, headers = _signed_meta(ProviderKind.MESSENGER, payload)
    assert client.post(f"/webhooks/messenger/{page_id}", data=body, headers=headers).status_code == 200
    _process_all(app)
    with app.app_context(), all_tenants(db.session):
        channel = db.session.scalar(select(ContactChannelId))
        messages = db.session.execute(select(InboundMessage.text, InboundMessage.contact_id)).all()
        statuses = db.session.scalars(select(Receipt.status).order_by(Receipt.id)).all()
    assert (channel.page_id, channel.external_id) == (page_id, "PSID-42")
    assert sorted(messages) == [("anyone there?", channel.contact_id), ("hello!", channel.contact_id)]
    assert _count(app, Contact) == 1
    assert statuses == [ReceiptStatus.DELIVERED, ReceiptStatus.READ]


def test_evolution_callbacks_need_the_bearer_token(app, client, pages):
    url = f"/webhooks/evolution/{pages[ProviderKind.EVOLUTION]}"
    payload = json.dumps(
        {
            "event": "messages.update",
            "instance": "shop",
            "data": {"keyId": "BAE5", "remoteJid": "5511961234567@s.whatsapp.net", "status": "READ"},
        }
    )
    assert client.post(url, data=payload).status_code == 401
    assert client.post(url, data=payload, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert (
        client.post(url, data=payload, headers={"Authorization": "Bearer evo-hook-token"}).status_code == 200
    )
    _process_all(app)
    assert (
        _count(app, Receipt, Receipt.provider_message_id == "BAE5", Receipt.status == ReceiptStatus.READ) == 1
    )


def test_webhook_pages_accept_crier_signed_callbacks_with_a_fresh_timestamp(app, client, pages):
    url = f"/webhooks/webhook/{pages[ProviderKind.WEBHOOK]}"
    body = json.dumps({"delivery": "d-9", "status": "delivered"}).encode()
    now = str(int(time.time()))
    good = {"X-Crier-Timestamp": now, "X-Crier-Signature": crier_signature("hook-signing-secret", now, body)}
    old = str(int(time.time()) - 3600)
    stale = {"X-Crier-Timestamp": old, "X-Crier-Signature": crier_signature("hook-signing-secret", old, body)}
    assert client.post(url, data=body, headers=stale).status_code == 403
    assert client.post(url, data=body, headers=good).status_code == 200
    _process_all(app)
    assert _count(app, Receipt, Receipt.reference == "d-9") == 1


def test_a_signed_but_malformed_callback_is_kept_with_its_error(app, client, pages):
    body = b"<html>not json</html>"
    headers = {"X-Hub-Signature-256": meta_signature("wa-app-secret", body)}
    assert (
        client.post(
            f"/webhooks/whatsapp/{pages[ProviderKind.WHATSAPP]}", data=body, headers=headers
        ).status_code
        == 200
    )
    _process_all(app)
    with app.app_context(), all_tenants(db.session):
        event = db.session.scalar(select(WebhookEvent))
    assert event.processed_at is not None and event.error.startswith("not JSON")
