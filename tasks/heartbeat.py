"""Worker heartbeats: every worker process keeps a Redis key alive while it runs.

The key (``<prefix>:workers:<host>:<pid>``) is written every second with a five-second expiry, so a
process that dies, however it dies, disappears from :func:`live_workers` within five seconds.
``/readyz`` reads it; it is Crier's own record, apart from Dramatiq's broker heartbeats, which
every process that merely enqueues (the web app) writes too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import dramatiq
import redis
from flask import Flask

log = logging.getLogger(__name__)
BEAT_SECONDS = 1.0
EXPIRES_SECONDS = 5


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _key(prefix: str, worker: str) -> str:
    return f"{prefix}:workers:{worker}"


def live_workers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """The worker processes whose heartbeat has not expired, with when each started and last beat."""
    keys = list(client.scan_iter(match=_key(prefix, "*"), count=1000))
    return [json.loads(value) for value in client.mget(keys) if value] if keys else []


class HeartbeatMiddleware(dramatiq.Middleware):
    """Beats every second in a thread of each worker process; the key goes when the worker stops."""

    def __init__(self, app: Flask):
        self.app = app
        self.stopping = threading.Event()
        self.worker = worker_id()
        self.started = time.time()

    @property
    def key(self) -> str:
        return _key(self.app.config["REDIS_PREFIX"], self.worker)

    def after_worker_boot(self, broker, worker) -> None:
        threading.Thread(target=self.loop, args=(broker.client,), name="crier-heartbeat", daemon=True).start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            broker.client.delete(self.key)

    def loop(self, client: redis.Redis) -> None:
        while not self.stopping.is_set():
            beat = {"worker": self.worker, "started": self.started, "at": time.time()}
            try:
                client.set(self.key, json.dumps(beat), ex=EXPIRES_SECONDS)
            except redis.RedisError as exc:
                log.warning("heartbeat not written: %s", exc)
            self.stopping.wait(BEAT_SECONDS)
