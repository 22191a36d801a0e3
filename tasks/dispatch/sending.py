"""The send loop of one slice: claim, book slots, send each at its slot with async I/O, flush
outcomes, until the slice ends and hands over to its successor; then drain what it still holds."""

from __future__ import annotations

import asyncio
import logging
import time

import redis

from tasks.dispatch.claims import Claimed
from tasks.dispatch.loop import send_loop
from tasks.dispatch.pacing import LOOKAHEAD, MAX_RESLOTS
from tasks.providers import adapter_for

log = logging.getLogger(__name__)

HANDOVER = 0.5  # seconds before a slice ends that it enqueues its successor (which then loads and claims)
OVERRUN = 2.0  # seconds past its end a slice keeps claiming while its successor has not started
TAKEOVER_EVERY = 0.05  # seconds between looks, after the hand-over, for the successor having started
TICK = 0.01  # seconds between turns of a slice's loop while it has sends to book or to finish
CHECK_EVERY = 0.2  # seconds between looks at the campaign's state (pause within 1 s)
FLUSH_EVERY = 0.25  # seconds between bulk writes of outcomes
FLUSH_SIZE = 500


class Sending:
    """Slice part: the loop that claims, books, sends and flushes until the slice hands over."""

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
                    await self.flush_outcomes(adapter)
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
            await self.flush_outcomes(adapter)
        finally:
            await adapter.aclose()
        if self.stop == "error":
            return not self.successor_sent  # the next slice starts afresh
        if self.reslots:
            log.info("campaign %s: %s sends woke too late and took new slots", self.campaign_id, self.reslots)
        await asyncio.to_thread(self.after_slice)  # counts the deliveries: not on the loop others send on
        return self.stop is None and self.page_fatal is None and not self.successor_sent

    async def flush_outcomes(self, adapter) -> None:
        """Write the outcomes held, after the request times of their sends (``/metrics`` then never
        shows an outcome without its request's time)."""
        adapter.flush_metrics()  # here, on the loop that observes them
        await self.flush()

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
                await self.flush_outcomes(adapter)
            if loop.time() - last_check >= CHECK_EVERY:
                last_check = loop.time()
                await asyncio.to_thread(self.check_control)

    async def send_at(self, at: float, item: Claimed, adapter) -> None:
        """Wait for the slot (its id written down meanwhile: ``tasks.attempts``), then send (unless the
        campaign stopped, the page cooled down or the lease is running out: then the delivery is given
        back untouched).

        A send that wakes up too late for its slot (a busy machine) takes a new slot instead: late
        sends bunched with punctual ones would exceed the rate in some 1-second window.
        """
        loop = asyncio.get_running_loop()
        try:  # written down before it leaves: should this process die, the sweeper knows it may have
            await send_loop.departures().wait(at, item.claim_key, item.id)
        except (redis.RedisError, OSError):
            self.give_back([item])  # not written down: it must not leave
            return
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

    def give_back(self, items: list[Claimed]) -> None:
        cancelled = self.stop == "cancelled"
        for item in items:
            item.started = True
            self.release(item, cancelled=cancelled)
