"""Dispatch: send a running campaign's deliveries in time slices, under every limit, and write back.

One Dramatiq message runs one *slice* (a couple of seconds) of one *chain* of one campaign and
re-enqueues itself at the back of the queue, so campaigns share the workers fairly and pause or
cancel take effect between two checks (every 0.2 s). A campaign runs ``DISPATCH_CHAINS`` chains;
the limiter, not the number of chains or workers, sets the pace. A slice::

    reserve send slots (Redis, shared)  →  reserve daily quota + claim due deliveries with a lease
    (one PostgreSQL transaction, FOR UPDATE SKIP LOCKED, committed before any send)  →  render and
    send each at its slot with async I/O, at most DISPATCH_WINDOW claimed and unrecorded at once
    →  write outcomes in bulk (only rows still in flight)  →  emit progress  →  re-enqueue.

Chains carry the campaign's ``dispatch_generation``: the sweeper starts a new generation when a
campaign has no live work, and chains of an older one stop. A message delivered twice sends
nothing twice: only a committed claim sends, and a claim takes pending rows only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

import dramatiq
import redis
from flask import current_app
from sqlalchemy import and_, bindparam, func, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from tasks import heartbeat
from tasks.broker import WorkersUnreachable, actor, current_broker
from tasks.limits import Limit, RateLimiter, burst_allowance
from tasks.progress import emit_campaign_event
from tasks.providers import adapter_for
from tasks.providers.base import Outcome, OutgoingMessage, PageConnection, SendResult, TemplateRef
from tasks.providers.http import make_client
from tasks.providers.ssrf import UrlGuard, allowed_private_hosts
from tenants.campaigns import (
    RENDER_COLUMNS,
    Campaign,
    CampaignState,
    Delivery,
    DeliveryState,
    MessageSource,
    PauseReason,
    daily_limit_pause_detail,
    next_midnight,
    paused,
    quota_day,
    summary,
)
from tenants.contacts import Contact
from tenants.db import db, insert_ignoring_conflicts, utcnow
from tenants.models import Tenant
from tenants.pages import DeliveryPolicy, Page, PageState, ProviderKind
from tenants.scoping import tenant
from tenants.templating import CompiledTemplate, compile_template, contact_variables
from tenants.usage import TENANT_SCOPE, DailyUsage, count_activity, page_scope, room_today

log = logging.getLogger(__name__)
T = TypeVar("T")

RATE_MARGIN = 0.98  # pace a little under each limit: the provider sees our sends after some jitter
MAX_RESLOTS = 3
DISPATCH_CONNECTIONS = 200  # per worker thread: enough for thousands of sends/s at provider latencies
LOOKAHEAD = 0.6  # no claiming while the page's slots are taken this far ahead (by any slice)
BOOK_AHEAD = 0.1  # seconds of send slots a slice holds ahead; it books more as they run out
CHUNK_SECONDS = 0.025  # slots are booked a few at a time, so the slices of a page take turns closely
WARM_UP = (0.5, 0.5)  # a page idle for a second sends its first half second at half its rate
MAX_PASSES = 10  # times a slice may be passed on to spread a campaign's chains over worker processes
PASS_PAUSE = 0.1  # seconds a worker holds a slice it passes on
HANDOVER = 0.5  # seconds before a slice ends that it enqueues its successor (which then loads and claims)
OVERRUN = 2.0  # seconds past its end a slice keeps claiming while its successor has not started
TAKEOVER_EVERY = 0.05  # seconds between looks, after the hand-over, for the successor having started
TICK = 0.01  # seconds between turns of a slice's loop while it has sends to book or to finish
HEARTBEAT_EVERY = 1.0  # seconds between "this campaign has live dispatch" marks for the sweeper
CHECK_EVERY = 0.2  # seconds between looks at the campaign's state (pause within 1 s)
FLUSH_EVERY = 0.25  # seconds between bulk writes of outcomes
FLUSH_SIZE = 500
PROGRESS_EVERY_MS = 750  # at most a few progress events per second per campaign (each counts the deliveries)
THROTTLE_SLOWDOWN = (0.5, 0.2)  # a throttle halves the page's rate, which regains a fifth a second
THROTTLE_SETTLE = 3.0  # seconds after a slow-down during which further throttles do not slow more
HOLD_FROM = 5.0  # a provider asking this many seconds' wait or more holds the whole page back that long
LONG_THROTTLE = 30.0  # a cool-down longer than this pauses the page's campaigns
PAIR_INTERVAL = 6.0  # WhatsApp: one message to the same person per page every few seconds
ERROR_WINDOW, ERROR_MIN_SAMPLE = 100, 20
TABLE = Delivery.__table__
CONTACT_COLUMNS = (*RENDER_COLUMNS, Contact.opted_out)
WRITE_OUTCOME = (  # one row of outcomes (executemany), for databases without arrays
    update(TABLE)
    .where(TABLE.c.id == bindparam("b_id"), TABLE.c.state == DeliveryState.IN_FLIGHT.value)
    .values(
        state=bindparam("b_state"),
        attempts=bindparam("b_attempts"),
        due_at=bindparam("b_due_at"),
        provider_message_id=bindparam("b_provider_message_id"),
        error_code=bindparam("b_error_code"),
        error_text=bindparam("b_error_text"),
        sent_at=bindparam("b_sent_at"),
        retryable=bindparam("b_retryable"),
        lease_until=None,
    )
)
WRITE_OUTCOMES_POSTGRESQL = text(  # the same rows as arrays, one a column, and the day's activity
    """
    WITH written AS (
        UPDATE deliveries AS d
        SET state = v.state, attempts = v.attempts, due_at = v.due_at,
            provider_message_id = v.provider_message_id, error_code = v.error_code,
            error_text = v.error_text, sent_at = v.sent_at, retryable = v.retryable, lease_until = NULL
        FROM unnest(CAST(:b_id AS bigint[]), CAST(:b_state AS varchar[]), CAST(:b_attempts AS integer[]),
                    CAST(:b_due_at AS timestamptz[]), CAST(:b_provider_message_id AS varchar[]),
                    CAST(:b_error_code AS varchar[]), CAST(:b_error_text AS varchar[]),
                    CAST(:b_sent_at AS timestamptz[]), CAST(:b_retryable AS boolean[]))
             AS v(id, state, attempts, due_at, provider_message_id, error_code, error_text, sent_at,
                  retryable)
        WHERE d.id = v.id AND d.tenant_id = :tenant_id AND d.state = (SELECT 'in_flight')
        RETURNING d.id, d.state
    ), counted AS (
        INSERT INTO daily_activity AS a
            (tenant_id, day, campaign_id, page_id, channel, sent, delivered, read, failed, replied)
        SELECT :tenant_id, CAST(:day AS date), CAST(:campaign_id AS integer), CAST(:page_id AS integer),
               CAST(:channel AS varchar), count(*) FILTER (WHERE state = 'sent'), 0, 0,
               count(*) FILTER (WHERE state = 'failed'), 0
        FROM written
        HAVING count(*) FILTER (WHERE state IN ('sent', 'failed')) > 0
        ON CONFLICT (tenant_id, day, campaign_id)
        DO UPDATE SET sent = a.sent + EXCLUDED.sent, failed = a.failed + EXCLUDED.failed
    )
    SELECT id FROM written
    """
)
"""The state is compared with a subquery so that it cannot match the in-flight index's predicate: that
index keeps an entry for every row updated since the last vacuum, and a generic plan scanning it is
far slower than going by primary key (docs/decisions.md).

