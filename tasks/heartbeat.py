"""Worker heartbeats, and the leases each worker holds, so that a dead worker's work is taken back.

Every worker process keeps ``<prefix>:workers:<host>:<pid>`` alive (written every second, expiring
after five), so a process that dies, however it dies, disappears from :func:`live_workers` within
five seconds. ``/readyz`` reads it; it is Crier's own record, apart from Dramatiq's broker
heartbeats, which every process that merely enqueues (the web app) writes too.

While dispatch holds deliveries claimed it lists their lease tokens (and the campaigns it is
sending) in ``<prefix>:leases:<host>:<pid>``. The sweeper looks every second for lists whose worker
no longer beats (:func:`orphaned_leases`) and settles them at once, instead of waiting for the
leases to run out. If Redis loses the lists, the leases still run out as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import dramatiq
import redis
from flask import Flask

log = logging.getLogger(__name__)
BEAT_SECONDS = 1.0
EXPIRES_SECONDS = 5  # a busy process may miss a beat or two; a dead one is found within six seconds
LEASE_LIST_SECONDS = 24 * 3600  # a list nobody settles (Redis lost the heartbeat too) goes eventually


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _key(prefix: str, worker: str) -> str:
    return f"{prefix}:workers:{worker}"


def _leases_key(prefix: str, worker: str) -> str:
    return f"{prefix}:leases:{worker}"


def hold(pipe: redis.client.Pipeline, prefix: str, *members: str) -> None:
    """List what this worker process holds (``tenant:campaign:token`` or ``tenant:campaign:running``);
    queued on ``pipe``, which the caller executes (with whatever else the claim writes)."""
    key = _leases_key(prefix, worker_id())
    pipe.sadd(key, *members)
    pipe.expire(key, LEASE_LIST_SECONDS)


def let_go(pipe: redis.client.Pipeline, prefix: str, *members: str) -> None:
    if members:
        pipe.srem(_leases_key(prefix, worker_id()), *members)


def lease_member(tenant_id: int, campaign_id: int, token: datetime) -> str:
    """How a lease is listed: the same text whether its token comes from the claim or the database."""
    if token.tzinfo is None:
        token = token.replace(tzinfo=UTC)
    return f"{tenant_id}:{campaign_id}:{token.astimezone(UTC).isoformat(timespec='microseconds')}"


def running_member(tenant_id: int, campaign_id: int) -> str:
    return f"{tenant_id}:{campaign_id}:running"


def orphaned_leases(client: redis.Redis, prefix: str) -> dict[str, set[str]]:
    """What each dead worker process held: the lists of workers whose heartbeat has expired."""
    orphans = {}
    for key in client.scan_iter(match=_leases_key(prefix, "*"), count=1000):
        worker = key.decode().split(":leases:", 1)[1]
        if not client.exists(_key(prefix, worker)):
            orphans[worker] = {member.decode() for member in client.smembers(key)}
    return orphans


def forget(client: redis.Redis, prefix: str, worker: str) -> None:
    client.delete(_leases_key(prefix, worker))


def mark_redis_in_use(client: redis.Redis, prefix: str) -> bool:
    """Mark this Redis as holding Crier's queues; True when the mark was missing, i.e. Redis lost its
    data (restarted without persistence) since anything was enqueued or swept. Dispatch marks it
    when it enqueues chains, the sweeper when it looks (SET NX: one caller gets True)."""
    return bool(client.set(f"{prefix}:redis-in-use", str(time.time()), nx=True))


def live_workers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """The worker processes whose heartbeat has not expired, with when each started and last beat."""
    keys = list(client.scan_iter(match=_key(prefix, "*"), count=1000))
    return [json.loads(value) for value in client.mget(keys) if value] if keys else []


class HeartbeatMiddleware(dramatiq.Middleware):
    """Beats every second in a thread of each worker process; the key goes when the worker stops."""

    def __init__(self, app: Flask):
        self.app = app
        self.stopping = threading.Event()
        self.started = time.time()

    @property
    def key(self) -> str:
        return _key(self.app.config["REDIS_PREFIX"], worker_id())

    def after_worker_boot(self, broker, worker) -> None:
        threading.Thread(target=self.loop, args=(broker.client,), name="crier-heartbeat", daemon=True).start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            broker.client.delete(self.key)

    def loop(self, client: redis.Redis) -> None:
        while not self.stopping.is_set():
            beat = {"worker": worker_id(), "started": self.started, "at": time.time()}
            try:
                client.set(self.key, json.dumps(beat), ex=EXPIRES_SECONDS)
            except redis.RedisError as exc:
                log.warning("heartbeat not written: %s", exc)
            self.stopping.wait(BEAT_SECONDS)
