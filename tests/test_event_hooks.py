"""Event webhooks: a workspace's URL receives signed events, retried until its system takes them."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from tasks import event_hooks as hooks
from tasks.receipts import process_webhook_event
from tenants import audit
from tenants.campaigns import DeliveryState
from tenants.contacts import Contact
from tenants.db import db, utcnow
from tenants.event_hooks import (
    DeliveryStatus,
    EventDelivery,
    EventSubscription,
    add_subscription,
    change_subscription,
    publish,
)
from tenants.events import WebhookEvent
from tenants.pages import Page, ProviderKind, apply_form
from tenants.scoping import all_tenants, tenant
from tenants.signatures import crier_signature
from tests.conftest import Auth, built_app
from tests.engine import EngineRun
from tests.factories import make_membership, tenant_named

SECRET = re.compile(r'data-testid="signing-secret">(whsec_[^<]+)<')
WEBHOOK_LINK = re.compile(r"/settings/webhooks/(\d+)")


class Receiver:
    """A subscriber's system: a real HTTP server answering each POST with the next of ``statuses``
    (then 200), keeping every request."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                headers = {key.lower(): value for key, value in self.headers.items()}
                receiver.requests.append({"headers": headers, "body": body, "answered": status})
                answer = b"thanks" if status < 300 else b"try later"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host_port = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://{self.host_port}/crier-events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict]:
        return [json.loads(request["body"]) for request in self.requests]

    def wait_for(self, count: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, f"{count} events expected, {len(self.requests)} arrived"
        return self.events()


def signed_by(request: dict, secret: str) -> bool:
    """What a subscriber checks: ``sha256=HMAC-SHA256(secret, "<timestamp>.<body>")``, freshly stamped."""
    stamp = request["headers"]["x-crier-timestamp"]
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(stamp)) <= 300
    return fresh and hmac.compare_digest(f"sha256={digest}", request["headers"]["x-crier-signature"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hooks_app(receiver):
    """The app, with the receiver's loopback address allowed as the server's configuration allows the
    sandbox's (every other private address stays refused)."""
    with built_app(EXTRA_ALLOWED_HOSTS=[receiver.host_port]) as app:
        yield app


@pytest.fixture
def owner(hooks_app) -> Auth:
    auth = Auth(hooks_app.test_client())
    auth.signup()
    return auth


def subscribe(auth: Auth, url: str, events: list[str]) -> tuple[str, int]:
    """Subscribe ``url`` on the settings page; the secret it shows once, and the webhook's id."""
    page = auth.post("/settings/webhooks", {"url": url, "events": events})
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html
    return SECRET.search(html).group(1), int(WEBHOOK_LINK.search(html).group(1))


def log_rows(auth: Auth, webhook_id: int) -> list[tuple[str, str, str]]:
    """The delivery log as the page shows it: (event, status, attempts), newest first."""
    html = auth.client.get(f"/settings/webhooks/{webhook_id}").get_data(as_text=True)
    return re.findall(
        r'data-event="([^"]+)">.*?data-testid="delivery-status">(\w+)<.*?data-testid="delivery-attempts">(\d+)<',
        html,
        re.S,
    )


# --------------------------------------------------------------------------- the settings page


def test_a_subscribed_url_receives_a_signed_test_event(hooks_app, owner, receiver):
    secret, webhook_id = subscribe(owner, receiver.url, ["campaign.completed", "contact.opted_out"])

    tested = owner.post(f"/settings/webhooks/{webhook_id}/test")

    assert "Delivered: your endpoint answered HTTP 200." in tested.get_data(as_text=True)
    [request] = receiver.requests
    assert signed_by(request, secret)
    assert not signed_by(request, "whsec_someone-elses-secret")
    body = json.loads(request["body"])
    assert set(body) == {"id", "type", "created_at", "tenant_id", "data"}
    assert body["type"] == request["headers"]["x-crier-event"] == "test"
    assert body["id"] == request["headers"]["x-crier-event-id"]
    assert log_rows(owner, webhook_id) == [("test", "delivered", "1")]
    for page in ("/settings/webhooks", f"/settings/webhooks/{webhook_id}"):  # the secret was shown once
        assert secret not in owner.client.get(page).get_data(as_text=True)
    with hooks_app.app_context(), all_tenants(db.session):
        assert [entry.action for entry in audit.entries(body["tenant_id"])] == ["event_hook.created"]


def test_an_event_the_receiver_refuses_is_delivered_on_retry(hooks_app, owner, receiver):
    secret, webhook_id = subscribe(owner, receiver.url, ["campaign.completed"])
    receiver.statuses = [500]

    tested = owner.post(f"/settings/webhooks/{webhook_id}/test").get_data(as_text=True)

    assert "Not delivered: HTTP 500: try later." in tested and "tries again later" in tested
    with hooks_app.app_context():
        with all_tenants(db.session):
            waiting = db.session.scalar(select(EventDelivery))
        assert (waiting.status, waiting.attempts, waiting.last_status) == (DeliveryStatus.PENDING, 1, 500)
        assert timedelta(seconds=23) <= waiting.next_attempt_at - waiting.created_at <= timedelta(seconds=37)
        assert hooks.send_due() == 0, "nothing is sent again before its retry is due"
        assert hooks.send_due(now=utcnow() + timedelta(minutes=1)) == 1
    assert log_rows(owner, webhook_id) == [("test", "delivered", "2")]
    first, second = receiver.requests
    assert first["body"] == second["body"] and all(signed_by(r, secret) for r in (first, second))


def test_an_event_is_given_up_after_six_failed_attempts(hooks_app, owner, receiver):
    _, webhook_id = subscribe(owner, receiver.url, ["campaign.completed"])
    receiver.statuses = [503] * 7

    owner.post(f"/settings/webhooks/{webhook_id}/test")
    with hooks_app.app_context():
        later = utcnow()
        for _ in range(5):
            later += timedelta(hours=8)
            assert hooks.send_due(now=later) == 1
        assert hooks.send_due(now=later + timedelta(days=1)) == 0

    assert log_rows(owner, webhook_id) == [("test", "failed", "6")]
    assert len(receiver.requests) == 6
    html = owner.client.get(f"/settings/webhooks/{webhook_id}").get_data(as_text=True)
    assert "gave up after 6 attempts: HTTP 503: try later" in html


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.5/hooks", "it resolves to a private address 10.0.0.5"),
        ("http://localhost:8080/hooks", "it resolves to a loopback address"),
        ("http://169.254.169.254/latest/meta-data", "it resolves to a link-local address 169.254.169.254"),
    ],
)
def test_a_url_into_a_private_network_is_refused_with_the_reason(hooks_app, owner, url, reason):
    page = owner.post("/settings/webhooks", {"url": url, "events": ["campaign.completed"]})

    html = page.get_data(as_text=True)
    assert page.status_code == 400
    assert f"Crier cannot send events to this URL: {reason}" in html
    assert url in html and 'value="campaign.completed" checked' in html  # the form keeps what was typed
    with hooks_app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(func.count()).select_from(EventSubscription)) == 0