What the provider accepted and what failed is added to the day's activity (``tenants.usage``'s
``count_activity``, here written for this one statement) in the same round trip: a second statement
in the write's transaction made it longer, and more of them were cut when connections dropped."""


# --------------------------------------------------------------------------- settings and plumbing


@dataclass(frozen=True)
class DispatchSettings:
    slice_seconds: float
    window: int  # deliveries claimed and not yet recorded, per slice
    chains: int
    lease_seconds: float
    retry_base_seconds: float

    @classmethod
    def of(cls, config) -> DispatchSettings:
        return cls(
            slice_seconds=float(config["DISPATCH_SLICE_SECONDS"]),
            window=int(config["DISPATCH_WINDOW"]),
            chains=int(config["DISPATCH_CHAINS"]),
            lease_seconds=float(config["LEASE_SECONDS"]),
            retry_base_seconds=float(config["RETRY_BASE_SECONDS"]),
        )


def redis_client(app=None) -> redis.Redis:
    """The app's Redis client for limits and progress (not the broker's)."""
    app = app or current_app._get_current_object()
    client = app.extensions.get("crier.redis")
    if client is None:
        client = redis.Redis.from_url(
            app.config["REDIS_URL"], socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
        )
        app.extensions["crier.redis"] = client
    return client


def rate_limiter() -> RateLimiter:
    return RateLimiter(redis_client(), current_app.config["REDIS_PREFIX"], warm_up=WARM_UP)


