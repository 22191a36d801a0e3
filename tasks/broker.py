"""The Dramatiq broker, built on first use, and actors that bind to it lazily.

Importing the app or an actor module never connects to Redis: actors declared with
:func:`actor` are plain functions until :meth:`Workers.broker` is first used, which
builds a ``RedisBroker`` for the app's configuration and binds every declared actor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from flask import Flask, current_app

_declared: dict[str, LazyActor] = {}


class WorkersUnreachable(RuntimeError):
    """The broker could not take a message; the text is shown to the user."""

    def __init__(self, reason: object):
        super().__init__(f"background workers unreachable: {reason}")


class LazyActor:
    """An actor declared at import time and bound to a broker when one exists."""

    def __init__(self, fn: Callable[..., Any], queue_name: str, options: dict[str, Any]):
        self.fn = fn
        self.actor_name = fn.__name__
        self.queue_name = queue_name
        self.options = options
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def bind(self, broker: dramatiq.Broker) -> dramatiq.Actor:
        if self.actor_name in broker.actors:
            return broker.actors[self.actor_name]
        return dramatiq.Actor(
            self.fn,
            broker=broker,
            actor_name=self.actor_name,
            queue_name=self.queue_name,
            priority=0,
            options=self.options,
        )

    def send(self, *args: Any, **kwargs: Any) -> dramatiq.Message:
        """Enqueue a call with the current app's broker."""
        return self.send_with_options(args=args, kwargs=kwargs)

    def send_with_options(
        self, *, args: tuple = (), kwargs: dict | None = None, **options: Any
    ) -> dramatiq.Message:
        workers: Workers = current_app.extensions["crier.workers"]
        bound = self.bind(workers.broker)
        try:
            return bound.send_with_options(args=args, kwargs=kwargs or {}, **options)
        except redis.RedisError as exc:
            raise WorkersUnreachable(exc) from exc


def current_broker() -> CrierRedisBroker:
    """The current app's broker."""
    return current_app.extensions["crier.workers"].broker


def actor(fn: Callable[..., Any] | None = None, *, queue_name: str = "default", **options: Any):
    """Declare a Dramatiq actor without needing a broker yet."""

    def declare(fn: Callable[..., Any]) -> LazyActor:
        lazy = LazyActor(fn, queue_name, options)
        _declared[lazy.actor_name] = lazy
        return lazy

    return declare(fn) if fn is not None else declare


class AppContextMiddleware(dramatiq.Middleware):
    """Push a Flask app context around every message, so actors can use the database."""

    def __init__(self, app: Flask):
        self.app = app
        self._local = threading.local()

    def before_process_message(self, broker, message) -> None:
        context = self.app.app_context()
        context.push()
        self._local.context = context

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        context = getattr(self._local, "context", None)
        if context is not None:
            self._local.context = None
            context.pop()

    def after_skip_message(self, broker, message) -> None:
        self.after_process_message(broker, message)


PROMPT_QUEUES = {"campaigns": 50}
"""Queues whose idle consumers look for new messages at least this often (milliseconds).

An idle Redis consumer backs off up to the worker timeout (1 s) between looks; a campaign's next
dispatch slice then waited up to a second to start, a visible gap in its send rate at every hand-over.
"""


class CrierRedisBroker(RedisBroker):
    """``RedisBroker`` whose consumers of :data:`PROMPT_QUEUES` never back off for long."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000):
        if queue_name in PROMPT_QUEUES:
            timeout = min(timeout, PROMPT_QUEUES[queue_name])
        return super().consume(queue_name, prefetch=prefetch, timeout=timeout)

    def live_processes(self, within_ms: int = 250) -> int:
        """Worker processes that talked to the broker in the last ``within_ms`` (at least 1).

        Dramatiq records a heartbeat per broker instance on every command; the consumers of
        :data:`PROMPT_QUEUES` fetch every few dozen milliseconds, so a live worker is always recent,
        while a process that only enqueued (the web app) soon is not.
        """
        now = int(time.time() * 1000)
        return max(1, int(self.client.zcount(f"{self.namespace}:__heartbeats__", now - within_ms, "+inf")))


def queue_depths(broker: RedisBroker, client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each declared queue and in its delay queue (``NAME.DQ``), read with ``client``.

    A worker fetches delayed messages early and holds them until they are due, so ``NAME.DQ``
    counts only those no worker has fetched yet.
    """
    names = sorted(name for queue in broker.get_declared_queues() for name in (queue, dq_name(queue)))
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(f"{broker.namespace}:{name}")
        return dict(zip(names, pipe.execute(), strict=True))


class Workers:
    """The Dramatiq side of one app: its broker, built on first use, with the app-context middleware
    and then ``middleware()`` (what :func:`tasks.init_app` lists: heartbeat, sweeper, threads)."""

    def __init__(self, app: Flask, middleware: Callable[[], list[dramatiq.Middleware]] = list):
        self.app = app
        self.middleware = middleware
        self._broker: RedisBroker | None = None
        self._lock = threading.Lock()

    @property
    def broker(self) -> RedisBroker:
        with self._lock:
            if self._broker is None:
                self._broker = self._build()
            return self._broker

    def _build(self) -> RedisBroker:
        config = self.app.config
        client = redis.Redis.from_url(
            config["REDIS_URL"], socket_connect_timeout=3, socket_timeout=30, health_check_interval=30
        )
        broker = CrierRedisBroker(client=client, namespace=f"{config['REDIS_PREFIX']}-dramatiq")
        broker.add_middleware(AppContextMiddleware(self.app))
        for middleware in self.middleware():
            broker.add_middleware(middleware)
        for lazy in _declared.values():
            lazy.bind(broker)
        return broker
