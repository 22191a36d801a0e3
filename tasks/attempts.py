"""Which claimed deliveries were handed to the HTTP client, so that what a dead worker claimed and
never sent goes back to ``pending`` instead of ``unknown``.

Every claim (one lease token) opens a Redis set ``<prefix>:attempted:<tenant>:<campaign>:<token>``
holding a sentinel, in the same round trip that lists the lease under its worker. A delivery's id
joins the set before its request leaves: the sends of a few milliseconds share one write, and each
waits for it. The sweeper settling a dead worker's lease reads the set (:func:`attempted`): the ids
in it may have reached the provider and become ``unknown``; the others never left. Without the
sentinel (Redis restarted empty, or the set expired) nothing is known and every delivery of the
lease is ``unknown``, as before.
"""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio

SENTINEL = b"-"
BATCH_SECONDS = 0.005  # sends due within this long share one write (and wait for it at most this long)
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


class AttemptLog:
    """Writes the ids of sends about to leave, batched (one pipelined write every few milliseconds).

    One per event loop: :meth:`mark` must be awaited on the loop that created it.
    """

    def __init__(self, client: redis.asyncio.Redis):
        self.client = client
        self._batch: dict[str, list[int]] = {}
        self._written: asyncio.Future | None = None
        self._writer: asyncio.Task | None = None

    async def mark(self, claim_key: str, delivery_id: int) -> None:
        """Return once ``delivery_id`` is written down; raises :class:`redis.RedisError` or
        :class:`OSError` when it could not be (then the send must not leave)."""
        self._batch.setdefault(claim_key, []).append(delivery_id)
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
            self._writer = asyncio.create_task(self._write_soon(self._written))
        await asyncio.shield(self._written)

    async def _write_soon(self, written: asyncio.Future) -> None:
        await asyncio.sleep(BATCH_SECONDS)
        batch, self._batch, self._written = self._batch, {}, None
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for claim_key, ids in batch.items():
                    pipe.sadd(claim_key, *ids)
                    pipe.expire(claim_key, KEEP_SECONDS)  # (it goes even if the claim's opening was lost)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            written.set_exception(exc)
            written.exception()  # retrieved here: a batch whose senders were all cancelled must not warn
        else:
            written.set_result(None)

    async def aclose(self) -> None:
        await self.client.aclose()
