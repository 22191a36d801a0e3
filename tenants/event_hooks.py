"""Event webhooks: a workspace's own systems subscribe URLs to what happens in Crier.

A subscription names a URL, the events it wants (:data:`EVENT_TYPES`) and a signing secret shown
once at creation and kept encrypted (every request is signed with it). :func:`publish` records one
pending :class:`EventDelivery` per active subscription that wants the event, in the caller's
transaction: an outbox, so what the caller commits is sent even if its process dies next, and what
it rolls back never is. ``tasks.event_hooks`` posts the rows, signed, retrying with backoff; the rows
are the delivery log the settings page shows.

Publishing costs a tenant without subscriptions one indexed query; the send path publishes
``delivery.failed`` once per written batch (:func:`publish_failed_deliveries`), never per message.
Subscriptions are created through ``tasks.event_hooks.subscribe``, which checks the URL with the
SSRF guard first.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from tenants import audit
from tenants.campaigns import Campaign, Delivery, DeliveryState
from tenants.contacts import Contact
from tenants.crypto import hint, seal, unseal
from tenants.db import JSONDocument, TimestampMixin, db, str_enum, utcnow
from tenants.events import InboundMessage
from tenants.scoping import TenantScoped

ID = BigInteger().with_variant(Integer, "sqlite")
MAX_SUBSCRIPTIONS = 20
MAX_URL_LENGTH = 2000
LOG_SIZE = 100
RECORDED_KEY = "crier.event_hooks.recorded"
"""Set in ``session.info`` when a transaction recorded deliveries: ``tasks.event_hooks`` tells a
worker once it commits."""

EVENT_TYPES: dict[str, str] = {
    "campaign.started": "A campaign started sending, resumed, or began resending failed messages.",
    "campaign.paused": "A campaign paused: by a member, a daily limit, a failing or throttled page.",
    "campaign.completed": "A campaign finished: nothing is left to send.",
    "campaign.failed": "A campaign could not run (nobody to send to, say).",
    "delivery.failed": "A message failed for good (the provider refused it, or its retries ran out).",
    "contact.opted_out": "A contact opted out: they replied STOP, or a member opted them out.",
    "reply.received": "Someone sent a message to one of your pages.",
}
TEST_EVENT = "test"  # sent by the settings page's "Send test event" only; nobody subscribes to it
CAMPAIGN_STATE_EVENTS = {
    "campaign:started": "campaign.started",
    "campaign:paused": "campaign.paused",
    "campaign:completed": "campaign.completed",
    "campaign:failed": "campaign.failed",
}
"""The live (Socket.IO) state events and the webhook events they are published as."""


class EventHookError(ValueError):
    """A subscription change that cannot be made; the message is for the user."""


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its first attempt or its next retry
    DELIVERED = "delivered"  # the subscriber answered 2xx
    FAILED = "failed"  # its retries ran out, or it cannot be sent (the address was refused)


class EventSubscription(TenantScoped, TimestampMixin, db.Model):
    """A URL of the tenant's that receives the events it chose, signed with its own secret."""

    __tablename__ = "event_subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))
    events: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(default=True)

    def __repr__(self) -> str:  # never the secret
        return f"<EventSubscription {self.id} {self.url!r}>"

    @property
    def signing_secret(self) -> str:
        return unseal(self.secret_sealed)["signing_secret"]

    def secret_hint(self) -> str:
        return hint(self.signing_secret)