def test_turning_a_webhook_off_stops_its_events_and_deleting_it_is_audited(hooks_app, owner, receiver):
    _, webhook_id = subscribe(owner, receiver.url, ["campaign.completed"])
    receiver.statuses = [500]
    owner.post(f"/settings/webhooks/{webhook_id}/test")

    owner.post(f"/settings/webhooks/{webhook_id}", {"events": ["campaign.completed", "reply.received"]})

    html = owner.client.get(f"/settings/webhooks/{webhook_id}").get_data(as_text=True)
    assert 'data-testid="webhook-state">off<' in html
    assert log_rows(owner, webhook_id) == [("test", "failed", "1")]
    assert "not sent: the webhook was turned off" in html
    with hooks_app.app_context():
        assert hooks.send_due(now=utcnow() + timedelta(days=1)) == 0
        with all_tenants(db.session):
            assert db.session.scalar(select(EventSubscription.events)) == [
                "campaign.completed",
                "reply.received",
            ]

    deleted = owner.post(f"/settings/webhooks/{webhook_id}/delete", follow_redirects=True)

    assert f"Crier no longer sends events to {receiver.url}." in deleted.get_data(as_text=True)
    with hooks_app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(func.count()).select_from(EventDelivery)) == 0
        actions = [entry.action for entry in audit.entries(tenant_named("Acme").id)]
    assert actions == ["event_hook.deleted", "event_hook.created"]
    assert len(receiver.requests) == 1