def with_db_retry(work: Callable[[], T], what: str, attempts: int = 5) -> T:
    """Run ``work`` (which commits); on a lost connection or a lock error roll back and run it again."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except (OperationalError, DBAPIError) as exc:
            db.session.rollback()
            if attempt == attempts:
                raise
            log.warning("%s failed (%s); retrying", what, exc.__class__.__name__)
            time.sleep(min(2.0, 0.1 * 2**attempt))
    raise AssertionError("unreachable")


class SendLoop:
    """The one event loop of a worker process that every dispatch slice sends on.

    Slices arrive on several Dramatiq threads; they all run here, so a process keeps one HTTP
    connection pool and one loop instead of one per thread (less memory, no loops competing for
    the interpreter). A slice's coroutine runs with its Dramatiq thread's context (its app context
    and database session) while that thread waits for it.

    Shutting down is two steps: :meth:`wind_down` asks running slices to end now (they hand over to
    their successor as at the end of a slice), and :meth:`close`, once the Dramatiq threads are done,
    stops the loop; anything still on it then fails rather than leaving its thread waiting forever.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: dict[frozenset[str], Any] = {}
        self._waiting: set[concurrent.futures.Future] = set()
        self.winding_down = False
        self._chains: Counter[tuple[int, int]] = Counter()  # (campaign, chain) -> slices running here
        self._processes = (0.0, 1)  # (monotonic time read, live worker processes)

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed() or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="crier-send-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop, self._clients = loop, {}
            return self._loop

    def run(self, make_coroutine: Callable[[], Any]) -> Any:
        """Run the coroutine ``make_coroutine()`` makes on the send loop, in the caller's context."""
        loop = self._start()
        context = contextvars.copy_context()
        done: concurrent.futures.Future = concurrent.futures.Future()

        def begin() -> None:
            task = loop.create_task(make_coroutine(), context=context)

            def finished(task: asyncio.Task) -> None:
                if task.cancelled():
                    done.cancel()
                elif task.exception() is not None:
                    done.set_exception(task.exception())
                else:
                    done.set_result(task.result())

            task.add_done_callback(finished)

        with self._lock:
            self._waiting.add(done)
        try:
            loop.call_soon_threadsafe(begin)
            return done.result()
        finally:
            with self._lock:
                self._waiting.discard(done)

    def client(self, allowed: frozenset[str]):
        """The process's HTTP client for pages that may reach ``allowed`` (call on the send loop)."""
        client = self._clients.get(allowed)
        if client is None:
            client = self._clients[allowed] = make_client(
                guard=UrlGuard(allowed), max_connections=DISPATCH_CONNECTIONS
            )
        return client

    @contextlib.contextmanager
    def running(self, campaign_id: int, chain: int) -> Iterator[bool]:
        """Count a slice of ``chain`` as running in this process while the block runs; yields whether
        this process already ran its share of the campaign's other chains.

        Two chains in one process and none in another would leave one process sending at the full
        rate, late for its slots, while the other idles.
        """
        with self._lock:
            others = sum(
                1 for (campaign, running) in self._chains if campaign == campaign_id and running != chain
            )
            self._chains[campaign_id, chain] += 1
        try:
            crowded = bool(others) and others >= math.ceil(
                DispatchSettings.of(current_app.config).chains / self.live_processes()
            )
            yield crowded
        finally:
            with self._lock:
                self._chains[campaign_id, chain] -= 1
                if not self._chains[campaign_id, chain]:
                    del self._chains[campaign_id, chain]

    def live_processes(self) -> int:
        read_at, count = self._processes
        if time.monotonic() - read_at > 1.0:
            try:
                count = current_broker().live_processes()
            except redis.RedisError:
                count = 1
            self._processes = (time.monotonic(), count)
        return count

    def wind_down(self) -> None:
        """Ask every running slice to finish now (the worker is stopping)."""
        self.winding_down = True

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
            waiting, self._waiting = list(self._waiting), set()
        for done in waiting:  # a thread still waiting on a slice must not wait forever
            if not done.done():
                done.set_exception(RuntimeError("the send loop was closed"))
        if loop is None or loop.is_closed():
            return

        async def close_clients() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            for client in self._clients.values():
                await client.aclose()
            self._clients.clear()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_clients(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not loop.is_running():
            loop.close()


send_loop = SendLoop()


class ThreadResources(dramatiq.Middleware):
    """When the worker stops: end running slices at once, then close the send loop and its clients.

    Dramatiq waits for its threads only after ``before_worker_shutdown``, so the loop closes in
    ``after_worker_shutdown``; closing it earlier left the threads waiting on slices forever.
    """

    def before_worker_shutdown(self, broker, worker) -> None:
        send_loop.wind_down()

    def after_worker_shutdown(self, broker, worker) -> None:
        send_loop.close()


# --------------------------------------------------------------------------- enqueueing


def launch(campaign: Campaign) -> None:
    """Enqueue the dispatch chains of a campaign that is now running (its current generation).

    Raises :class:`WorkersUnreachable` when the broker is down; the sweeper starts them later.
    """
    chains = DispatchSettings.of(current_app.config).chains
    for chain in range(chains):
        dispatch_campaign.send(campaign.id, campaign.tenant_id, campaign.dispatch_generation, chain)


def launch_quietly(campaign: Campaign) -> str | None:
    """:func:`launch`, returning the reason instead of raising when the workers are unreachable."""
    try:
        launch(campaign)
    except WorkersUnreachable as exc:
        return str(exc)
    return None


@actor(queue_name="campaigns", max_retries=0, time_limit=15 * 60 * 1000)
def dispatch_campaign(campaign_id: int, tenant_id: int, generation: int, chain: int, passes: int = 0) -> None:
    """Run one slice of one chain of a campaign, then enqueue the next slice.

    A worker process already running its share of the campaign's chains passes the slice on
    (up to ``MAX_PASSES`` times), so that the chains spread over the worker processes.
    """
    with send_loop.running(campaign_id, chain) as crowded, tenant(db.session, tenant_id):
        if crowded and passes < MAX_PASSES:
            # wait a moment first: a consumer that just fetched polls again within milliseconds
            # and would win the message straight back; by then it backs off like the others
            time.sleep(PASS_PAUSE * random.uniform(0.5, 1.5))
            try:
                dispatch_campaign.send(campaign_id, tenant_id, generation, chain, passes + 1)
                return
            except WorkersUnreachable:
                pass  # run it here
        job = Slice.load(campaign_id, generation, chain)
        if job is None:
            return
        job.mark_started()
        job.hold(f"{tenant_id}:{campaign_id}:running")  # a dead worker's campaigns are relaunched at once
        try:
            go_on = send_loop.run(job.run)
        finally:
            db.session.rollback()
            job.let_go()
        if go_on:
            try:
                dispatch_campaign.send(campaign_id, tenant_id, generation, chain)
            except WorkersUnreachable:
                log.warning("campaign %s: could not re-enqueue; the sweeper will", campaign_id)


# --------------------------------------------------------------------------- one slice


@dataclass(slots=True)
class Claimed:
    id: int
    address: str
    attempts: int
    day: date
    deadline: float  # monotonic time after which it must not be sent (its lease is running out)
    message: OutgoingMessage | None = None
    problem: SendResult | None = None
    started: bool = False
    reslots: int = 0


@dataclass(slots=True)
class Write:
    """What to write for one delivery."""

    id: int
    state: DeliveryState
    attempts: int
    due_at: datetime | None = None
    provider_message_id: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    refund: date | None = None  # the quota day to give the message back to
    retryable: bool = False  # a failure worth resending later (its retries ran out)


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
class Slice:
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

    # ---- loading

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
                fail_campaign(campaign_id, "The campaign's page was deleted.")
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

    @functools.cached_property
    def limits(self) -> list[Limit]:
        limits = [
            Limit(f"page:{self.page.id}", self.page.send_rate * RATE_MARGIN),
            Limit(f"tenant:{self.tenant_id}", self.tenant_row.max_send_rate * RATE_MARGIN),
        ]
        if self.campaign_rate:
            limits.append(Limit(f"campaign:{self.campaign_id}", self.campaign_rate * RATE_MARGIN))
        return limits

    @functools.cached_property
    def max_lateness(self) -> float:
        """How late a send may go out for its slot: half the burst the slowest limit tolerates, as
        ``tasks.limits`` guarantees its windows for (the limiter keeps the other half). Pacing
        ``RATE_MARGIN`` under the limit leaves room for the provider's side of the jitter (the
        whole burst here overshot a busy second: docs/decisions.md)."""
        rate = min(limit.rate for limit in self.limits)
        return burst_allowance(rate) / (2 * rate)

    def claim_size(self) -> int:
        """About a quarter second of sending at the current pace (at least one)."""
        rate = min(limit.rate for limit in self.limits)
        with contextlib.suppress(redis.RedisError):
            rate *= self.limiter.current_factor(f"page:{self.page.id}")
        return max(1, math.ceil(rate * 0.25))

    async def redis_call(self, work: Callable[[], T], what: str, deadline: float) -> T | None:
        """``work()`` against Redis, waiting (without blocking other sends) while Redis is unreachable;
        None once ``deadline`` (monotonic) has passed."""
        delay = 0.05
        while True:
            try:
                return work()
            except redis.RedisError as exc:
                if time.monotonic() + delay > deadline or self.stop:
                    log.warning(
                        "%s: Redis unavailable (%s); giving the work back", what, exc.__class__.__name__
                    )
                    return None
                log.info("%s: Redis unavailable (%s); waiting", what, exc.__class__.__name__)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    # ---- the loop

    async def run(self) -> bool:
        """Send for one slice; True when the chain should go on."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        adapter = adapter_for(self.connection, send_loop.client(self.connection.allowed_hosts))
        deadline = loop.time() + settings.slice_seconds
        tasks: dict[asyncio.Task, Claimed] = {}
        last_check = last_flush = last_takeover = 0.0
        idle_until = 0.0
        handed_over = False
        try:
            while True:
                now = loop.time()
                if now - last_check >= CHECK_EVERY:
                    last_check = now
                    await asyncio.to_thread(self.check_control)
                if self.stop or self.page_fatal:
                    break
                if send_loop.winding_down or now >= deadline - min(HANDOVER, settings.slice_seconds / 4):
                    # the next slice gets ready while this one still sends, so the page's slots
                    # keep being booked across the hand-over; this one claims until it has started
                    # (passing it to another worker process may take a while)
                    if not handed_over:
                        handed_over = True  # once: if the broker is down, the actor tries again at the end
                        self.successor_sent = await asyncio.to_thread(self.send_successor)
                    if self.successor_sent and not self.taken_over and now - last_takeover >= TAKEOVER_EVERY:
                        last_takeover = now
                        self.taken_over = await asyncio.to_thread(self.successor_started)
                    ended = now >= deadline and (self.taken_over or not self.successor_sent)
                    drained = self.taken_over and not (tasks or self.ready)
                    if ended or drained or now >= deadline + OVERRUN or send_loop.winding_down:
                        break
                # the window counts every claimed delivery whose outcome is not yet written
                room = settings.window - len(tasks) - len(self.ready) - len(self.outcomes)
                claiming = not self.taken_over
                if claiming and room > 0 and now >= idle_until and len(self.ready) <= self.chunk_size:
                    backlog = self.shared_backlog()
                    if backlog >= LOOKAHEAD:  # others hold the next slots: come back when they are near
                        idle_until = now + min(backlog - LOOKAHEAD / 2, CHECK_EVERY)
                        continue
                    claimed = await asyncio.to_thread(self.claim, min(room, self.claim_size()))
                    if claimed:
                        await self.schedule(claimed, adapter, tasks)
                    elif not tasks:
                        wait = await asyncio.to_thread(self.nothing_claimable)
                        if self.stop:
                            break
                        idle_until = loop.time() + wait
                    else:
                        idle_until = loop.time() + 0.1
                # outcomes count against the window: write them once they fill half of it
                flush_at = min(FLUSH_SIZE, max(1, settings.window // 2))
                if self.outcomes and (len(self.outcomes) >= flush_at or now - last_flush >= FLUSH_EVERY):
                    last_flush = now
                    await self.flush()
                await self.book_ready(adapter, tasks)
                if tasks or self.ready:
                    await asyncio.sleep(TICK)
                else:
                    await asyncio.sleep(min(0.05, max(0.0, idle_until - loop.time())) or TICK)
        except Exception:
            log.exception("campaign %s: the slice failed; giving back what it had not sent", self.campaign_id)
            self.stop = self.stop or "error"
        try:
            await self.drain(tasks, adapter)
            await self.flush()
        finally:
            await adapter.aclose()
        if self.stop == "error":
            return not self.successor_sent  # the next slice starts afresh
        if self.reslots:
            log.info("campaign %s: %s sends woke too late and took new slots", self.campaign_id, self.reslots)
        await asyncio.to_thread(self.after_slice)  # counts the deliveries: not on the loop others send on
        return self.stop is None and self.page_fatal is None and not self.successor_sent

    async def drain(self, tasks: dict[asyncio.Task, Claimed], adapter) -> None:
        """Let the sends this slice holds slots for finish, still writing outcomes and watching for
        pause or cancel; once the campaign stops, give back what has not started."""
        loop = asyncio.get_running_loop()
        last_check = last_flush = loop.time()
        while tasks or self.ready:
            if self.stop or self.page_fatal:
                holding = list(tasks.items())
                for task, item in holding:
                    if not item.started:
                        task.cancel()
                await asyncio.gather(*(task for task, _ in holding), return_exceptions=True)
                waiting = [item for _, item in holding] + list(self.ready)
                self.ready.clear()
                unsent = {item.id: item for item in waiting if not item.started}
                self.give_back(list(unsent.values()))
                return
            await self.book_ready(adapter, tasks)
            await asyncio.sleep(TICK)
            if loop.time() - last_flush >= FLUSH_EVERY:
                last_flush = loop.time()
                await self.flush()
            if loop.time() - last_check >= CHECK_EVERY:
                last_check = loop.time()
                await asyncio.to_thread(self.check_control)

    def send_successor(self) -> bool:
        """Enqueue this chain's next slice now; False when the broker cannot take it."""
        try:
            dispatch_campaign.send(self.campaign_id, self.tenant_id, self.generation, self.chain)
        except WorkersUnreachable:
            return False
        return True

    def hold(self, member: str) -> None:
        """List a lease (or the campaign) under this worker process, for the sweeper should it die."""
        self.held.append(member)
        try:
            heartbeat.hold(redis_client(), current_app.config["REDIS_PREFIX"], member)
        except redis.RedisError:
            log.warning("campaign %s: lease not listed (it will run out instead)", self.campaign_id)

    def let_go(self) -> None:
        """The slice wrote or gave back everything it claimed: nothing of it is left to settle."""
        held, self.held = self.held, []
        with contextlib.suppress(redis.RedisError):
            heartbeat.let_go(redis_client(), current_app.config["REDIS_PREFIX"], *held)

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

    def shared_backlog(self) -> float:
        try:
            return self.limiter.backlog([limit.key for limit in self.limits])
        except redis.RedisError:
            return 0.0  # reserve() will wait for Redis

    # ---- claiming

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

    def claim(self, wanted: int) -> list[Claimed]:
        """Reserve quota and claim up to ``wanted`` due deliveries with a lease, committed before sending."""
        loop_now = time.monotonic()
        # The lease end doubles as this claim's token (to the microsecond): if the connection dies
        # after the commit went through, the retry finds the rows it already holds instead of
        # claiming others and leaving these to expire as unknown.
        token = utcnow() + timedelta(
            seconds=self.settings.lease_seconds, microseconds=random.randrange(1, 10**6)
        )

        tries = 0

        def work() -> list[Claimed]:
            nonlocal tries
            tries += 1
            now = utcnow()
            day = quota_day(self.tenant_row, now)
            rows = []
            if tries > 1:  # the last try may have committed before its connection died
                rows = db.session.execute(
                    select(TABLE.c.id, TABLE.c.contact_id, TABLE.c.address, TABLE.c.attempts).where(
                        TABLE.c.tenant_id == self.tenant_id,
                        TABLE.c.campaign_id == self.campaign_id,
                        TABLE.c.state == DeliveryState.IN_FLIGHT.value,
                        TABLE.c.lease_until == token,
                    )
                ).all()
            if not rows:
                rows = self.claim_rows(now, day, wanted, token)
            contacts = {}
            contact_ids = [r.contact_id for r in rows if r.contact_id is not None]
            if contact_ids:  # (the hot statements run on the connection, so they name the tenant)
                contacts = {
                    c.id: c
                    for c in db.session.connection().execute(
                        select(*CONTACT_COLUMNS).where(
                            Contact.tenant_id == self.tenant_id, Contact.id.in_(contact_ids)
                        )
                    )
                }
            db.session.commit()
            margin = min(20.0, self.settings.lease_seconds / 2)
            deadline = loop_now + self.settings.lease_seconds - margin
            return [
                self.prepare(Claimed(r.id, r.address, r.attempts, day, deadline), contacts.get(r.contact_id))
                for r in rows
            ]

        claimed = with_db_retry(work, f"campaign {self.campaign_id}: claiming")
        if claimed:
            self.hold(f"{self.tenant_id}:{self.campaign_id}:{token.isoformat()}")
        else:
            exhausted = self.daily_limit_reached()
            if exhausted is not None and not self.tenant_has_sends_in_flight():
                self.pause_for_daily_limit(exhausted)  # (while sends are in flight, some may come back)
        return claimed

    def claim_rows(self, now: datetime, day: date, wanted: int, token: datetime) -> list:
        """Reserve quota, then lease up to that many due deliveries with ``token`` as their lease end."""
        allowed = self.reserve_quota(day, wanted)
        if allowed == 0:
            return []
        due = (
            select(TABLE.c.id)
            .where(
                TABLE.c.tenant_id == self.tenant_id,
                TABLE.c.campaign_id == self.campaign_id,
                TABLE.c.state == DeliveryState.PENDING.value,
                TABLE.c.due_at <= now,
            )
            .order_by(TABLE.c.due_at, TABLE.c.id)
            .limit(allowed)
            .with_for_update(skip_locked=True)
            .cte("due")  # a CTE runs once; an IN (subquery) may be re-run per row and claim too many
        )
        rows = (
            db.session.connection()
            .execute(
                update(TABLE)
                .where(TABLE.c.id == due.c.id, TABLE.c.state == DeliveryState.PENDING.value)
                .values(state=DeliveryState.IN_FLIGHT.value, lease_until=token, attempts=TABLE.c.attempts + 1)
                .returning(TABLE.c.id, TABLE.c.contact_id, TABLE.c.address, TABLE.c.attempts)
            )
            .all()
        )
        if len(rows) < allowed:
            self.add_usage(day, len(rows) - allowed)
        return rows

    def tenant_has_sends_in_flight(self) -> bool:
        def work() -> bool:
            found = db.session.scalar(
                select(TABLE.c.id)
                .where(TABLE.c.tenant_id == self.tenant_id, TABLE.c.state == DeliveryState.IN_FLIGHT.value)
                .limit(1)
            )
            db.session.commit()
            return found is not None

        return with_db_retry(work, "looking for sends in flight")

    def reserve_quota(self, day: date, wanted: int) -> int:
        """Lock today's usage rows (tenant, then page) and add what may be sent; returns that."""
        scopes = [(TENANT_SCOPE, self.tenant_row.daily_message_quota)]
        if self.page.daily_cap is not None:
            scopes.append((page_scope(self.page.id), self.page.daily_cap))
        allowed = wanted
        for scope, limit in scopes:
            used = self._usage_row(scope, day)
            allowed = min(allowed, max(0, limit - used))
        if allowed:
            self.add_usage(day, allowed)
        return allowed

    def _usage_row(self, scope: str, day: date) -> int:
        usage = DailyUsage.__table__
        key = and_(usage.c.tenant_id == self.tenant_id, usage.c.scope == scope, usage.c.day == day)
        used = db.session.scalar(select(usage.c.used).where(key).with_for_update())
        if used is None:
            insert = insert_ignoring_conflicts(usage).values(
                tenant_id=self.tenant_id, scope=scope, day=day, used=0
            )
            db.session.execute(insert)
            used = db.session.scalar(select(usage.c.used).where(key).with_for_update()) or 0
        return used

    def add_usage(self, day: date, count: int) -> None:
        if not count:
            return
        usage = DailyUsage.__table__
        scopes = [TENANT_SCOPE] + ([page_scope(self.page.id)] if self.page.daily_cap is not None else [])
        db.session.execute(
            update(usage)
            .where(usage.c.tenant_id == self.tenant_id, usage.c.scope.in_(scopes), usage.c.day == day)
            .values(
                used=func.max(usage.c.used + count, 0)
                if db.engine.dialect.name == "sqlite"
                else func.greatest(usage.c.used + count, 0)
            )
        )

    def daily_limit_reached(self) -> PauseReason | None:
        """Which daily limit stops this campaign today: the tenant's quota, the page's cap, or none."""

        def reached() -> PauseReason | None:
            room = room_today(self.tenant_row, self.page)
            db.session.commit()
            if room.quota_left == 0:
                return PauseReason.QUOTA
            return PauseReason.PAGE_CAP if room.cap_left == 0 else None

        return with_db_retry(reached, "reading the quota")

    def prepare(self, item: Claimed, contact: Any) -> Claimed:
        """Render the message for one claimed delivery (or note why it cannot be sent)."""
        if contact is not None and contact.opted_out:
            item.problem = SendResult(Outcome.PERMANENT, code="opted_out", detail="the contact opted out")
            return item
        rendered = self.compiled.render(contact_variables(contact) if contact is not None else {})
        if not rendered.ok:
            reason = (
                f"missing {', '.join(sorted(rendered.missing))}"
                if rendered.missing
                else rendered.too_long or str(rendered.problems[0])
            )
            code = "missing_variable" if rendered.missing else "render_error"
            item.problem = SendResult(Outcome.PERMANENT, code=code, detail=reason[:500])
            return item
        template = None
        if self.source.whatsapp_template:
            template = TemplateRef(
                self.source.whatsapp_template,
                self.source.whatsapp_language or "en",
                rendered.whatsapp_parameters,
            )
        item.message = OutgoingMessage(
            reference=str(item.id),
            recipient=item.address,
            text=rendered.text,
            subject=rendered.subject,
            html=rendered.html,
            media_url=self.source.media_url,
            template=template,
        )
        return item

    async def schedule(self, claimed: list[Claimed], adapter, tasks: dict[asyncio.Task, Claimed]) -> None:
        """Give each sendable delivery a slot from the shared limiter and start its task."""
        sendable = [item for item in claimed if item.problem is None]
        for item in claimed:
            if item.problem is not None:
                self.record(item, item.problem)
        if not sendable:
            return
        deadline = min(item.deadline for item in sendable)
        if self.page.kind is ProviderKind.WHATSAPP:
            addresses = [item.address for item in sendable]
            waits = await self.redis_call(
                lambda: self.limiter.pace_recipients(f"page:{self.page.id}", addresses, PAIR_INTERVAL),
                "pacing recipients",
                deadline,
            )
            if waits is None:
                return self.give_back(sendable)
            for item in sendable:
                if waits.get(item.address, 0.0) > 0:
                    self.release(item, due_in=waits[item.address])
            sendable = [item for item in sendable if waits.get(item.address, 0.0) <= 0]
        self.ready.extend(sendable)

    @functools.cached_property
    def chunk_size(self) -> int:
        """Slots booked at a time: ``CHUNK_SECONDS`` of the slowest limit (at least one)."""
        return max(1, math.ceil(min(limit.rate for limit in self.limits) * CHUNK_SECONDS))

    async def book_ready(self, adapter, tasks: dict[asyncio.Task, Claimed]) -> None:
        """Book slots, a chunk at a time, for waiting deliveries until ``BOOK_AHEAD`` seconds are held.

        Small chunks interleave the slices (and worker processes) of a page: each sends its share
        evenly instead of the whole rate in turns, which a busy process could not keep up with.
        """
        loop = asyncio.get_running_loop()
        while self.ready and self.booked_until - loop.time() < BOOK_AHEAD:
            chunk = [self.ready.popleft() for _ in range(min(self.chunk_size, len(self.ready)))]
            await self.book(chunk, adapter, tasks)

    async def book(self, sendable: list[Claimed], adapter, tasks: dict[asyncio.Task, Claimed]) -> None:
        """Reserve consecutive send slots for these deliveries (one Redis call) and start their tasks."""
        deadline = min(item.deadline for item in sendable)
        limits = self.limits
        reservation = await self.redis_call(
            lambda: self.limiter.reserve(limits, len(sendable)), "reserving send slots", deadline
        )
        if reservation is None:
            return self.give_back(sendable)
        loop = asyncio.get_running_loop()
        start = loop.time()
        delays = reservation.delays()
        self.booked_until = max(self.booked_until, start + delays[-1])
        for item, delay in zip(sendable, delays, strict=True):
            task = loop.create_task(self.send_at(start + delay, item, adapter))
            tasks[task] = item
            task.add_done_callback(tasks.pop)

    def give_back(self, items: list[Claimed]) -> None:
        cancelled = self.stop == "cancelled"
        for item in items:
            item.started = True
            self.release(item, cancelled=cancelled)

    async def send_at(self, at: float, item: Claimed, adapter) -> None:
        """Wait for the slot, then send (unless the campaign stopped, the page cooled down or the lease
        is running out: then the delivery is given back untouched).

        A send that wakes up too late for its slot (a busy machine) takes a new slot instead: late
        sends bunched with punctual ones would exceed the rate in some 1-second window.
        """
        loop = asyncio.get_running_loop()
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stopping = self.stop or self.page_fatal or self.throttled
        if not stopping and loop.time() - at > self.max_lateness and item.reslots < MAX_RESLOTS:
            item.reslots += 1
            self.reslots += 1
            self.ready.appendleft(item)  # first in line for the next chunk of slots
            return
        if self.stop or self.page_fatal or self.throttled or time.monotonic() > item.deadline:
            self.give_back([item])
            return
        item.started = True
        result = await adapter.send(item.message)
        self.record(item, result)

    # ---- outcomes

    def release(self, item: Claimed, due_in: float = 0.0, cancelled: bool = False) -> None:
        """Give a claimed delivery back untouched: its attempt and its quota are not spent."""
        if cancelled:
            self.outcomes.append(
                Write(
                    item.id,
                    DeliveryState.CANCELLED,
                    item.attempts - 1,
                    error_text="cancelled",
                    refund=item.day,
                )
            )
            return
        self.outcomes.append(
            Write(
                item.id,
                DeliveryState.PENDING,
                item.attempts - 1,
                due_at=utcnow() + timedelta(seconds=due_in),
                refund=item.day,
            )
        )

    def record(self, item: Claimed, result: SendResult) -> None:
        outcome = result.outcome
        now = utcnow()
        if outcome is Outcome.SENT:
            self.outcomes.append(
                Write(
                    item.id, DeliveryState.SENT, item.attempts, provider_message_id=result.provider_message_id
                )
            )
            self.recent_failures.append(False)
            return
        code, text = (result.code or "")[:50] or None, (result.detail or "")[:500] or None
        if outcome is not Outcome.RECIPIENT_PACED and not result.maybe_delivered:
            self.unreached.append(item.address)  # its retry need not wait out the pair interval
        if outcome is Outcome.THROTTLED:
            # a short wait is that message's: the page only slows down (after_flush); a long one holds
            # the page, and the sends booked meanwhile are given back
            if (result.retry_after or 0) >= HOLD_FROM:
                if self.throttled is None or result.retry_after > (self.throttled.retry_after or 0):
                    self.throttled = result
            else:
                self.slowed = True
            self.release_with_error(item, result.retry_after or 1.0, code, text)
        elif outcome is Outcome.RECIPIENT_PACED:
            self.release_with_error(item, result.retry_after or PAIR_INTERVAL, code, text)
        elif outcome is Outcome.PAGE_FATAL:
            self.page_fatal = self.page_fatal or result
            self.release_with_error(item, 0.0, code, text)
        elif outcome is Outcome.PERMANENT:
            self.fail(item, code, text)
        elif result.maybe_delivered and self.page.delivery_policy is not DeliveryPolicy.AT_LEAST_ONCE:
            self.outcomes.append(
                Write(
                    item.id,
                    DeliveryState.UNKNOWN,
                    item.attempts,
                    error_code=code,
                    error_text=(f"may have been delivered: {text or 'no answer'}")[:500],
                )
            )
        elif item.attempts >= self.max_attempts:
            detail = f"gave up after {item.attempts} attempts: {text or 'no detail'}"[:500]
            self.fail(item, code, detail, retryable=True)
        else:
            backoff = self.settings.retry_base_seconds * 2 ** (item.attempts - 1) * random.uniform(0.5, 1.5)
            wait = result.retry_after if result.retry_after is not None else min(300.0, backoff)
            self.outcomes.append(
                Write(
                    item.id,
                    DeliveryState.PENDING,
                    item.attempts,
                    due_at=now + timedelta(seconds=wait),
                    error_code=code,
                    error_text=text,
                    refund=item.day,
                )
            )

    def release_with_error(self, item: Claimed, due_in: float, code: str | None, text: str | None) -> None:
        self.outcomes.append(
            Write(
                item.id,
                DeliveryState.PENDING,
                item.attempts - 1,
                due_at=utcnow() + timedelta(seconds=due_in),
                error_code=code,
                error_text=text,
                refund=item.day,
            )
        )

    def fail(self, item: Claimed, code: str | None, text: str | None, retryable: bool = False) -> None:
        self.outcomes.append(
            Write(
                item.id,
                DeliveryState.FAILED,
                item.attempts,
                error_code=code,
                error_text=text,
                refund=item.day,
                retryable=retryable,
            )
        )
        self.recent_failures.append(True)

    async def flush(self) -> None:
        """Write every outcome recorded so far, off the event loop so sends keep their slots."""
        if self.outcomes:
            outcomes, self.outcomes = self.outcomes, []
            await asyncio.to_thread(self.write, outcomes)

    def write(self, outcomes: list[Write]) -> None:
        """Write outcomes in one transaction (only rows still in flight), then act on what they say."""

        def work() -> None:
            # only rows still in flight are written and refunded: after a lost commit acknowledgement
            # the retry finds them written and gives nothing back twice
            held = self._write_rows(outcomes, utcnow())
            refunds: dict[date, int] = {}
            for o in outcomes:
                if o.refund is not None and o.id in held:
                    refunds[o.refund] = refunds.get(o.refund, 0) + 1
            for day, count in refunds.items():
                self.add_usage(day, -count)
            db.session.commit()

        # outcomes are what a lost write turns into "unknown": they get the longest retries (about 9 s)
        with_db_retry(work, f"campaign {self.campaign_id}: recording outcomes", attempts=8)
        self.after_flush()

    def activity_key(self, now: datetime) -> dict[str, Any]:
        """Where this slice's outcomes are counted in the daily activity (charts, usage)."""
        return {
            "tenant_id": self.tenant_id,
            "day": quota_day(self.tenant_row, now),
            "campaign_id": self.campaign_id,
            "page_id": self.page.id,
            "channel": self.page.kind.value,
        }

    def _write_rows(self, outcomes: list[Write], now: datetime) -> set[int]:
        """Update the rows of ``outcomes`` still in flight and count them in the day's activity; their ids."""
        rows = [
            {
                "b_id": o.id,
                "b_state": o.state.value,
                "b_attempts": o.attempts,
                "b_due_at": o.due_at or now,
                "b_provider_message_id": o.provider_message_id,
                "b_error_code": o.error_code,
                "b_error_text": o.error_text,
                "b_sent_at": now if o.state is DeliveryState.SENT else None,
                "b_retryable": o.retryable,
            }
            for o in outcomes
        ]
        connection = db.session.connection()
        if connection.dialect.name == "postgresql":
            # one statement over arrays (a column each): one round trip for the whole batch
            columns = {name: [row[name] for row in rows] for name in rows[0]}
            return set(
                connection.execute(WRITE_OUTCOMES_POSTGRESQL, {**self.activity_key(now), **columns}).scalars()
            )
        held = set(
            connection.execute(
                select(TABLE.c.id)
                .where(
                    TABLE.c.tenant_id == self.tenant_id,
                    TABLE.c.id.in_([o.id for o in outcomes]),
                    TABLE.c.state == DeliveryState.IN_FLIGHT.value,
                )
                .with_for_update()
            ).scalars()
        )
        if held:
            connection.execute(WRITE_OUTCOME, [row for row in rows if row["b_id"] in held])
            states = [o.state for o in outcomes if o.id in held]
            count_activity(
                [
                    {
                        **self.activity_key(now),
                        "sent": states.count(DeliveryState.SENT),
                        "failed": states.count(DeliveryState.FAILED),
                    }
                ]
            )
        return held

    def after_flush(self) -> None:
        if self.unreached and self.page.kind is ProviderKind.WHATSAPP:
            unreached, self.unreached = self.unreached, []
            try:
                self.limiter.unpace_recipients(f"page:{self.page.id}", unreached)
            except redis.RedisError:
                log.warning("page %s: pacing of %s recipients not cleared", self.page.id, len(unreached))
        if self.throttled is not None or self.slowed:
            self.cool_down(self.throttled)
            self.throttled, self.slowed = None, False
        if self.page_fatal is not None:
            fatal, self.page_fatal = self.page_fatal, None
            self.disable_page(fatal)
        failures = self.recent_failures
        if len(failures) >= ERROR_MIN_SAMPLE and sum(failures) / len(failures) >= self.error_threshold:
            share = sum(failures) / len(failures)
            pause_campaigns(
                [self.campaign_id],
                PauseReason.ERROR_THRESHOLD,
                detail=f"{share:.0%} of the last {len(failures)} sends failed",
            )
            self.stop = "paused"
        self.emit_progress()

    def cool_down(self, result: SendResult | None) -> None:
        """Slow the page down after throttling (once per settling period: sends already under way when
        the provider first objects get throttled too); when the provider asked for a long wait
        (``result``), hold every slot of the page back that long, or pause its campaigns."""
        wait = result.retry_after if result is not None else 0.0
        key = f"page:{self.page.id}"
        try:
            if wait:
                self.limiter.cool_down(key, wait)
            gate = f"{current_app.config['REDIS_PREFIX']}:slowed:{key}"
            if redis_client().set(gate, b"1", nx=True, px=int(THROTTLE_SETTLE * 1000)):
                self.limiter.slow_down(key, *THROTTLE_SLOWDOWN)
        except redis.RedisError:
            log.warning("page %s: could not record the throttle in Redis", self.page.id)
        if wait > LONG_THROTTLE:
            until = utcnow() + timedelta(seconds=wait)

            def work() -> None:
                page = db.session.get(Page, self.page.id)
                page.state, page.throttled_until = PageState.THROTTLED, until
                db.session.commit()

            with_db_retry(work, "marking the page throttled")
            pause_campaigns(
                running_campaigns_of(self.page.id),
                PauseReason.PAGE_THROTTLED,
                resume_at=until,
                detail=f"{result.code or ''} {result.detail or ''}".strip()[:500],
            )

    def disable_page(self, result: SendResult) -> None:
        reason = f"The provider refused the page: {result.code or ''} {result.detail or ''}".strip()[:500]

        def work() -> None:
            page = db.session.get(Page, self.page.id)
            page.state, page.disabled_reason = PageState.DISABLED, reason
            db.session.commit()

        with_db_retry(work, "disabling the page")
        pause_campaigns(running_campaigns_of(self.page.id), PauseReason.PAGE_FAILING, detail=reason)
        self.stop = "paused"

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
            complete_campaign(self.campaign_id)
            self.stop = "completed"
            return 0.0
        if pending and next_due is not None:
            return max(0.05, min(1.0, (next_due - utcnow()).total_seconds()))
        return 0.25

    def pause_for_daily_limit(self, reason: PauseReason) -> None:
        limit = self.tenant_row.daily_message_quota if reason is PauseReason.QUOTA else self.page.daily_cap
        pause_campaigns(
            [self.campaign_id],
            reason,
            resume_at=next_midnight(self.tenant_row),
            detail=daily_limit_pause_detail(reason, limit, self.tenant_row.timezone),
        )
        self.stop = "paused"

    def emit_progress(self) -> None:
        """Progress is best effort: a lost connection skips one event, never the slice's sends."""
        try:
            emit_progress(self.campaign_id, self.tenant_id)
        except (OperationalError, DBAPIError) as exc:
            db.session.rollback()
            log.warning("campaign %s: progress skipped (%s)", self.campaign_id, exc.__class__.__name__)

    def after_slice(self) -> None:
        if self.stop == "completed":
            return
        # once stopped, the last word must get through the rate gate: browsers show it until the next change
        emit_progress(self.campaign_id, self.tenant_id, force=self.stop is not None)


# --------------------------------------------------------------------------- campaign-wide changes


def running_campaigns_of(page_id: int) -> list[int]:
    return list(
        db.session.scalars(
            select(Campaign.id).where(Campaign.page_id == page_id, Campaign.state == CampaignState.RUNNING)
        )
    )


def _move_running(campaign_ids: list[int], event: str, what: str, **values: Any) -> list[int]:
    """Move those of ``campaign_ids`` still running (race-safe), tell their browsers; the ids moved."""
    if not campaign_ids:
        return []

    def work() -> list[int]:
        moved = list(
            db.session.scalars(
                update(Campaign)
                .where(Campaign.id.in_(campaign_ids), Campaign.state == CampaignState.RUNNING)
                .values(**values)
                .returning(Campaign.id)
                .execution_options(synchronize_session=False)
            )
        )
        db.session.commit()
        return moved

    moved = with_db_retry(work, what)
    for campaign_id in moved:
        emit_state(campaign_id, event)
    return moved


def pause_campaigns(
    campaign_ids: list[int], reason: PauseReason, resume_at: datetime | None = None, detail: str | None = None
) -> list[int]:
    """Pause those still running; returns the ids paused."""
    return _move_running(
        campaign_ids,
        "campaign:paused",
        "pausing campaigns",
        **paused(reason, resume_at=resume_at, detail=detail),
    )


def complete_campaign(campaign_id: int) -> bool:
    return bool(
        _move_running(
            [campaign_id],
            "campaign:completed",
            "completing the campaign",
            state=CampaignState.COMPLETED,
            finished_at=utcnow(),
            paused_reason=None,
        )
    )


def fail_campaign(campaign_id: int, detail: str) -> None:
    _move_running(
        [campaign_id],
        "campaign:failed",
        "failing the campaign",
        state=CampaignState.FAILED,
        finished_at=utcnow(),
        state_detail=detail[:500],
    )


# --------------------------------------------------------------------------- progress


def campaign_summary(campaign_id: int) -> dict[str, Any] | None:
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        return None
    db.session.refresh(campaign)
    return summary(campaign)


def _rate_and_eta(campaign_id: int, data: dict[str, Any]) -> None:
    """Add the current rate (messages/s over the last few seconds) and the ETA, from samples in Redis."""
    client = redis_client()
    key = f"{current_app.config['REDIS_PREFIX']}:progress:{campaign_id}:samples"
    now = time.time()
    processed = data["processed"]
    pipe = client.pipeline()
    pipe.rpush(key, f"{now:.3f}:{processed}")
    pipe.ltrim(key, -20, -1)
    pipe.expire(key, 600)
    pipe.lrange(key, 0, -1)
    samples = [tuple(map(float, s.decode().split(":"))) for s in pipe.execute()[-1]]
    recent = [s for s in samples if now - s[0] <= 5.0] or samples[-1:]
    first = recent[0]
    elapsed = now - first[0]
    rate = (processed - first[1]) / elapsed if elapsed >= 0.3 else 0.0
    data["rate"] = round(max(rate, 0.0), 1)
    remaining = data["pending"] + data["in_flight"]
    data["eta_seconds"] = round(remaining / rate) if rate > 0 and data["state"] == "running" else None
    data["held_back"] = (
        _held_back_by_daily_limit(campaign_id, data["pending"]) if data["state"] == "running" else 0
    )
    if data["held_back"]:
        data["eta_seconds"] = None  # the rest waits for the quota day to roll over, not for the rate


def _held_back_by_daily_limit(campaign_id: int, pending: int) -> int:
    """Of the campaign's pending messages, how many today's quota or the page's cap leave for later days."""
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or not pending:
        return 0
    tenant_row = db.session.get(Tenant, campaign.tenant_id)
    page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
    held = max(0, pending - room_today(tenant_row, page).left)
    db.session.commit()
    return held


def emit_progress(campaign_id: int, tenant_id: int, force: bool = False) -> None:
    """``campaign:progress`` to the tenant's and the campaign's rooms, at most a few times a second."""
    try:
        client = redis_client()
        key = f"{current_app.config['REDIS_PREFIX']}:progress:{campaign_id}:gate"
        if not force and not client.set(key, b"1", nx=True, px=PROGRESS_EVERY_MS):
            return
        data = campaign_summary(campaign_id)
        db.session.commit()
        if data is None:
            return
        _rate_and_eta(campaign_id, data)
        emit_campaign_event(tenant_id, campaign_id, "campaign:progress", data)
    except (redis.RedisError, OSError) as exc:
        log.info("campaign %s: progress not sent (%s)", campaign_id, exc.__class__.__name__)


def emit_state(campaign_id: int, event: str) -> None:
    """A state change event (started, paused, completed, failed) with the summary."""
    try:
        data = campaign_summary(campaign_id)
        db.session.commit()
        if data is None:
            return
        campaign = db.session.get(Campaign, campaign_id)
        emit_campaign_event(campaign.tenant_id, campaign_id, event, data)
    except (redis.RedisError, OSError) as exc:
        log.info("campaign %s: %s not sent (%s)", campaign_id, event, exc.__class__.__name__)


__all__ = [
    "DispatchSettings",
    "complete_campaign",
    "dispatch_campaign",
    "emit_progress",
    "emit_state",
    "launch",
    "launch_quietly",
    "pause_campaigns",
    "redis_client",
]
