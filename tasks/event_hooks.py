"""Event webhooks, the sending side: each recorded event POSTed to its subscriber, signed exactly like
the webhook page kind, through the SSRF guard, retried with backoff; and the one way subscriptions
are created (the URL checked by the guard first) and test events sent.

A request carries ``X-Crier-Timestamp`` and ``X-Crier-Signature: sha256=<hex HMAC-SHA256(secret,
"<timestamp>.<body>")>`` as the webhook page's do, plus ``X-Crier-Event`` (the type) and
``X-Crier-Event-Id``; the body is ``{"id", "type", "created_at", "tenant_id", "data"}``. A 2xx answer
delivers it; anything else is retried after about 30 s, 2 min, 10 min, 1 h and 6 h (±20 %, or later
when the answer's Retry-After says so), and the sixth failure is final. An address the guard refuses
fails at once. Delivery is at least once: a worker that dies mid-request leaves its claim to expire
and the event is sent again, with the same id.

Workers are told after each commit that recorded deliveries (one queued message at a time, through
a Redis mark); the sweeper's :func:`kick_if_due` picks up due retries and any lost message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import redis
from flask import current_app
from flask_sqlalchemy.session import Session as FlaskSQLAlchemySession
from sqlalchemy import event, select, update

from tasks.broker import WorkersUnreachable, actor
from tasks.connections import redis_client
from tasks.providers.base import Outcome, PageConnection, ProviderKind, SendResult
from tasks.providers.http import make_client
from tasks.providers.ssrf import BlockedDestination, UrlGuard, allowed_private_hosts
from tasks.providers.webhook import WebhookAdapter, webhook_answer
from tenants import event_hooks
from tenants.crypto import CredentialsUnreadable
from tenants.db import db, utcnow
from tenants.event_hooks import (
    RECORDED_KEY,
    DeliveryStatus,
    EventDelivery,
    EventHookError,
    EventSubscription,
    NewSubscription,
)
from tenants.scoping import all_tenants

log = logging.getLogger(__name__)

RETRY_SECONDS = (30, 120, 600, 3600, 6 * 3600)  # after the 1st … 5th failed attempt
MAX_ATTEMPTS = len(RETRY_SECONDS) + 1
BATCH = 32  # deliveries claimed at once
IN_FLIGHT = 16  # requests under way at once
LEASE_SECONDS = 120  # a claim's hold: past it, a dead worker's deliveries are due again
SLICE_SECONDS = 30  # one message's work; then a new message (the queue stays fair to other actors)
KICK_MARK_MS = 60_000  # "a send message is queued": one at a time, for at most this long
TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=10.0)
EVENT_HEADER, EVENT_ID_HEADER = "X-Crier-Event", "X-Crier-Event-Id"


# --------------------------------------------------------------------------- subscribing


def refuse_internal(url: str) -> None:
    """Raise :class:`EventHookError` with the reason unless the SSRF guard lets Crier reach ``url``
    (the server's allowed private hosts excepted, as for pages)."""
    guard = UrlGuard(allowed_private_hosts(current_app.config))
    try:
        asyncio.run(guard.check(url))
    except BlockedDestination as exc:
        raise EventHookError(
            f"Crier cannot send events to this URL: it {exc.reason}. Use an address on the public internet."
        ) from None
    except httpx.HTTPError as exc:
        raise EventHookError(f"Crier cannot reach this URL: {exc}.") from None


def subscribe(url: str, events: Iterable[str]) -> NewSubscription:
    """Subscribe ``url`` for the current tenant once the SSRF guard allows it (committed by the caller).

    The settings page and the API both create subscriptions here.
    """
    url = event_hooks.clean_url(url)
    refuse_internal(url)
    return event_hooks.add_subscription(url, events)


def send_test_event(subscription: EventSubscription) -> EventDelivery:
    """Record a ``test`` event for ``subscription`` and post it now, in this request; the row tells
    what became of it (delivered, or waiting for a retry with the error)."""
    delivery = event_hooks.record_test_event(subscription)
    db.session.commit()
    send_due(limit=1, only=delivery.id)
    db.session.refresh(delivery)
    return delivery


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    attempts: int  # counting the one about to be made
    subscription_id: int
    url: str
    secret: str | None  # None: it cannot be decrypted with the configured keys
    envelope: dict[str, Any]


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    final: bool = False  # not worth retrying: the guard refused the address, the secret is unreadable


class EventPoster(WebhookAdapter):
    """The webhook page kind's signed POST (signature, redirects, SSRF guard, redaction), carrying the
    event's type and id in headers too."""

    def signed(self, payload: dict[str, Any], *, now: float | None = None) -> tuple[bytes, dict[str, str]]:
        body, headers = super().signed(payload, now=now)
        headers[EVENT_HEADER] = str(payload["type"])
        headers[EVENT_ID_HEADER] = str(payload["id"])
        return body, headers

    async def post(self, envelope: dict[str, Any]) -> Attempt:
        answer = await self._post(envelope)
        if isinstance(answer, SendResult):
            code = answer.code or ""
            return Attempt(
                False,
                int(code) if code.isdigit() else None,
                answer.detail or answer.outcome.value,
                answer.retry_after,
                final=code == "ssrf",
            )
        result = webhook_answer(answer, str(envelope["id"]))
        if result.outcome is Outcome.SENT:
            return Attempt(True, answer.status_code)
        return Attempt(False, answer.status_code, result.detail, result.retry_after)


def claim_due(now: datetime, limit: int = BATCH, only: int | None = None) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries of active subscriptions (each attempt counted now), committed
    before anything is sent; several workers never claim the same row."""
    with all_tenants(db.session):
        due = (
            select(EventDelivery.id)
            .join(EventSubscription, EventSubscription.id == EventDelivery.subscription_id)
            .where(
                EventDelivery.status == DeliveryStatus.PENDING,
                EventDelivery.next_attempt_at <= now,
                EventSubscription.active.is_(True),
            )
            .order_by(EventDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(of=EventDelivery.__table__, skip_locked=True)
        )
        if only is not None:
            due = due.where(EventDelivery.id == only)
        ids = db.session.scalars(
            update(EventDelivery)
            .where(EventDelivery.id.in_(due))
            .values(
                attempts=EventDelivery.attempts + 1,
                next_attempt_at=now + timedelta(seconds=LEASE_SECONDS),
                updated_at=now,
            )
            .returning(EventDelivery.id)
            .execution_options(synchronize_session=False)
        ).all()
        rows = db.session.execute(
            select(EventDelivery, EventSubscription)
            .join(EventSubscription, EventSubscription.id == EventDelivery.subscription_id)
            .where(EventDelivery.id.in_(ids))
            .order_by(EventDelivery.id)
            .execution_options(populate_existing=True)  # the update above bypassed the identity map
        ).all()
        claimed = [
            Claimed(
                delivery.id,
                delivery.attempts,
                subscription.id,
                subscription.url,
                _secret(subscription),
                delivery.envelope(),
            )
            for delivery, subscription in rows
        ]
        db.session.commit()
    return claimed


def _secret(subscription: EventSubscription) -> str | None:
    try:
        return subscription.signing_secret
    except CredentialsUnreadable:
        return None


async def post_all(claimed: list[Claimed], allowed_hosts: frozenset[str]) -> list[Attempt]:
    """POST every claimed delivery (``IN_FLIGHT`` at once) over one guarded client; one attempt each."""
    guard = UrlGuard(allowed_hosts)
    client = make_client(guard=guard, timeout=TIMEOUT)
    posters: dict[int, EventPoster] = {}
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(item: Claimed) -> Attempt:
        if item.secret is None:
            return Attempt(
                False, error="the signing secret cannot be decrypted with the configured keys", final=True
            )
        poster = posters.get(item.subscription_id)
        if poster is None:
            connection = PageConnection(
                kind=ProviderKind.WEBHOOK,
                base_url=item.url,
                credentials={"signing_secret": item.secret},
                allowed_hosts=allowed_hosts,
            )
            poster = posters[item.subscription_id] = EventPoster(connection, client, guard=guard)
        async with slots:
            try:
                return await poster.post(item.envelope)
            except Exception as exc:  # an adapter answers, never raises; if it does, the event waits
                log.exception("event delivery %s", item.delivery_id)
                return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:500])

    try:
        return list(await asyncio.gather(*(one(item) for item in claimed)))
    finally:
        await client.aclose()


def retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: the schedule with ±20 % jitter,
    or the receiver's Retry-After when that is later (never past the schedule's longest wait)."""
    delay = RETRY_SECONDS[min(attempts, len(RETRY_SECONDS)) - 1] * random.uniform(0.8, 1.2)
    if retry_after:
        delay = max(delay, min(retry_after, RETRY_SECONDS[-1]))
    return delay


def record_attempts(claimed: list[Claimed], attempts: list[Attempt], now: datetime) -> None:
    """Write what each attempt means for its delivery: delivered, a retry scheduled, or failed."""
    with all_tenants(db.session):
        for item, attempt in zip(claimed, attempts, strict=True):
            values: dict[str, Any] = {"last_status": attempt.status, "updated_at": utcnow()}
            if attempt.delivered:
                values |= {
                    "status": DeliveryStatus.DELIVERED,
                    "delivered_at": utcnow(),
                    "next_attempt_at": None,
                    "last_error": None,
                }
            elif attempt.final or item.attempts >= MAX_ATTEMPTS:
                error = attempt.error or "no answer"
                if not attempt.final:
                    error = f"gave up after {item.attempts} attempts: {error}"
                values |= {
                    "status": DeliveryStatus.FAILED,
                    "next_attempt_at": None,
                    "last_error": error[:500],
                }
            else:
                wait = timedelta(seconds=retry_delay(item.attempts, attempt.retry_after))
                values |= {"next_attempt_at": now + wait, "last_error": (attempt.error or "")[:500] or None}
            db.session.execute(
                update(EventDelivery)
                .where(EventDelivery.id == item.delivery_id, EventDelivery.status == DeliveryStatus.PENDING)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        db.session.commit()


def send_due(now: datetime | None = None, limit: int = BATCH, only: int | None = None) -> int:
    """Claim, post and record one batch of due deliveries (or just ``only``); how many were attempted.

    ``now`` is when the worker runs (tests pass a later time instead of waiting out a retry)."""
    now = now or utcnow()
    claimed = claim_due(now, limit, only)
    if not claimed:
        return 0
    attempts = asyncio.run(post_all(claimed, allowed_private_hosts(current_app.config)))
    record_attempts(claimed, attempts, now)
    return len(claimed)


@actor(max_retries=0, time_limit=5 * 60 * 1000)
def send_event_deliveries() -> None:
    """Post the due event deliveries, batch after batch, for up to ``SLICE_SECONDS``; then leave the
    rest to a new message."""
    with contextlib.suppress(redis.RedisError):
        redis_client().delete(_kick_mark())  # from now on, a new commit queues a new message
    until = time.monotonic() + SLICE_SECONDS
    while send_due():
        if time.monotonic() >= until:
            kick()
            return


# --------------------------------------------------------------------------- telling workers


def _kick_mark() -> str:
    return f"{current_app.config['REDIS_PREFIX']}:event-hooks:queued"


def kick() -> bool:
    """Queue a send message unless one is queued already; False when none was queued (the sweeper
    tries again)."""
    try:
        client = redis_client()
        if not client.set(_kick_mark(), b"1", nx=True, px=KICK_MARK_MS):
            return False
        try:
            send_event_deliveries.send()
        except WorkersUnreachable:
            client.delete(_kick_mark())
            raise
    except (redis.RedisError, WorkersUnreachable) as exc:
        log.info("event webhooks: no worker told (%s); the sweeper will", exc.__class__.__name__)
        return False
    return True


def kick_if_due(now: datetime | None = None) -> int:
    """The sweeper's part: 1 when deliveries are due (a retry's time came, or a message was lost) and a
    worker was told, else 0."""
    with all_tenants(db.session):
        due = db.session.scalar(
            select(EventDelivery.id)
            .join(EventSubscription, EventSubscription.id == EventDelivery.subscription_id)
            .where(
                EventDelivery.status == DeliveryStatus.PENDING,
                EventDelivery.next_attempt_at <= (now or utcnow()),
                EventSubscription.active.is_(True),
            )
            .limit(1)
        )
    return int(due is not None and kick())


def _kick_after_commit(session) -> None:
    """A committed transaction recorded deliveries (``tenants.event_hooks.record_deliveries``): tell a
    worker. Never raises: the commit is done, and the sweeper catches up on what is missed."""
    if session.info.pop(RECORDED_KEY, False):
        try:
            kick()
        except Exception:
            log.exception("event webhooks: telling a worker failed")


def _forget_after_rollback(session) -> None:
    session.info.pop(RECORDED_KEY, None)


if not event.contains(FlaskSQLAlchemySession, "after_commit", _kick_after_commit):
    event.listen(FlaskSQLAlchemySession, "after_commit", _kick_after_commit)
    event.listen(FlaskSQLAlchemySession, "after_rollback", _forget_after_rollback)
