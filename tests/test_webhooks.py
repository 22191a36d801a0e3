"""Provider callbacks: signature first, then stored, then read into receipts and messages by a worker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
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


# --- replays and request size ------------------------------------------------------------------


def _signed_request(kind: ProviderKind, body: bytes, stamp: str | None = None) -> dict[str, str]:
    """The headers the provider of ``kind`` signs ``body`` with."""
    credentials = SECRETS[kind][0]
    if kind is ProviderKind.EVOLUTION:
        return {"Authorization": f"Bearer {credentials['webhook_token']}"}
    if kind is ProviderKind.WEBHOOK:
        stamp = stamp or str(int(time.time()))
        signature = crier_signature(credentials["signing_secret"], stamp, body)
        return {"X-Crier-Timestamp": stamp, "X-Crier-Signature": signature}
    return {"X-Hub-Signature-256": meta_signature(credentials["app_secret"], body)}


@pytest.fixture
def enqueued(monkeypatch) -> list[int]:
    """The event ids the webhook view hands to a worker."""
    sent: list[int] = []

    class Actor:
        @staticmethod
        def send(event_id: int) -> None:
            sent.append(event_id)

    monkeypatch.setattr("webapp.webhooks.process_webhook_event", Actor)
    return sent


@pytest.mark.parametrize("kind", [ProviderKind.WHATSAPP, ProviderKind.EVOLUTION, ProviderKind.WEBHOOK])
def test_a_replayed_callback_is_answered_as_a_duplicate_and_stored_once(app, client, pages, enqueued, kind):
    url = f"/webhooks/{kind.value}/{pages[kind]}"
    body = json.dumps({"delivery": "d-1", "status": "delivered"}).encode()
    headers = _signed_request(kind, body)

    first = client.post(url, data=body, headers=headers)
    replays = [client.post(url, data=body, headers=headers) for _ in range(3)]

    assert first.status_code == 200 and first.get_data(as_text=True) == "EVENT_RECEIVED"
    for replay in replays:
        assert replay.status_code == 200 and "duplicate" in replay.get_data(as_text=True)
    assert _count(app, WebhookEvent) == 1 and len(enqueued) == 1
    other = json.dumps({"delivery": "d-2", "status": "delivered"}).encode()
    assert client.post(url, data=other, headers=_signed_request(kind, other)).get_data(as_text=True) == (
        "EVENT_RECEIVED"
    )
    assert _count(app, WebhookEvent) == 2 and len(enqueued) == 2


def test_the_same_body_signed_at_another_time_is_a_new_callback(app, client, pages, enqueued):
    url = f"/webhooks/webhook/{pages[ProviderKind.WEBHOOK]}"
    body = json.dumps({"delivery": "d-1", "status": "delivered"}).encode()
    now = int(time.time())
    for stamp in (now, now, now - 1):
        assert client.post(url, data=body, headers=_signed_request(ProviderKind.WEBHOOK, body, str(stamp)))
    assert _count(app, WebhookEvent) == 2 and len(enqueued) == 2


def test_the_same_callback_to_two_pages_is_stored_for_each(app, client, pages, enqueued):
    body = json.dumps({"event": "messages.update", "instance": "shop"}).encode()
    with app.app_context(), all_tenants(db.session):
        original = db.session.get(Page, pages[ProviderKind.EVOLUTION])
        credentials, settings = SECRETS[ProviderKind.EVOLUTION]
        with tenant(db.session, original.tenant_id):
            twin = apply_form(
                Page(kind=ProviderKind.EVOLUTION),
                name="twin",
                base_url="https://provider.example",
                send_rate=10,
                daily_cap=None,
                credentials=credentials,
                settings=settings,
            )
            db.session.add(twin)
            db.session.commit()
            twin_id = twin.id
    headers = _signed_request(ProviderKind.EVOLUTION, body)
    for page_id in (pages[ProviderKind.EVOLUTION], twin_id):
        response = client.post(f"/webhooks/evolution/{page_id}", data=body, headers=headers)
        assert response.get_data(as_text=True) == "EVENT_RECEIVED"
    assert _count(app, WebhookEvent) == 2


def test_identical_callbacks_at_the_same_time_are_stored_once(app, pages, live_server):
    url = f"{live_server}/webhooks/whatsapp/{pages[ProviderKind.WHATSAPP]}"
    body, headers = _signed_meta(ProviderKind.WHATSAPP, WHATSAPP_RECEIPTS)
    start = threading.Barrier(8)

    def post(_: int) -> httpx.Response:
        start.wait()
        return httpx.post(url, content=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))

    assert [answer.status_code for answer in answers] == [200] * 8
    assert sum("duplicate" not in answer.text for answer in answers) == 1
    assert _count(app, WebhookEvent) == 1


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


def test_a_chunked_callback_over_the_size_limit_is_refused_unread(app, pages, live_server):
    url = f"{live_server}/webhooks/whatsapp/{pages[ProviderKind.WHATSAPP]}"
    signature = {"X-Hub-Signature-256": meta_signature("wa-app-secret", b"x" * (3 * 1024 * 1024))}

    response = httpx.post(url, content=_chunks(3 * 1024 * 1024), headers=signature, timeout=30)

    assert response.status_code == 413 and response.request.headers["Transfer-Encoding"] == "chunked"
    assert _count(app, WebhookEvent) == 0
    small = json.dumps(WHATSAPP_RECEIPTS).encode()
    signed = {"X-Hub-Signature-256": meta_signature("wa-app-secret", small)}
    accepted = httpx.post(url, content=iter([small]), headers=signed, timeout=30)
    assert accepted.status_code == 200 and accepted.request.headers["Transfer-Encoding"] == "chunked"
    assert _count(app, WebhookEvent) == 1


def test_two_workspaces_with_the_same_sandbox_number_each_get_their_own_receipts(app, sandbox, live_server):
    """Each page subscribes through Crier (as its form does) and sends through its own token."""
    from tasks.channel_checks import connection_for, subscribe_sandbox_receipts, test_send
    from tasks.providers.ssrf import allowed_private_hosts

    httpx.put(
        f"{sandbox.url}/_sandbox/config",
        json={"delivered_after_ms": 20, "read_share": 0.0, "callback_flush_ms": 20},
        timeout=5,
    ).raise_for_status()
    sent, connections = {}, {}
    with app.app_context():
        for name in ("Acme", "Globex"):
            with all_tenants(db.session):
                workspace = Tenant(name=name, slug=name.lower())
                db.session.add(workspace)
                db.session.flush()
            with tenant(db.session, workspace.id):
                page = apply_form(
                    Page(kind=ProviderKind.WHATSAPP),
                    name=f"{name} sandbox",
                    base_url=sandbox.url,
                    send_rate=10,
                    daily_cap=None,
                    credentials={
                        "access_token": f"token-of-{name.lower()}",
                        "app_secret": f"secret-of-{name.lower()}",
                        "verify_token": f"verify-{name.lower()}",
                    },
                    settings={"phone_number_id": "106540352242922"},
                )
                db.session.add(page)
                db.session.commit()
                callback = f"{live_server}/webhooks/whatsapp/{page.id}"
                assert "now arrive" in subscribe_sandbox_receipts(sandbox.url, page, callback)
                connections[page.id] = connection_for(page, allowed_private_hosts(app.config))
    for page_id, connection in connections.items():  # both pages subscribed, then each one sends
        sent[page_id] = test_send(connection, "5511961234567", "Hello").provider_message_id

    def stored() -> dict[int, list[str]]:
        with app.app_context(), all_tenants(db.session):
            return {
                page_id: [
                    body
                    for (body,) in db.session.execute(
                        select(WebhookEvent.body).where(WebhookEvent.page_id == page_id)
                    )
                ]
                for page_id in sent
            }

    deadline = time.monotonic() + 10
    while not all(stored().values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a receipt sent to the wrong page would have arrived by now too
    for page_id, bodies in stored().items():
        assert bodies, f"page {page_id} got no receipt"
        for body in bodies:
            assert sent[page_id] in body
            assert all(other not in body for other in sent.values() if other != sent[page_id])
