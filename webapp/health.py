"""Liveness for load balancers and for `make run`."""

from __future__ import annotations

import redis
from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from tenants.db import db

bp = Blueprint("health", __name__)


def _redis_status() -> str:
    client = redis.Redis.from_url(current_app.config["REDIS_URL"], socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        return "unreachable"
    finally:
        client.close()
    return "ok"


@bp.get("/healthz")
def healthz():
    """200 while the database answers; Redis is reported but not required (pages work without it)."""
    try:
        db.session.execute(text("SELECT 1"))
        database = "ok"
    except Exception:
        database = "unreachable"
    body = {
        "status": "ok" if database == "ok" else "degraded",
        "database": database,
        "redis": _redis_status(),
    }
    return jsonify(body), 200 if database == "ok" else 503
