"""Prometheus metrics: defined once here, recorded by every process, served by the web's ``/metrics``.

Every process of a host — gunicorn's web processes, each ``dramatiq worker`` process, the tests'
workers — records its counters and histograms in files of its own in ``METRICS_DIR``
(prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``); ``/metrics``
(``webapp/metrics.py``) adds up the files of every process, dead ones included, so a counter keeps
what a process counted before it exited. The gauges (queue depths, deliveries unknown and in
flight, live workers) are computed when ``/metrics`` is scraped (:class:`StateCollector`), so no
process has to keep them current.

Who records what:

* :data:`SENDS` — dispatch, after each committed outcome write;
* :data:`PROVIDER_REQUEST_SECONDS` — the provider adapters, around each request;
* :data:`LIMITER_WAIT` — dispatch, from booking a send slot to the slot;
* :data:`LEASES_SETTLED` — the sweeper, for each lease it settles;
* :data:`IMPORT_ROWS` — the contact import job (:class:`ImportRowCounter`).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import redis
from flask import Flask
from prometheus_client import Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import mark_process_dead
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

SENDS = Counter(
    "crier_sends",
    "Deliveries whose send outcome dispatch recorded, by channel (page kind) and outcome.",
    ["channel", "outcome"],
)
PROVIDER_REQUEST_SECONDS = Histogram(
    "crier_provider_request_seconds",
    "Time a provider took to answer one request (or fail to), by channel.",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)
LIMITER_WAIT = Histogram(
    "crier_limiter_wait_seconds",
    "Time from booking a send slot with the page's rate limiter to the slot, by channel.",
    ["channel"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LEASES_SETTLED = Counter(
    "crier_leases_settled",
    "Deliveries whose sender was gone that the sweeper settled, by why (lease_expired, worker_died) and "
    "what each became (never_sent: pending again, untried; pending: to retry, at-least-once; unknown).",
    ["reason", "outcome"],
)
IMPORT_ROWS = Counter(
    "crier_import_rows",
    "Contact import rows, by what became of them (created, updated, merged, skipped, rejected).",
    ["result"],
)
RECORDED = (SENDS, PROVIDER_REQUEST_SECONDS, LIMITER_WAIT, LEASES_SETTLED, IMPORT_ROWS)
IMPORT_RESULTS = ("created", "updated", "merged", "skipped", "rejected")


class BatchedHistogram:
    """One labelled histogram, observed on a hot path: observations are added up in memory and
    written to the histogram every :attr:`max_count` observations, :attr:`max_seconds`, or on
    :meth:`flush`.

    In multiprocess mode each ``observe`` writes two memory-mapped values, each under a lock with a
    check of the process id; on the send path (two histograms a message) that cost about 5% of a
    worker's throughput. Counts written here are exactly those ``observe`` would have written.
    """

    def __init__(self, child: Histogram, max_count: int = 256, max_seconds: float = 1.0) -> None:
        self._child = child
        self._bounds = list(child._upper_bounds)  # ascending, the last one +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = 0
        self.max_count, self.max_seconds = max_count, max_seconds
        self._written_at = time.monotonic()

    def observe(self, amount: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1  # the first bound >= amount
        self._sum += amount
        self._pending += 1
        if self._pending >= self.max_count or time.monotonic() - self._written_at >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        """Write what was observed since the last write."""
        self._written_at = time.monotonic()
        if not self._pending:
            return
        for index, count in enumerate(self._counts):
            if count:
                self._child._buckets[index].inc(count)
                self._counts[index] = 0
        self._child._sum.inc(self._sum)
        self._sum, self._pending = 0.0, 0


def init_app(app: Flask) -> None:
    """Record this process's metrics in files in ``METRICS_DIR`` (exported as ``PROMETHEUS_MULTIPROC_DIR``).

    prometheus_client chooses between values in memory and values in files when it is first
    imported, from the environment, before the app's configuration is read; so the choice is made
    again here, before any value exists (every metric has labels: a value is made by ``labels()``).
    """
    directory = Path(app.config["METRICS_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    if values.ValueClass is values.MutexValue:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # not yet: clear() refuses in multiprocess mode
        for metric in RECORDED:
            metric.clear()  # values made in memory before (none, unless a test made some)
        values.ValueClass = values.MultiProcessValue()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


class ProcessEnd(dramatiq.Middleware):
    """Tells prometheus_client that a worker process is ending (its live gauges, if any, stop counting)."""

    def after_worker_shutdown(self, broker, worker) -> None:
        process_exited(os.getpid())


def process_exited(pid: int) -> None:
    """prometheus_client's bookkeeping for a process of this host that ended (gunicorn's ``child_exit``)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        mark_process_dead(pid, directory)


