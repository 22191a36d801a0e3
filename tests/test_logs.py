"""Log lines an operator can join up: JSON with the request, tenant and campaign ids, in web and
worker processes, still there after a migration run in-process."""

from __future__ import annotations

import json
import logging
import re
import threading

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select

from tasks import logs
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants
from tests.conftest import Auth, built_app


def json_lines(capsys) -> list[dict]:
    """What was logged to stderr since the last call, every line parsed (all must be JSON)."""
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture
def json_app(capsys):
    """An app logging JSON; built inside the test, so its lines go to the test's captured stderr."""
    with built_app(LOG_FORMAT="json", PROPAGATE_EXCEPTIONS=False) as app:

        @app.get("/boom")
        def boom():
            logging.getLogger("webapp.boom").info("about to fail")
            raise RuntimeError("the view broke")

        yield app
    with built_app():  # text again for the tests that follow
        pass


def test_a_requests_lines_carry_its_request_id_and_the_signed_in_workspace(json_app, capsys):
    client = json_app.test_client()
    Auth(client).signup()
    with json_app.app_context(), all_tenants(db.session):
        tenant_id = db.session.scalar(select(Tenant.id))
    capsys.readouterr()

    response = client.get("/boom")

    assert response.status_code == 500
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert request_id in response.get_data(as_text=True)  # the page gives it as a reference
    lines = json_lines(capsys)
    info = next(line for line in lines if line["message"] == "about to fail")
    assert info["level"] == "INFO" and info["logger"] == "webapp.boom" and info["timestamp"]
    assert (info["request_id"], info["tenant_id"]) == (request_id, tenant_id)
    failure = next(line for line in lines if line["level"] == "ERROR")
    assert failure["message"] == "Exception on /boom [GET]"
    assert "RuntimeError: the view broke" in failure["exception"]
    assert (failure["request_id"], failure["tenant_id"]) == (request_id, tenant_id)

    client.get("/boom")
    again = next(line for line in json_lines(capsys) if line["level"] == "ERROR")
    assert again["request_id"] != request_id  # each request its own


def test_a_sane_incoming_request_id_is_kept_and_echoed_even_on_a_refused_form(json_app, capsys):
    client = json_app.test_client()
    response = client.post("/login", data={"email": "a@b.example"}, headers={"X-Request-ID": "lb-7f3a.42"})

    assert response.status_code == 400 and response.headers["X-Request-ID"] == "lb-7f3a.42"
    refusal = next(line for line in json_lines(capsys) if "CSRF" in line["message"])
    assert refusal["request_id"] == "lb-7f3a.42" and "tenant_id" not in refusal


@pytest.mark.parametrize("incoming", ["x" * 500, "two words", 'quote"d', "tab\tbed", "", "é"])
def test_an_insane_incoming_request_id_is_replaced(client, incoming):
    response = client.get("/login", headers={"X-Request-ID": incoming})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_worker_lines_carry_the_message_id_and_what_the_actor_binds(json_app, capsys):
    broker = StubBroker()
    broker.add_middleware(logs.LogContextMiddleware())
    log = logging.getLogger("tasks.test")
    threads = set()

    @dramatiq.actor(broker=broker, actor_name="log_a_slice")
    def log_a_slice(campaign_id: int | None) -> None:
        threads.add(threading.get_ident())
        if campaign_id is None:
            log.info("no campaign")
            return
        with logs.bind(tenant_id=3, campaign_id=campaign_id):
            log.info("sending")
        log.info("sent")

    worker = dramatiq.Worker(broker, worker_threads=1)  # one thread: the second message follows the first
    worker.start()
    try:
        first = log_a_slice.send(9)
        second = log_a_slice.send(None)
        broker.join(log_a_slice.queue_name)
        worker.join()
    finally:
        worker.stop()

    assert len(threads) == 1
    lines = {line["message"]: line for line in json_lines(capsys) if line["logger"] == "tasks.test"}
    assert lines["sending"]["request_id"] == first.message_id
    assert (lines["sending"]["tenant_id"], lines["sending"]["campaign_id"]) == (3, 9)
    assert lines["sent"]["request_id"] == first.message_id and "campaign_id" not in lines["sent"]
    assert lines["no campaign"]["request_id"] == second.message_id  # nothing left over from the first
    assert "campaign_id" not in lines["no campaign"] and "tenant_id" not in lines["no campaign"]


def test_the_text_format_shows_the_ids_too(capsys):
    with built_app():
        capsys.readouterr()
        with logs.bind(request_id="r-1", campaign_id=9):
            logging.getLogger("tasks.test").warning("slow provider")
    line = capsys.readouterr().err.strip()
    assert line.endswith("[tasks.test] [WARNING] slow provider [request_id=r-1 campaign_id=9]"), line


def test_logging_goes_on_after_a_migration_run_in_process(json_app, capsys):
    from flask_migrate import upgrade

    already_there = logging.getLogger("tasks.test.before_migration")
    with json_app.app_context():
        upgrade()  # at head already: runs migrations/env.py, as `make run` and the tests' set-up do
        already_there.info("still heard")
        json_app.logger.warning("the app too")

    lines = json_lines(capsys)
    messages = [line["message"] for line in lines]
    assert "still heard" in messages and "the app too" in messages
    assert any(line["logger"].startswith("alembic") for line in lines)  # the migration's own lines, JSON
