"""Liveness and readiness for load balancers, orchestrators and `make run`."""

from __future__ import annotations

import redis
from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from tasks.heartbeat import live_workers
from tenants.db import db

bp = Blueprint("health", __name__)


def _redis() -> redis.Redis:
    return redis.Redis.from_url(current_app.config["REDIS_URL"], socket_connect_timeout=1, socket_timeout=1)


def _redis_status() -> str:
    client = _redis()
    try:
        client.ping()
    except redis.RedisError:
        return "unreachable"
    finally:
        client.close()
    return "ok"


def _database_status() -> str:
    try:
        db.session.execute(text("SELECT 1"))
    except Exception:
        db.session.rollback()
        return "unreachable"
    return "ok"


@bp.get("/healthz")
def healthz():
    """200 while the database answers; Redis is reported but not required (pages work without it)."""
    database = _database_status()
    body = {
        "status": "ok" if database == "ok" else "degraded",
        "database": database,
        "redis": _redis_status(),
    }
    return jsonify(body), 200 if database == "ok" else 503


@bp.get("/readyz")
def readyz():
    """200 when campaigns can run: the database and Redis answer and a worker's heartbeat is fresh.

    Also tells how many messages wait in each worker queue, for whoever scales the workers.
    """
    body = {"database": _database_status(), "redis": "ok", "workers": 0, "queues": {}}
    client = _redis()
    try:
        body["workers"] = len(live_workers(client, current_app.config["REDIS_PREFIX"]))
        broker = current_app.extensions["crier.workers"].broker
        names = sorted(broker.get_declared_queues())
        depths = client.pipeline()
        for name in names:
            depths.llen(f"{broker.namespace}:{name}")
        body["queues"] = dict(zip(names, depths.execute(), strict=True))
    except redis.RedisError:
        body["redis"] = "unreachable"
    finally:
        client.close()
    ready = body["database"] == "ok" and body["redis"] == "ok" and body["workers"] > 0
    body["status"] = "ready" if ready else "not ready"
    return jsonify(body), 200 if ready else 503