def test_the_settings_page_needs_an_owner_or_admin_and_a_csrf_token(hooks_app, owner, receiver):
    no_token = owner.client.post(
        "/settings/webhooks", data={"url": receiver.url, "events": ["campaign.paused"]}
    )
    assert no_token.status_code == 400
    _, webhook_id = subscribe(owner, receiver.url, ["campaign.paused"])
    assert owner.client.post(f"/settings/webhooks/{webhook_id}/delete").status_code == 400

    with hooks_app.app_context(), all_tenants(db.session):
        acme = tenant_named("Acme")
        with tenant(db.session, acme.id):
            make_membership(acme, {})
        db.session.commit()
        member_email = f"member-{acme.id}@crier.example"
    member = Auth(hooks_app.test_client())
    member.login(member_email, "a member password")
    assert member.client.get("/settings/webhooks").status_code == 403
    assert member.client.get(f"/settings/webhooks/{webhook_id}").status_code == 403
    assert (
        member.post("/settings/webhooks", {"url": receiver.url, "events": ["campaign.paused"]}).status_code
        == 403
    )
    assert member.post(f"/settings/webhooks/{webhook_id}/delete").status_code == 403

    with hooks_app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(func.count()).select_from(EventSubscription)) == 1


def test_another_workspaces_webhook_is_404_on_every_page(hooks_app, owner, receiver):
    _, webhook_id = subscribe(owner, receiver.url, ["campaign.paused"])
    bravo = Auth(hooks_app.test_client())
    bravo.signup(email="owner@bravo.example", workspace="Bravo")

    assert bravo.client.get(f"/settings/webhooks/{webhook_id}").status_code == 404
    for path in ("", "/test", "/delete"):
        response = bravo.post(f"/settings/webhooks/{webhook_id}{path}", {"events": ["reply.received"]})
        assert response.status_code == 404, path
    assert receiver.url not in bravo.client.get("/settings/webhooks").get_data(as_text=True)

    assert receiver.requests == []
    assert owner.client.get(f"/settings/webhooks/{webhook_id}").status_code == 200
    with hooks_app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(EventSubscription.events)) == ["campaign.paused"]


# --------------------------------------------------------------------------- publishing


def test_an_event_goes_to_the_active_subscriptions_that_want_it(hooks_app, owner):
    with hooks_app.app_context(), all_tenants(db.session):
        acme = tenant_named("Acme").id
    with hooks_app.app_context(), tenant(db.session, acme):
        crm = add_subscription("https://crm.example.com/events", ["campaign.completed"]).subscription
        shop = add_subscription("https://shop.example.com/events", ["campaign.completed", "reply.received"])
        add_subscription("https://other.example.com/events", ["reply.received"])
        quiet = add_subscription("https://quiet.example.com/events", ["campaign.completed"]).subscription
        change_subscription(quiet, active=False)
        db.session.commit()
        wanted_by = {crm.id, shop.subscription.id}

        assert publish(acme, "campaign.completed", {"campaign": {"id": 7}}) == 2
        assert publish(acme, "campaign.paused", {"campaign": {"id": 7}}) == 0
        db.session.rollback()  # the caller's transaction decides: a rolled-back change sends nothing
        assert db.session.scalar(select(func.count()).select_from(EventDelivery)) == 0

        publish(acme, "campaign.completed", {"campaign": {"id": 8}})
        db.session.commit()
        rows = [
            (row.subscription_id, row.event_id, row.payload)
            for row in db.session.scalars(select(EventDelivery))
        ]
    assert {subscription_id for subscription_id, _, _ in rows} == wanted_by
    assert len({event_id for _, event_id, _ in rows}) == 1, "one event, one id, whoever receives it"
    assert all(payload == {"campaign": {"id": 8}} for _, _, payload in rows)


