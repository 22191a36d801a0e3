"""Which claimed deliveries were handed to the HTTP client, so that what a dead worker claimed and
never sent goes back to ``pending`` instead of ``unknown``.

Every claim (one lease token) opens a Redis set ``<prefix>:attempted:<tenant>:<campaign>:<token>``
holding a sentinel, in the same round trip that lists the lease under its worker. A delivery's id
joins the set before its request leaves: :class:`Departures` wakes the sends of each few
milliseconds at their slots after one write for them all. The sweeper settling a dead worker's
lease reads the set (:func:`attempted`): the ids in it may have reached the provider and become
``unknown``; the others never left. Without the
sentinel (Redis restarted empty, or the set expired) nothing is known and every delivery of the
lease is ``unknown``, as before.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

import redis

SENTINEL = b"-"
TICK_SECONDS = 0.004  # sends whose slots fall within this long leave together, after one write
KEEP_SECONDS = 3600  # beyond any lease: the sweeper reads a set only while its lease is unsettled


def key(prefix: str, lease: str) -> str:
    """The set of a lease, by its listing (``tasks.heartbeat.lease_member``)."""
    return f"{prefix}:attempted:{lease}"


def open_claim(pipe: redis.client.Pipeline, claim_key: str) -> None:
    """Start the claim's set with the sentinel (queued on ``pipe``; the caller executes it)."""
    pipe.sadd(claim_key, SENTINEL)
    pipe.expire(claim_key, KEEP_SECONDS)


def attempted(client: redis.Redis, claim_key: str) -> set[int] | None:
    """The ids of the claim handed to the HTTP client, or None when Redis no longer knows the claim."""
    members = client.smembers(claim_key)
    if SENTINEL not in members:
        return None
    return {int(member) for member in members if member != SENTINEL}


def forget(client: redis.Redis, claim_key: str) -> None:
    client.delete(claim_key)


class Departures:
    """Wakes each send at its slot (never before it, at most ``TICK_SECONDS`` after), once its id is
    written down.

    One per event loop, in place of a timer per send: the sends whose slots have come are written
    to their claims' sets (one ``SADD`` per claim, with the process's blocking Redis client on the
    loop, as the limiter's calls are: a tenth of a millisecond) and then woken together. A set the
    claim did not open (Redis restarted in between) has no expiry; the slice deletes its sets when
    it lets go of its leases.
    """

    def __init__(self, client: redis.Redis):
        self.client = client
        self._due: list[tuple[float, int, str, int, asyncio.Future]] = []  # a heap by slot time
        self._count = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    async def wait(self, at: float, claim_key: str, delivery_id: int) -> None:
        """Return at loop time ``at`` (or within a tick after it) with ``delivery_id`` written down;
        raises :class:`redis.RedisError` or :class:`OSError` when it could not be (then the send
        must not leave)."""
        loop = asyncio.get_running_loop()
        departed = loop.create_future()
        heapq.heappush(self._due, (at, next(self._count), claim_key, delivery_id, departed))
        if self._timer is None or at + TICK_SECONDS < self._timer.when():
            self._arm(loop)
        await departed

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(max(self._due[0][0] + TICK_SECONDS, loop.time()), self._depart, loop)

    def _depart(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        leaving: list[asyncio.Future] = []
        batch: dict[str, list[int]] = {}
        while self._due and self._due[0][0] <= now:
            _, _, claim_key, delivery_id, departed = heapq.heappop(self._due)
            if not departed.done():  # (a cancelled send's is)
                batch.setdefault(claim_key, []).append(delivery_id)
                leaving.append(departed)
        try:
            for claim_key, ids in batch.items():
                self.client.sadd(claim_key, *ids)
        except (redis.RedisError, OSError) as exc:
            for departed in leaving:
                departed.set_exception(exc)
        else:
            for departed in leaving:
                departed.set_result(None)
        if self._due:
            self._arm(loop)