class EventDelivery(TenantScoped, TimestampMixin, db.Model):
    """One event for one subscription: what is sent, and what became of it (the delivery log)."""

    __tablename__ = "event_deliveries"
    __table_args__ = (
        Index("ix_event_deliveries_subscription_id_id", "subscription_id", "id"),  # a log, newest first
        Index("ix_event_deliveries_due", "status", "next_attempt_at"),  # what the worker sends next
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("event_subscriptions.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(String(40))  # the same for every subscriber of one event
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    status: Mapped[DeliveryStatus] = mapped_column(
        str_enum(DeliveryStatus, "event_delivery_status"), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None]  # the HTTP status of the last answer
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None]

    def envelope(self) -> dict[str, Any]:
        """The JSON body every attempt sends (the same bytes' meaning each time: receivers dedupe by id)."""
        return {
            "id": self.event_id,
            "type": self.event_type,
            "created_at": self.created_at.isoformat(),
            "tenant_id": self.tenant_id,
            "data": self.payload,
        }


# --------------------------------------------------------------------------- subscriptions


@dataclass(frozen=True)
class NewSubscription:
    subscription: EventSubscription
    secret: str  # shown once, now; only its hint afterwards


def clean_url(raw: str) -> str:
    """The URL as stored: http(s), a host, no credentials in it (Crier signs its requests instead)."""
    url = (raw or "").strip()
    if not url:
        raise EventHookError("Type the URL your system receives events at.")
    if len(url) > MAX_URL_LENGTH:
        raise EventHookError(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EventHookError("The URL must look like https://host/path.")
    if parts.username or parts.password:
        raise EventHookError(
            "Leave user names and passwords out of the URL: check Crier's signature instead."
        )
    return url


def clean_events(raw: Iterable[str]) -> list[str]:
    """The chosen event types, in the catalogue's order; refuses unknown ones and an empty choice."""
    wanted = {str(name).strip() for name in raw}
    unknown = sorted(wanted - set(EVENT_TYPES))
    if unknown:
        raise EventHookError(f"Unknown event type: {', '.join(unknown)}.")
    if not wanted:
        raise EventHookError("Choose at least one event.")
    return [name for name in EVENT_TYPES if name in wanted]


def _target(subscription: EventSubscription) -> str:
    return f"webhook {subscription.id} {subscription.url}"


def add_subscription(url: str, events: Iterable[str]) -> NewSubscription:
    """Subscribe ``url`` for the current tenant with a new secret, audited (committed by the caller).

    Use ``tasks.event_hooks.subscribe``: it refuses internal addresses first.
    """
    count = db.session.scalar(select(func.count()).select_from(EventSubscription))
    if count >= MAX_SUBSCRIPTIONS:
        raise EventHookError(f"A workspace has at most {MAX_SUBSCRIPTIONS} webhooks. Delete one first.")
    secret = "whsec_" + secrets.token_urlsafe(32)
    subscription = EventSubscription(url=clean_url(url), events=clean_events(events), active=True)
    subscription.secret_sealed = seal({"signing_secret": secret})
    db.session.add(subscription)
    db.session.flush()
    audit.record(
        "event_hook.created",
        tenant_id=subscription.tenant_id,
        target=_target(subscription),
        after={"url": subscription.url, "events": ", ".join(subscription.events)},
    )
    return NewSubscription(subscription, secret)


def change_subscription(
    subscription: EventSubscription, *, events: Iterable[str] | None = None, active: bool | None = None
) -> None:
    """Change what a subscription receives; turning it off fails its pending deliveries (nothing more
    is sent to it, and nothing old arrives when it is turned on again)."""
    if events is not None:
        subscription.events = clean_events(events)
    if active is not None and active != subscription.active:
        subscription.active = active
        if not active:
            db.session.execute(
                update(EventDelivery)
                .where(
                    EventDelivery.subscription_id == subscription.id,
                    EventDelivery.status == DeliveryStatus.PENDING,
                )
                .values(
                    status=DeliveryStatus.FAILED,
                    next_attempt_at=None,
                    last_error="not sent: the webhook was turned off",
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )


def delete_subscription(subscription: EventSubscription) -> None:
    """Delete a subscription and its delivery log, audited (committed by the caller)."""
    audit.record("event_hook.deleted", tenant_id=subscription.tenant_id, target=_target(subscription))
    db.session.delete(subscription)


def subscriptions() -> list[EventSubscription]:
    """The current tenant's subscriptions, oldest first."""
    return list(db.session.scalars(select(EventSubscription).order_by(EventSubscription.id)))


def delivery_log(subscription: EventSubscription, limit: int = LOG_SIZE) -> list[EventDelivery]:
    """The subscription's latest deliveries, newest first."""
    return list(
        db.session.scalars(
            select(EventDelivery)
            .where(EventDelivery.subscription_id == subscription.id)
            .order_by(EventDelivery.id.desc())
            .limit(limit)
        )
    )


# --------------------------------------------------------------------------- publishing


def subscribers(tenant_id: int, event_type: str) -> list[int]:
    """Ids of the tenant's active subscriptions that want ``event_type`` (one indexed query)."""
    rows = db.session.execute(
        select(EventSubscription.id, EventSubscription.events)
        .where(EventSubscription.tenant_id == tenant_id, EventSubscription.active.is_(True))
        .execution_options(all_tenants=True)  # the tenant is named: callers may work for all of them
    ).all()
    return [subscription_id for subscription_id, events in rows if event_type in (events or ())]


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def record_deliveries(
    tenant_id: int, event_type: str, subscription_ids: Sequence[int], items: Sequence[Mapping]
) -> int:
    """Pending deliveries of one event per item for each of ``subscription_ids``, in the current
    transaction; how many."""
    if not subscription_ids or not items:
        return 0
    now = utcnow()
    rows = []
    for data in items:
        event_id = new_event_id()
        rows.extend(
            {
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "event_type": event_type,
                "event_id": event_id,
                "payload": dict(data),
                "status": DeliveryStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for subscription_id in subscription_ids
        )
    db.session.execute(insert(EventDelivery), rows)
    db.session.info[RECORDED_KEY] = True
    return len(rows)


def publish(tenant_id: int, event_type: str, data: Mapping[str, Any]) -> int:
    """Record ``event_type`` with ``data`` (JSON values) for every subscriber; deliveries recorded."""
    return publish_many(tenant_id, event_type, [data])


def publish_many(tenant_id: int, event_type: str, items: Sequence[Mapping[str, Any]]) -> int:
    """One event per item, all of one type: one query for the subscribers, one insert for the rows."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    if not items:
        return 0
    return record_deliveries(tenant_id, event_type, subscribers(tenant_id, event_type), items)


def publish_campaign_state(live_event: str, summary: Mapping[str, Any] | None) -> int:
    """The webhook twin of a campaign's live state event (``campaign:completed`` → ``campaign.completed``),
    with the summary the browsers get (``tenants.campaigns.summary``)."""
    event_type = CAMPAIGN_STATE_EVENTS.get(live_event)
    if event_type is None or summary is None:
        return 0
    campaign = db.session.get(Campaign, summary["id"])  # loaded already: the summary was read from it
    if campaign is None:
        return 0
    return publish(campaign.tenant_id, event_type, {"campaign": dict(summary)})


class FailedOutcome(Protocol):
    """What ``publish_failed_deliveries`` reads of a written outcome (``tasks.dispatch.outcomes.Write``)."""

    id: int
    state: DeliveryState
    attempts: int
    error_code: str | None
    error_text: str | None


def publish_failed_deliveries(
    tenant_id: int, campaign_id: int, outcomes: Iterable[FailedOutcome], written: Container[int]
) -> int:
    """``delivery.failed`` for the outcomes of one written batch that failed (``written``: the ids the
    write changed). Nothing at all without failures, one query without subscribers."""
    failed = [o for o in outcomes if o.state is DeliveryState.FAILED and o.id in written]
    if not failed:
        return 0
    subscription_ids = subscribers(tenant_id, "delivery.failed")
    if not subscription_ids:
        return 0
    recipients = {
        row.id: row
        for row in db.session.execute(
            select(Delivery.id, Delivery.contact_id, Delivery.address).where(
                Delivery.tenant_id == tenant_id, Delivery.id.in_([o.id for o in failed])
            )
        )
    }
    items = []
    for outcome in failed:
        recipient = recipients.get(outcome.id)
        items.append(
            {
                "delivery": {
                    "id": outcome.id,
                    "campaign_id": campaign_id,
                    "contact_id": recipient.contact_id if recipient else None,
                    "address": recipient.address if recipient else None,
                    "attempts": outcome.attempts,
                    "error_code": outcome.error_code,
                    "error_text": outcome.error_text,
                }
            }
        )
    return record_deliveries(tenant_id, "delivery.failed", subscription_ids, items)


def publish_opt_out(contact: Contact) -> int:
    """``contact.opted_out``, called right after a contact's flag was set: published only when this
    change is what opted them out (a contact who had opted out already publishes nothing)."""
    changed = inspect(contact).attrs.opted_out.history.has_changes()
    if not (contact.opted_out and changed and contact.tenant_id is not None):
        return 0
    at = contact.opted_out_at or utcnow()
    data = {
        "contact": {
            "id": contact.id,
            "phone": contact.phone,
            "email": contact.email,
            "first_name": contact.first_name,
            "last_name": contact.last_name,
        },
        "source": contact.opted_out_source,
        "opted_out_at": at.isoformat(),
    }
    return publish(contact.tenant_id, "contact.opted_out", data)


def publish_reply(message: InboundMessage) -> int:
    """``reply.received`` for a message someone sent to a page, once it is matched to its contact and
    to the campaign message it answers (either may be unknown)."""
    data = {
        "reply": {
            "id": message.id,
            "page_id": message.page_id,
            "contact_id": message.contact_id,
            "sender": message.sender,
            "sender_name": message.sender_name,
            "text": message.text,
            "received_at": message.received_at.isoformat(),
            "campaign_id": message.campaign_id,
            "delivery_id": message.delivery_id,
        }
    }
    return publish(message.tenant_id, "reply.received", data)


def record_test_event(subscription: EventSubscription) -> EventDelivery:
    """A ``test`` event for this subscription alone, pending (``tasks.event_hooks.send_test_event``
    posts it at once; no worker is told)."""
    now = utcnow()
    delivery = EventDelivery(
        tenant_id=subscription.tenant_id,
        subscription_id=subscription.id,
        event_type=TEST_EVENT,
        event_id=new_event_id(),
        payload={"message": "A test event from Crier.", "subscription_id": subscription.id},
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    db.session.add(delivery)
    db.session.flush()
    return delivery