def test_a_stop_reply_and_a_members_opt_out_are_sent_as_opt_outs(hooks_app, owner, receiver):
    secret, webhook_id = subscribe(owner, receiver.url, ["contact.opted_out", "reply.received"])
    with hooks_app.app_context(), all_tenants(db.session):
        acme = tenant_named("Acme").id
    with hooks_app.app_context(), tenant(db.session, acme):
        page = apply_form(
            Page(kind=ProviderKind.WEBHOOK),
            name="Shop server",
            base_url="https://shop.example.com/send",
            send_rate=10,
            daily_cap=None,
            credentials={"signing_secret": "shop-callback-secret"},
            settings={},
        )
        ana, ben = Contact(phone="+5511961000001", first_name="Ana"), Contact(phone="+5511961000002")
        db.session.add_all([page, ana, ben])
        db.session.commit()
        page_id, ana_id, ben_id = page.id, ana.id, ben.id

    body = json.dumps({"sender": str(ana_id), "text": "Stop."}).encode()
    stamp = str(int(time.time()))
    signature = crier_signature("shop-callback-secret", stamp, body)
    callback = owner.client.post(
        f"/webhooks/webhook/{page_id}",
        data=body,
        headers={"X-Crier-Timestamp": stamp, "X-Crier-Signature": signature},
    )
    assert callback.status_code == 200
    with hooks_app.app_context(), all_tenants(db.session):
        event_id = db.session.scalar(select(WebhookEvent.id))
    with hooks_app.app_context():
        process_webhook_event(event_id)  # what the worker does with the stored callback
        hooks.send_due()

    events = {event["type"]: event for event in receiver.wait_for(2)}
    assert events["contact.opted_out"]["data"]["contact"]["id"] == ana_id
    assert events["contact.opted_out"]["data"]["source"] == "replied 'Stop.' on Shop server"
    assert events["reply.received"]["data"]["reply"]["text"] == "Stop."
    assert events["reply.received"]["data"]["reply"]["contact_id"] == ana_id
    assert all(signed_by(request, secret) for request in receiver.requests)

    owner.post(f"/contacts/{ben_id}/opt-out")
    owner.post(f"/contacts/{ben_id}/opt-out")  # opted out already: nothing new to tell
    with hooks_app.app_context():
        hooks.send_due()
    [ben_event] = receiver.events()[2:]
    assert ben_event["type"] == "contact.opted_out"
    assert ben_event["data"]["contact"]["id"] == ben_id and ben_event["data"]["source"] == "set by a member"
    assert Counter(row[0] for row in log_rows(owner, webhook_id)) == {
        "contact.opted_out": 2,
        "reply.received": 1,
    }


def test_a_campaign_run_by_the_engine_sends_its_events(sandbox, receiver, monkeypatch):
    monkeypatch.setenv("CRIER_ALLOWED_PRIVATE_HOSTS", receiver.host_port)  # the app's and the workers'
    engine = EngineRun(sandbox)
    try:
        engine.configure(callbacks=False, permanent_suffixes=["000000031", "000000071"])  # contacts 3 and 7
        tenant_id, page_id, list_id = engine.setup(contacts=20)
        with tenant(db.session, tenant_id):
            secret = hooks.subscribe(
                receiver.url, ["campaign.started", "campaign.completed", "delivery.failed"]
            ).secret
            db.session.commit()
        campaign_id = engine.campaign(tenant_id, page_id, list_id)
        engine.worker()

        engine.start(tenant_id, campaign_id)
        engine.wait(tenant_id, campaign_id)
        events = receiver.wait_for(4)
        failed = [d for d in engine.deliveries(tenant_id, campaign_id) if d.state is DeliveryState.FAILED]
    finally:
        engine.close()

    assert Counter(event["type"] for event in events) == {
        "campaign.started": 1,
        "delivery.failed": 2,
        "campaign.completed": 1,
    }
    [completed] = [event["data"]["campaign"] for event in events if event["type"] == "campaign.completed"]
    assert (completed["id"], completed["state"], completed["sent"], completed["failed"]) == (
        campaign_id,
        "completed",
        18,
        2,
    )
    reported = sorted(e["data"]["delivery"]["id"] for e in events if e["type"] == "delivery.failed")
    assert reported == sorted(d.id for d in failed)
    assert all(signed_by(request, secret) for request in receiver.requests)