_FILE_PID = re.compile(r"_(\d+)\.db$")


def remove_dead_processes_files(directory: str | os.PathLike) -> int:
    """Delete the files of processes no longer running (`make run` does it when everything starts).

    Their counts leave the totals, which Prometheus reads as a counter reset; a running process's
    files are kept. Returns how many files went.
    """
    removed = 0
    for path in Path(directory).glob("*.db"):
        found = _FILE_PID.search(path.name)
        if found and not _running(int(found.group(1))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class ImportRowCounter:
    """An import's ``on_progress`` callback adding each batch's rows to :data:`IMPORT_ROWS`, by result.

    Progress is cumulative and reported after every committed batch, so each call adds what grew.
    """

    def __init__(self) -> None:
        self.counted = dict.fromkeys(IMPORT_RESULTS, 0)

    def __call__(self, progress: Any) -> None:
        for result, before in self.counted.items():
            now = getattr(progress, result)
            if now > before:
                IMPORT_ROWS.labels(result=result).inc(now - before)
                self.counted[result] = now


class StateCollector:
    """Gauges read when ``/metrics`` is scraped: queue depths and live workers (Redis), deliveries
    unknown and in flight (one count across tenants), and whether each source answered."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "crier_source_up", "Whether /metrics could read the source (1) or not (0).", labels=["source"]
        )
        for source, read in (("redis", self._redis), ("database", self._database)):
            try:
                metrics = list(read())
            except (redis.RedisError, SQLAlchemyError, OSError) as exc:
                log.warning("/metrics could not read the %s: %s", source, exc)
                up.add_metric([source], 0)
            else:
                up.add_metric([source], 1)
                yield from metrics
        yield up

    def _redis(self) -> Iterator[Metric]:
        from tasks.broker import queue_depths
        from tasks.connections import redis_client
        from tasks.heartbeat import live_workers

        client = redis_client(self.app)
        depths = GaugeMetricFamily(
            "crier_queue_messages",
            "Messages waiting in each worker queue (NAME.DQ: delayed, not yet due or not yet fetched).",
            labels=["queue"],
        )
        for queue, depth in sorted(queue_depths(self.app.extensions["crier.workers"].broker, client).items()):
            depths.add_metric([queue], depth)
        yield depths
        yield GaugeMetricFamily(
            "crier_workers_live",
            "Worker processes whose heartbeat is fresh.",
            value=len(live_workers(client, self.app.config["REDIS_PREFIX"])),
        )

    def _database(self) -> Iterator[Metric]:
        from tenants.campaigns import Campaign, Delivery, DeliveryState
        from tenants.db import db
        from tenants.scoping import all_tenants

        # a delivery in flight is in a small partial index; the unknown ones are counted campaign by
        # campaign, each a range of the (campaign_id, state, ...) index instead of a scan of the table
        unknown_of_campaign = (
            select(func.count())
            .where(Delivery.campaign_id == Campaign.id, Delivery.state == DeliveryState.UNKNOWN)
            .correlate(Campaign)
            .scalar_subquery()
        )
        per_campaign = select(unknown_of_campaign.label("unknown")).select_from(Campaign).subquery()
        try:
            with all_tenants(db.session):
                unknown = db.session.scalar(select(func.coalesce(func.sum(per_campaign.c.unknown), 0)))
                in_flight = db.session.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.state == DeliveryState.IN_FLIGHT)
                )
        finally:
            db.session.rollback()
        deliveries = GaugeMetricFamily(
            "crier_deliveries",
            "Deliveries of every tenant in a state worth watching: unknown (may or may not have arrived), "
            "in_flight (being sent now).",
            labels=["state"],
        )
        deliveries.add_metric(["unknown"], int(unknown or 0))
        deliveries.add_metric(["in_flight"], int(in_flight or 0))
        yield deliveries
