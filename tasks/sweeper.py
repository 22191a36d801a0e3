"""The sweeper: periodic repairs that keep campaigns moving whatever process died.

Every second it settles what dead worker processes held (their heartbeat expired: what they had
handed to the HTTP client becomes ``unknown``, or ``pending`` for at-least-once pages, the rest goes
back to ``pending``, and their campaigns get new dispatch at once), and relaunches running campaigns
when Redis comes back empty. Every ``SWEEP_SECONDS`` it also starts due scheduled campaigns,
resumes quota- and throttle-paused ones whose time has come, resolves expired leases, relaunches
dispatch for running campaigns whose chains went quiet, and processes stored callbacks and receipts
nobody has handled. It runs as a thread inside every worker process (no extra process); on
PostgreSQL an advisory lock lets one sweep at a time.
It never relies on the broker redelivering a lost message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import redis
from flask import Flask, current_app
from sqlalchemy import and_, func, or_, select, text, update

from tasks import attempts, event_hooks, heartbeat, lifecycle, metrics
from tasks.connections import redis_client
from tasks.progress import emit_state
from tasks.receipts import apply_inbound, apply_receipts, process_webhook_event
from tenants.campaigns import (
    DAILY_LIMIT_PAUSES,
    Campaign,
    CampaignError,
    CampaignState,
    Delivery,
    DeliveryState,
    PauseReason,
    quota_day,
)
from tenants.db import db, utcnow
from tenants.events import InboundMessage, Receipt, WebhookEvent
from tenants.models import Tenant, TenantStatus
from tenants.pages import DeliveryPolicy, Page
from tenants.scoping import all_tenants, tenant
from tenants.usage import add_use

log = logging.getLogger(__name__)
SWEEP_LOCK = 0x43524945  # "CRIE": the advisory lock one sweeper holds while it sweeps
STALE_CALLBACK_SECONDS = 10
DEAD_WORKERS_EVERY = 1.0  # seconds between looks for dead workers' leases (a Redis scan, no query)


def sweep() -> dict[str, int]:
    """One pass; returns what it did. Runs inside an app context."""
    done: dict[str, int] = {}
    with all_tenants(db.session):
        if db.engine.dialect.name == "postgresql" and not db.session.scalar(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK}
        ):
            db.session.rollback()
            return {"skipped": 1}
        done["relaunched_after_redis_loss"] = relaunch_after_redis_loss()
        done["reclaimed"] = reclaim_from_dead_workers()
        done["leases"] = resolve_expired_leases()
        done["started"] = start_due_campaigns()
        done["resumed"] = resume_due_campaigns()
        done["relaunched"] = relaunch_stale_campaigns()
        done["callbacks"] = process_stale_callbacks()
        done["receipts"] = apply_late_receipts()
        done["event_hooks"] = event_hooks.kick_if_due()
        db.session.commit()
    return done


def _settle_leases(held: Any, why: str) -> tuple[int, int]:
    """Deliveries in flight (matching ``held``) whose sender is gone: ``unknown`` (never silently
    re-sent), or back to ``pending`` when the page is set to at-least-once. Returns (pending, unknown)."""
    now = utcnow()
    table = Delivery.__table__
    at_least_once = (
        select(Campaign.id)
        .join(Page, Page.id == Campaign.page_id)
        .where(Page.delivery_policy == DeliveryPolicy.AT_LEAST_ONCE)
    )
    gone = and_(table.c.state == DeliveryState.IN_FLIGHT.value, held)
    retried = db.session.execute(
        update(table)
        .where(gone, table.c.campaign_id.in_(at_least_once))
        .values(state=DeliveryState.PENDING.value, due_at=now, lease_until=None)
    ).rowcount
    unknown = db.session.execute(
        update(table)
        .where(gone)
        .values(
            state=DeliveryState.UNKNOWN.value,
            lease_until=None,
            error_code=why,
            error_text="the worker stopped while sending: it may or may not have been delivered",
        )
    ).rowcount
    db.session.commit()
    return retried, unknown


def settle_claim(campaign: Campaign, token: datetime, why: str) -> tuple[int, int, int]:
    """Settle one claim (lease ``token``) of ``campaign`` whose worker is gone; returns how many went
    back to pending never attempted, back to pending to retry (at-least-once), and became unknown.

    What the worker wrote down as handed to the HTTP client (``tasks.attempts``) may have reached the
    provider; the rest never left, so it goes back to pending with its attempt and quota given back.
    When Redis no longer knows the claim, all of it is treated as possibly sent."""
    client, prefix = redis_client(), current_app.config["REDIS_PREFIX"]
    claim_key = attempts.key(prefix, heartbeat.lease_member(campaign.tenant_id, campaign.id, token))
    try:
        sent = attempts.attempted(client, claim_key)
    except redis.RedisError:
        sent = None
    table = Delivery.__table__
    held = and_(table.c.campaign_id == campaign.id, table.c.lease_until == token)
    returned = 0
    if sent is not None:
        returned = db.session.execute(
            update(table)
            .where(table.c.state == DeliveryState.IN_FLIGHT.value, held, table.c.id.not_in(sent))
            .values(
                state=DeliveryState.PENDING.value,
                attempts=table.c.attempts - 1,
                due_at=utcnow(),
                lease_until=None,
            )
        ).rowcount
        if returned:
            tenant_row = db.session.get(Tenant, campaign.tenant_id)
            page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
            claimed_on = quota_day(tenant_row, token - timedelta(seconds=current_app.config["LEASE_SECONDS"]))
            capped = page.id if page is not None and page.daily_cap is not None else None
            add_use(campaign.tenant_id, claimed_on, -returned, capped)
        db.session.commit()
    retried, unknown = _settle_leases(held, why)
    with contextlib.suppress(redis.RedisError):
        attempts.forget(client, claim_key)
    for outcome, count in (("never_sent", returned), ("pending", retried), ("unknown", unknown)):
        if count:
            metrics.LEASES_SETTLED.labels(reason=why, outcome=outcome).inc(count)
    return returned, retried, unknown


def resolve_expired_leases() -> int:
    """Deliveries whose lease ran out while they were being sent (their worker died unlisted)."""
    table = Delivery.__table__
    claims = db.session.execute(
        select(table.c.tenant_id, table.c.campaign_id, table.c.lease_until)
        .where(table.c.state == DeliveryState.IN_FLIGHT.value, table.c.lease_until < utcnow())
        .distinct()
    ).all()
    db.session.commit()
    settled = 0
    for tenant_id, campaign_id, token in claims:
        with tenant(db.session, tenant_id):
            campaign = db.session.get(Campaign, campaign_id)
            if campaign is None:
                continue
            returned, retried, unknown = settle_claim(campaign, token, "lease_expired")
            settled += returned + retried + unknown
            log.warning(
                "sweeper: an expired lease of campaign %s: %s unknown, %s back to pending (%s never sent)",
                campaign_id,
                unknown,
                returned + retried,
                returned,
            )
    return settled


def relaunch_after_redis_loss() -> int:
    """Redis came back empty: the dispatch messages queued in it are gone, so running campaigns get
    new dispatch at once instead of after ``STALE_DISPATCH_SECONDS`` of silence."""
    try:
        emptied = heartbeat.mark_redis_in_use(redis_client(), current_app.config["REDIS_PREFIX"])
    except redis.RedisError:
        return 0
    if not emptied:
        return 0
    running = and_(Campaign.state == CampaignState.RUNNING, _of_active_tenants())
    return _each_campaign(running, lambda campaign: lifecycle.relaunch(campaign, "Redis lost its queues"))


def reclaim_from_dead_workers() -> int:
    """Settle at once what worker processes that stopped beating held (``tasks.heartbeat``), and give
    their running campaigns new dispatch, instead of waiting for the leases and the stale check."""
    client, prefix = redis_client(), current_app.config["REDIS_PREFIX"]
    try:
        orphans = heartbeat.orphaned_leases(client, prefix)
    except redis.RedisError:
        return 0
    settled = 0
    for worker, members in orphans.items():
        if worker == heartbeat.worker_id():
            continue  # this process is alive, whatever its heartbeat key says (a stalled beat)
        if not client.set(f"{prefix}:reclaiming:{worker}", b"1", nx=True, ex=30):
            continue  # another worker's sweeper is on it
        tokens: dict[tuple[int, int], list[datetime]] = {}
        for member in members:
            tenant_id, campaign_id, what = member.split(":", 2)
            held = tokens.setdefault((int(tenant_id), int(campaign_id)), [])
            if what != "running":
                held.append(datetime.fromisoformat(what))
        for (tenant_id, campaign_id), leases in tokens.items():
            with tenant(db.session, tenant_id):
                campaign = db.session.get(Campaign, campaign_id)
                if campaign is None:
                    continue
                for token in leases:
                    returned, retried, unknown = settle_claim(campaign, token, "worker_died")
                    settled += returned + retried + unknown
                    log.warning(
                        "sweeper: worker %s died holding %s deliveries of campaign %s "
                        "(%s unknown, %s never sent)",
                        worker,
                        returned + retried + unknown,
                        campaign_id,
                        unknown,
                        returned,
                    )
                db.session.refresh(campaign)
                if campaign.state is CampaignState.RUNNING:
                    lifecycle.relaunch(campaign, f"its worker {worker} died")
        heartbeat.forget(client, prefix, worker)
    return settled


def _each_campaign(condition, act) -> int:
    count = 0
    for campaign_id, tenant_id in db.session.execute(
        select(Campaign.id, Campaign.tenant_id).where(condition)
    ).all():
        with tenant(db.session, tenant_id):
            try:
                campaign = db.session.get(Campaign, campaign_id)
                if campaign is not None and act(campaign):
                    count += 1
            except CampaignError as exc:
                db.session.rollback()
                _fail(campaign_id, str(exc))
            except Exception:
                db.session.rollback()
                log.exception("sweeper: campaign %s", campaign_id)
    return count


def _fail(campaign_id: int, detail: str) -> None:
    db.session.execute(
        update(Campaign)
        .where(
            Campaign.id == campaign_id, Campaign.state.in_([CampaignState.SCHEDULED, CampaignState.PAUSED])
        )
        .values(state=CampaignState.FAILED, state_detail=detail[:500], finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    emit_state(campaign_id, "campaign:failed")


def _of_active_tenants() -> Any:
    """Campaigns of tenants that may send (a suspended tenant's wait for its reactivation)."""
    return Campaign.tenant_id.in_(select(Tenant.id).where(Tenant.status == TenantStatus.ACTIVE))


def start_due_campaigns() -> int:
    def act(campaign: Campaign) -> bool:
        lifecycle.start_campaign(campaign, due_only=True)
        return True

    due = and_(
        Campaign.state == CampaignState.SCHEDULED, Campaign.scheduled_at <= utcnow(), _of_active_tenants()
    )
    return _each_campaign(due, act)


def resume_due_campaigns() -> int:
    """Daily-limit pauses end once the limit has room (the day rolled over, or it was raised),
    throttle pauses when the cool-down ends."""
    due = and_(
        Campaign.state == CampaignState.PAUSED,
        or_(
            Campaign.paused_reason.in_(DAILY_LIMIT_PAUSES),
            and_(Campaign.paused_reason == PauseReason.PAGE_THROTTLED, Campaign.resume_at <= utcnow()),
        ),
        _of_active_tenants(),
    )
    return _each_campaign(due, lifecycle.resume_automatically)


def relaunch_stale_campaigns() -> int:
    """Running campaigns whose dispatch went quiet get a new generation of chains."""
    stale_before = utcnow() - timedelta(seconds=current_app.config["STALE_DISPATCH_SECONDS"])
    quiet = and_(
        Campaign.state == CampaignState.RUNNING,
        func.coalesce(Campaign.heartbeat_at, Campaign.updated_at) < stale_before,
        _of_active_tenants(),
    )

    return _each_campaign(quiet, lambda campaign: lifecycle.relaunch(campaign, "it had no live dispatch"))


def process_stale_callbacks() -> int:
    """Stored callbacks nobody processed (the broker lost the message, or was down)."""
    before = utcnow() - timedelta(seconds=STALE_CALLBACK_SECONDS)
    ids = db.session.scalars(
        select(WebhookEvent.id)
        .where(WebhookEvent.processed_at.is_(None), WebhookEvent.received_at < before)
        .order_by(WebhookEvent.id)
        .limit(500)
    ).all()
    db.session.commit()
    for event_id in ids:
        try:
            process_webhook_event(event_id)
        except Exception:
            db.session.rollback()
            log.exception("sweeper: callback %s", event_id)
    return len(ids)


def apply_late_receipts() -> int:
    """Receipts that arrived before their delivery's outcome was written, tried again."""
    tenants = db.session.scalars(
        select(Receipt.tenant_id)
        .where(Receipt.applied_at.is_(None))
        .distinct()
        .union(select(InboundMessage.tenant_id).where(InboundMessage.applied_at.is_(None)).distinct())
    ).all()
    db.session.commit()
    applied = 0
    for tenant_id in tenants:
        with tenant(db.session, tenant_id):
            applied += apply_receipts() + apply_inbound()
    return applied


class SweeperMiddleware(dramatiq.Middleware):
    """Runs :func:`sweep` every ``SWEEP_SECONDS`` in a thread of each worker process."""

    def __init__(self, app: Flask):
        self.app = app
        self.stopping = threading.Event()

    def after_worker_boot(self, broker, worker) -> None:
        if self.app.config["SWEEP_SECONDS"] > 0:
            threading.Thread(target=self.loop, name="crier-sweeper", daemon=True).start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()

    def loop(self) -> None:
        """A whole sweep every ``SWEEP_SECONDS``; in between, every second, dead workers' leases."""
        interval = float(self.app.config["SWEEP_SECONDS"])
        next_sweep = time.monotonic() + interval
        while not self.stopping.wait(min(interval, DEAD_WORKERS_EVERY)):
            with self.app.app_context():
                try:
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + interval
                        sweep()
                    else:
                        with all_tenants(db.session):
                            relaunch_after_redis_loss()
                            reclaim_from_dead_workers()
                except Exception:
                    log.exception("sweeper: pass failed")
                finally:
                    db.session.rollback()
                    db.session.remove()


__all__ = ["SweeperMiddleware", "or_", "sweep"]
