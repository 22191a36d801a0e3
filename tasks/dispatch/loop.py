"""The one event loop of a worker process that every dispatch slice sends on, and its shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import redis
from flask import current_app

from tasks.attempts import Departures
from tasks.broker import current_broker
from tasks.connections import redis_client
from tasks.dispatch.settings import DispatchSettings
from tasks.providers.http import make_client
from tasks.providers.ssrf import UrlGuard

DISPATCH_CONNECTIONS = 200  # per worker thread: enough for thousands of sends/s at provider latencies


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
        self._departures: Departures | None = None
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
                self._loop, self._clients, self._departures = loop, {}, None
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

    def departures(self) -> Departures:
        """Wakes this process's sends at their slots, each written down first (call on the send loop)."""
        if self._departures is None:
            self._departures = Departures(redis_client())
        return self._departures

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
