"""One slice of one chain of a running campaign: what it loads, how it watches the campaign's state
and hands over to the next slice. Its parts live beside it: ``sending`` (the loop), ``claims``
(quota and leases), ``pacing`` (slots and throttles) and ``outcomes`` (writing results)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from tasks import attempts, heartbeat, lifecycle, progress
from tasks.broker import WorkersUnreachable
from tasks.connections import redis_client, with_db_retry
from tasks.dispatch.claims import TABLE, Claims
from tasks.dispatch.outcomes import ERROR_WINDOW, Outcomes, Write
from tasks.dispatch.pacing import Pacing, rate_limiter
from tasks.dispatch.sending import Sending
from tasks.dispatch.settings import DispatchSettings
from tasks.limits import RateLimiter
from tasks.providers.base import PageConnection, SendResult
from tasks.providers.ssrf import allowed_private_hosts
from tenants.campaigns import Campaign, CampaignState, DeliveryState, MessageSource
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.pages import DeliveryPolicy, Page, ProviderKind
from tenants.templating import CompiledTemplate, compile_template

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0  # seconds between "this campaign has live dispatch" marks for the sweeper


@dataclass(frozen=True)
class PageFacts:
    """What a slice needs of its page, read once (ORM objects expire at every commit)."""

    id: int
    kind: ProviderKind
    send_rate: float
    daily_cap: int | None
    delivery_policy: DeliveryPolicy


@dataclass(frozen=True)
class TenantFacts:
    id: int
    daily_message_quota: int
    max_send_rate: float
    timezone: str


@dataclass
class Slice(Sending, Claims, Pacing, Outcomes):
    campaign_id: int
    tenant_id: int
    generation: int
    chain: int
    settings: DispatchSettings
    page: PageFacts
    tenant_row: TenantFacts
    compiled: CompiledTemplate
    source: MessageSource
    connection: PageConnection
    max_attempts: int
    error_threshold: float
    campaign_rate: float | None
    limiter: RateLimiter
    outcomes: list[Write] = field(default_factory=list)
    recent_failures: deque = field(default_factory=lambda: deque(maxlen=ERROR_WINDOW))
    stop: str | None = None  # why the slice stops early: "paused", "cancelled", "gone", "completed", ...
    throttled: SendResult | None = None  # the provider asked for a long wait: hold the page
    slowed: bool = False  # the provider throttled a send: slow the page down
    unreached: list[str] = field(default_factory=list)  # recipients of sends that did not reach them
    held: list[str] = field(default_factory=list)  # what this slice listed under its worker (heartbeat)
    page_fatal: SendResult | None = None
    booked_until: float = 0.0  # loop time of the last send slot this slice holds
    ready: deque = field(default_factory=deque)  # claimed and rendered, waiting for a send slot
    last_heartbeat: float = field(default_factory=time.monotonic)
    reslots: int = 0  # sends that woke too late for their slot and took a new one
    successor_sent: bool = False
    taken_over: bool = False  # the successor has started: it claims from now on, this slice drains
    start_number: int | None = None  # this chain's slices started so far, this one included (Redis)
    enqueue_next: Callable[[], Any] | None = None  # enqueues this chain's next slice (set by the actor)

    @classmethod
    def load(cls, campaign_id: int, generation: int, chain: int) -> Slice | None:
        def read() -> Slice | None:
            campaign = db.session.get(Campaign, campaign_id)
            if (
                campaign is None
                or campaign.state is not CampaignState.RUNNING
                or campaign.dispatch_generation != generation
            ):
                return None
            page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
            tenant_row = db.session.get(Tenant, campaign.tenant_id)
            if tenant_row is None or not tenant_row.is_active:
                db.session.commit()
                return None  # suspended: its campaigns were paused, and nothing sends meanwhile
            if page is None:
                lifecycle.fail_campaign(campaign_id, "The campaign's page was deleted.")
                return None
            source = MessageSource.of(campaign.message or {})
            config = current_app.config
            job = cls(
                campaign_id=campaign_id,
                tenant_id=campaign.tenant_id,
                generation=generation,
                chain=chain,
                settings=DispatchSettings.of(config),
                page=PageFacts(
                    page.id, page.kind, float(page.send_rate), page.daily_cap, page.delivery_policy
                ),
                tenant_row=TenantFacts(
                    tenant_row.id,
                    tenant_row.daily_message_quota,
                    float(tenant_row.max_send_rate),
                    tenant_row.timezone or "UTC",
                ),
                compiled=compile_template(source),
                source=source,
                connection=PageConnection(
                    kind=page.kind,
                    base_url=page.base_url,
                    credentials=page.credentials,
                    settings=dict(page.settings or {}),
                    allowed_hosts=allowed_private_hosts(config),
                ),
                max_attempts=campaign.max_attempts,
                error_threshold=campaign.error_threshold,
                campaign_rate=campaign.send_rate,
                limiter=rate_limiter(),
            )
            campaign.heartbeat_at = utcnow()
            db.session.commit()
            return job

        return with_db_retry(read, f"campaign {campaign_id}: loading")

    def check_control(self) -> None:
        """Has the campaign been paused, cancelled or handed to a newer generation? (And say we live.)"""

        def work():
            row = db.session.execute(
                select(Campaign.state, Campaign.dispatch_generation).where(Campaign.id == self.campaign_id)
            ).first()
            if time.monotonic() - self.last_heartbeat >= HEARTBEAT_EVERY and row is not None:
                self.last_heartbeat = time.monotonic()
                db.session.execute(
                    update(Campaign)
                    .where(Campaign.id == self.campaign_id, Campaign.dispatch_generation == self.generation)
                    .values(heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
            db.session.commit()
            return row

        row = with_db_retry(work, "checking the campaign")
        if row is None:
            self.stop = "gone"
        elif row.state is CampaignState.CANCELLED:
            self.stop = "cancelled"
        elif row.state is not CampaignState.RUNNING:
            self.stop = row.state.value
        elif row.dispatch_generation != self.generation:
            self.stop = "superseded"

    def nothing_claimable(self) -> float:
        """Nothing was claimable: complete the campaign, or say how long to wait for the next due one."""

        def work() -> tuple[int, int, datetime | None]:
            counts = db.session.execute(
                select(
                    func.count().filter(TABLE.c.state == DeliveryState.PENDING.value),
                    func.count().filter(TABLE.c.state == DeliveryState.IN_FLIGHT.value),
                    func.min(TABLE.c.due_at).filter(TABLE.c.state == DeliveryState.PENDING.value),
                ).where(
                    TABLE.c.campaign_id == self.campaign_id,
                    TABLE.c.state.in_([DeliveryState.PENDING.value, DeliveryState.IN_FLIGHT.value]),
                )
            ).one()
            db.session.commit()
            return counts[0], counts[1], counts[2]

        pending, in_flight, next_due = with_db_retry(work, "looking for work")
        if self.stop:
            return 0.0
        if pending == 0 and in_flight == 0:
            lifecycle.complete_campaign(self.campaign_id)
            self.stop = "completed"
            return 0.0
        if pending and next_due is not None:
            return max(0.05, min(1.0, (next_due - utcnow()).total_seconds()))
        return 0.25

    def send_successor(self) -> bool:
        """Enqueue this chain's next slice now; False when the broker cannot take it."""
        if self.enqueue_next is None:
            return False
        try:
            self.enqueue_next()
        except WorkersUnreachable:
            return False
        return True

    def hold(self, member: str, claim: bool = False) -> None:
        """List a lease (or the campaign) under this worker process, for the sweeper should it die; a
        lease (``claim``) also opens its record of sends handed to the HTTP client (``tasks.attempts``)."""
        self.held.append(member)
        prefix = current_app.config["REDIS_PREFIX"]
        try:
            with redis_client().pipeline(transaction=False) as pipe:
                heartbeat.hold(pipe, prefix, member)
                if claim:
                    attempts.open_claim(pipe, attempts.key(prefix, member))
                pipe.execute()
        except redis.RedisError:
            log.warning("campaign %s: lease not listed (it will run out instead)", self.campaign_id)

    def let_go(self) -> None:
        """The slice wrote or gave back everything it claimed: nothing of it is left to settle. The
        campaign stays listed under this process while it goes on (its next slice may wait here,
        prefetched, where only this listing tells the sweeper about it should the process die)."""
        held, self.held = self.held, []
        finished = self.stop not in (None, "error")
        running = heartbeat.running_member(self.tenant_id, self.campaign_id)
        settled = [member for member in held if member != running or finished]
        if not settled:
            return
        prefix = current_app.config["REDIS_PREFIX"]
        with contextlib.suppress(redis.RedisError), redis_client().pipeline(transaction=False) as pipe:
            heartbeat.let_go(pipe, prefix, *settled)
            pipe.delete(*(attempts.key(prefix, member) for member in settled))
            pipe.execute()

    @property
    def starts_key(self) -> str:
        prefix = current_app.config["REDIS_PREFIX"]
        return f"{prefix}:chain:{self.campaign_id}:{self.generation}:{self.chain}:starts"

    def mark_started(self) -> None:
        """Count this slice as started, for the slice it follows (which claims until then)."""
        try:
            pipe = redis_client().pipeline()
            pipe.incr(self.starts_key)
            pipe.pexpire(self.starts_key, 60_000)
            self.start_number = int(pipe.execute()[0])
        except redis.RedisError:
            self.start_number = None

    def successor_started(self) -> bool:
        """Has a later slice of this chain started? (Without Redis: assume so, and hand over now.)"""
        if self.start_number is None:
            return True
        try:
            return int(redis_client().get(self.starts_key) or 0) > self.start_number
        except redis.RedisError:
            return True

    def emit_progress(self) -> None:
        """Progress is best effort: a lost connection skips one event, never the slice's sends."""
        try:
            progress.emit_progress(self.campaign_id, self.tenant_id)
        except (OperationalError, DBAPIError) as exc:
            db.session.rollback()
            log.warning("campaign %s: progress skipped (%s)", self.campaign_id, exc.__class__.__name__)

    def after_slice(self) -> None:
        if self.stop == "completed":
            return
        # once stopped, the last word must get through the rate gate: browsers show it until the next change
        progress.emit_progress(self.campaign_id, self.tenant_id, force=self.stop is not None)
