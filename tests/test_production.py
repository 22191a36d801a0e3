"""The production set-up as an operator runs it: ``deploy/check-production`` (gunicorn with
gunicorn.conf.py, two Dramatiq worker processes, a campaign) against this run's PostgreSQL and Redis."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import redis

from tests.conftest import PG_ADMIN_URL, PROJECT_ROOT, REDIS_URL

SCRIPT = PROJECT_ROOT / "deploy" / "check-production"


def test_check_production_sends_a_campaign_through_gunicorn_and_two_workers_and_leaves_nothing():
    assert os.access(SCRIPT, os.X_OK)
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}  # a fresh one
    env.update(CRIER_CHECK_POSTGRES=PG_ADMIN_URL, REDIS_URL=REDIS_URL)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            process.terminate()  # the script's own clean-up still runs
            process.communicate(timeout=60)

    assert process.returncode == 0, output
    assert "check-production: OK" in output
    assert "300 contacts: completed, 300 sent" in output
    assert "sandbox ledger: 300 messages, each recipient exactly once" in output
    assert "GET /login 200 (X-Request-ID echoed), GET /healthz 200" in output
    assert "Socket.IO websocket open" in output
    assert "every line JSON" in output and "nothing left running" in output

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"crier_prod_check_{process.pid}_%",)
        ).fetchall()
    assert left == []
    assert list(redis.Redis.from_url(REDIS_URL).scan_iter(match=f"crier-prod-check-{process.pid}_*")) == []
