"""Pacing: the limits a slice sends under, send slots booked a few at a time from the shared limiter
(``tasks.limits``), and slowing a page down when the provider throttles it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import redis
from flask import current_app

from tasks import lifecycle, metrics
from tasks.connections import redis_client
from tasks.dispatch.claims import Claimed
from tasks.limits import Limit, RateLimiter, burst_allowance
from tasks.providers.base import SendResult
from tenants.campaigns import (
    PauseReason,
)
from tenants.db import utcnow
from tenants.pages import PageState, ProviderKind

log = logging.getLogger(__name__)
T = TypeVar("T")

RATE_MARGIN = 0.98  # pace a little under each limit: the provider sees our sends after some jitter
MAX_RESLOTS = 3
LOOKAHEAD = 0.6  # no claiming while the page's slots are taken this far ahead (by any slice)
BOOK_AHEAD = 0.1  # seconds of send slots a slice holds ahead; it books more as they run out
CHUNK_SECONDS = 0.025  # slots are booked a few at a time, so the slices of a page take turns closely
WARM_UP = (0.5, 0.5)  # a page idle for a second sends its first half second at half its rate
THROTTLE_SLOWDOWN = (0.5, 0.2)  # a throttle halves the page's rate, which regains a fifth a second
THROTTLE_SETTLE = 3.0  # seconds after a slow-down during which further throttles do not slow more
HOLD_FROM = 5.0  # a provider asking this many seconds' wait or more holds the whole page back that long
LONG_THROTTLE = 30.0  # a cool-down longer than this pauses the page's campaigns
PAIR_INTERVAL = 6.0  # WhatsApp: one message to the same person per page every few seconds


def rate_limiter() -> RateLimiter:
    return RateLimiter(redis_client(), current_app.config["REDIS_PREFIX"], warm_up=WARM_UP)


class Pacing:
    """Slice part: the limits, send slots booked from the shared limiter, slowing down on throttles."""

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

    @functools.cached_property
    def limiter_wait(self) -> metrics.BatchedHistogram:
        return metrics.BatchedHistogram(metrics.LIMITER_WAIT.labels(channel=self.page.kind.value))

    def claim_size(self) -> int:
        """About a quarter second of sending at the current pace (at least one)."""
        rate = min(limit.rate for limit in self.limits)
        with contextlib.suppress(redis.RedisError):
            rate *= self.limiter.current_factor(f"page:{self.page.id}")
        return max(1, math.ceil(rate * 0.25))

    @functools.cached_property
    def chunk_size(self) -> int:
        """Slots booked at a time: ``CHUNK_SECONDS`` of the slowest limit (at least one)."""
        return max(1, math.ceil(min(limit.rate for limit in self.limits) * CHUNK_SECONDS))

    def shared_backlog(self) -> float:
        try:
            return self.limiter.backlog([limit.key for limit in self.limits])
        except redis.RedisError:
            return 0.0  # reserve() will wait for Redis

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
        waited = self.limiter_wait
        for item, delay in zip(sendable, delays, strict=True):
            waited.observe(delay)
            task = loop.create_task(self.send_at(start + delay, item, adapter))
            tasks[task] = item
            task.add_done_callback(tasks.pop)
        waited.flush()

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

            lifecycle.hold_page(
                self.page.id,
                PauseReason.PAGE_THROTTLED,
                f"{result.code or ''} {result.detail or ''}".strip()[:500],
                resume_at=until,
                state=PageState.THROTTLED,
                throttled_until=until,
            )
