"""`GET /metrics`: what every worker process counted, and the gauges, as Prometheus scrapes them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasks.imports import start_import
from tasks.metrics import remove_dead_processes_files
from tasks.system import ping_workers
from tenants.accounts import sign_up
from tenants.contact_import import new_import
from tenants.contacts import ContactImport, ImportStatus
from tenants.db import db
from tenants.scoping import tenant
from tests.conftest import PASSWORD, built_app, free_port
from tests.engine import EngineRun

SENT = ("crier_sends_total", {"channel": "whatsapp", "outcome": "sent"})


class Scraper:
    """Prometheus, as far as a test needs it: scrape ``/metrics`` and read a sample's value."""

    def __init__(self, client, **request):
        self.client = client
        self.request = request
        self.samples: dict[tuple[str, tuple], float] = {}

    def scrape(self) -> Scraper:
        response = self.client.get("/metrics", **self.request)
        assert response.status_code == 200, response.get_data(as_text=True)
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples
        }
        return self

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.samples.get((name, tuple(sorted((labels or {}).items()))))

    def fresh(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Scrape, then the value (0 when nothing was counted under those labels yet)."""
        return self.scrape().value(name, labels) or 0


@pytest.fixture
def engine(sandbox, tmp_path):
    """An engine whose workers write their metrics to a directory of this test's, which /metrics reads."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()  # as the web process makes it when it starts
    run = EngineRun(sandbox, CRIER_METRICS_DIR=str(metrics_dir))
    run.app.config["METRICS_DIR"] = metrics_dir
    run.configure(callbacks=False)
    yield run
    run.close()


def test_the_sends_counter_follows_a_campaign_and_ends_at_what_it_sent(engine):
    tenant_id, page_id, list_id = engine.setup(contacts=600, rate=150)
    campaign_id = engine.campaign(tenant_id, page_id, list_id)
    engine.worker()
    engine.start(tenant_id, campaign_id)
    metrics = Scraper(engine.app.test_client())

    engine.wait_for(lambda: metrics.fresh(*SENT) > 0, 20, "sends counted")
    during = engine.status(tenant_id, campaign_id)
    assert during["state"] == "running" and metrics.value(*SENT) <= during["sent"] < 600
    assert metrics.value("crier_workers_live") == 1
    assert metrics.value("crier_deliveries", {"state": "in_flight"}) is not None

    done = engine.wait(tenant_id, campaign_id)
    engine.wait_for(lambda: metrics.fresh(*SENT) >= done["sent"], 5, "the last sends counted")
    time.sleep(0.5)  # nothing is counted twice, however late

    assert metrics.fresh(*SENT) == done["sent"] == len(engine.ledger()) == 600
    assert not [
        labels
        for (name, labels), value in metrics.samples.items()
        if name == "crier_sends_total" and dict(labels)["outcome"] != "sent" and value
    ]


def test_provider_latency_is_observed_once_per_request_the_provider_answered(engine):
    engine.configure(callbacks=False, latency_ms=20, transient_share=0.2)
    tenant_id, page_id, list_id = engine.setup(contacts=150)
    campaign_id = engine.campaign(tenant_id, page_id, list_id)
    engine.worker()
    engine.start(tenant_id, campaign_id)
    engine.wait(tenant_id, campaign_id)

    stats = engine.stats()
    requests = stats["accepted"] + sum(stats["rejected"].values())
    assert requests > 150  # the refused ones were sent again
    metrics = Scraper(engine.app.test_client()).scrape()
    whatsapp = {"channel": "whatsapp"}
    assert metrics.value("crier_provider_request_seconds_count", whatsapp) == requests
    assert metrics.value("crier_provider_request_seconds_bucket", {**whatsapp, "le": "+Inf"}) == requests
    # the sandbox waits 20 ms before every answer: no request took less
    assert metrics.value("crier_provider_request_seconds_bucket", {**whatsapp, "le": "0.01"}) == 0
    assert metrics.value("crier_provider_request_seconds_sum", whatsapp) >= 0.02 * requests


def test_import_rows_are_counted_by_what_became_of_them(engine, tmp_path):
    _, workspace = sign_up("importer@metrics.example", PASSWORD, "Importer Co")
    tenant_id = workspace.id
    db.session.commit()
    path = tmp_path / "contacts.csv"
    path.write_text(
        "phone,first_name,email\n"
        "+14155550101,Ada,ada@example.com\n"
        "+14155550102,Grace,grace@example.com\n"
        "12,Nobody,\n"
        "+14155550103,Alan,alan@example.com\n"
    )
    engine.worker()
    with tenant(db.session, tenant_id):
        record = new_import(path, filename=path.name)
        db.session.commit()
        start_import(record, mapping=dict(record.mapping), list_id=None, update_existing=True)
        import_id = record.id

    def counts() -> tuple[ImportStatus, int, int]:
        with tenant(db.session, tenant_id):
            row = db.session.get(ContactImport, import_id)
            db.session.refresh(row)
            db.session.commit()
            return row.status, row.created_count, row.rejected_count

    engine.wait_for(lambda: counts()[0] is ImportStatus.COMPLETED, 30, "the import")
    metrics = Scraper(engine.app.test_client()).scrape()

    assert counts()[1:] == (3, 1)
    assert metrics.value("crier_import_rows_total", {"result": "created"}) == 3
    assert metrics.value("crier_import_rows_total", {"result": "rejected"}) == 1
    assert not metrics.value("crier_import_rows_total", {"result": "updated"})


def test_the_gauges_count_waiting_messages_unknown_and_in_flight_deliveries_and_live_workers(engine):
    tenant_id, page_id, list_id = engine.setup(contacts=5)
    campaign_id = engine.campaign(tenant_id, page_id, list_id)
    engine.start(tenant_id, campaign_id)  # no worker yet: its dispatch waits in the queue
    for _ in range(3):
        ping_workers.send(tenant_id, time.time())
    for _ in range(2):
        ping_workers.send_with_options(args=(tenant_id, time.time()), delay=60_000)
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        first, second = (
            row[0] for row in conn.execute("SELECT id FROM deliveries ORDER BY id LIMIT 2").fetchall()
        )
        conn.execute("UPDATE deliveries SET state = 'unknown' WHERE id = %s", (first,))
        conn.execute(
            "UPDATE deliveries SET state = 'in_flight', lease_until = now() + interval '1 minute' "
            "WHERE id = %s",
            (second,),
        )
    metrics = Scraper(engine.app.test_client()).scrape()

    assert metrics.value("crier_deliveries", {"state": "unknown"}) == 1
    assert metrics.value("crier_deliveries", {"state": "in_flight"}) == 1
    assert metrics.value("crier_queue_messages", {"queue": "default"}) == 3
    assert metrics.value("crier_queue_messages", {"queue": "default.DQ"}) == 2
    assert metrics.value("crier_queue_messages", {"queue": "campaigns"}) >= 1
    assert metrics.value("crier_workers_live") == 0
    assert metrics.value("crier_source_up", {"source": "redis"}) == 1
    assert metrics.value("crier_source_up", {"source": "database"}) == 1

    engine.worker()
    engine.wait_for(lambda: metrics.fresh("crier_workers_live") == 1, 10, "the worker's heartbeat")
    engine.wait_for(
        lambda: metrics.fresh("crier_queue_messages", {"queue": "default"}) == 0, 10, "the pings answered"
    )


def test_a_scrape_without_redis_still_answers_and_says_so():
    with built_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0") as app:
        metrics = Scraper(app.test_client()).scrape()
    assert metrics.value("crier_source_up", {"source": "redis"}) == 0
    assert metrics.value("crier_source_up", {"source": "database"}) == 1
    assert metrics.value("crier_queue_messages", {"queue": "default"}) is None
    assert metrics.value("crier_deliveries", {"state": "unknown"}) == 0


def test_without_a_token_only_this_machine_may_read_the_metrics(client):
    local = client.get("/metrics")  # the test client comes from 127.0.0.1
    assert local.status_code == 200
    assert local.content_type.startswith("text/plain; version=0.0.4")
    assert local.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in local.headers
    assert b"# TYPE crier_source_up gauge" in local.data

    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 404
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    # a proxy on this machine passing on a request from anywhere
    proxied = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 404 and b"crier_" not in proxied.data


def test_with_a_token_only_requests_bearing_it_may_read_the_metrics():
    token = "metrics-token-0123456789"
    with built_app(METRICS_TOKEN=token) as app:
        client = app.test_client()
        remote = {"REMOTE_ADDR": "203.0.113.9"}

        missing = client.get("/metrics", environ_base=remote)
        wrong = client.get("/metrics", environ_base=remote, headers={"Authorization": "Bearer not-the-token"})
        local_without = client.get("/metrics")
        allowed = client.get("/metrics", environ_base=remote, headers={"Authorization": f"Bearer {token}"})

    for refused in (missing, wrong, local_without):
        assert refused.status_code == 401 and b"crier_" not in refused.data
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert allowed.status_code == 200 and b"crier_source_up" in allowed.data
    assert "Set-Cookie" not in allowed.headers


def test_make_run_clears_the_files_of_processes_that_ended_and_keeps_the_running_ones(tmp_path):
    ended_process = subprocess.Popen([sys.executable, "-c", "pass"])
    ended_process.wait()
    ended = tmp_path / f"counter_{ended_process.pid}.db"
    running = tmp_path / f"counter_{os.getpid()}.db"
    for path in (ended, running):
        path.write_bytes(b"")

    assert remove_dead_processes_files(tmp_path) == 1
    assert not ended.exists() and running.exists()


def test_a_batched_histogram_writes_exactly_what_observing_each_value_would():
    from prometheus_client import CollectorRegistry, Histogram

    from tasks.metrics import BatchedHistogram

    registry = CollectorRegistry()
    buckets = (0.01, 0.1, 1)
    direct = Histogram("direct_seconds", "each value", ["channel"], buckets=buckets, registry=registry)
    batched = Histogram("batched_seconds", "in batches", ["channel"], buckets=buckets, registry=registry)
    observed = [0.0, 0.01, 0.010001, 0.05, 0.1, 0.5, 1, 7.5]
    every_three = BatchedHistogram(batched.labels(channel="whatsapp"), max_count=3, max_seconds=3600)
    for value in observed:
        direct.labels(channel="whatsapp").observe(value)
        every_three.observe(value)

    def samples(name: str) -> dict:
        return {
            (sample.name.replace(name, ""), sample.labels.get("le")): sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name.startswith(name) and not sample.name.endswith("_created")
        }

    assert samples("batched_seconds") != samples("direct_seconds")  # two values wait for the next batch
    every_three.flush()
    assert samples("batched_seconds") == samples("direct_seconds")
    assert samples("batched_seconds")[("_count", None)] == len(observed)
