"""Connections the workers share: the app's Redis client, and retrying database work whose
connection was lost."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from flask import current_app
from sqlalchemy.exc import DBAPIError, OperationalError

from tenants.db import db

log = logging.getLogger(__name__)
T = TypeVar("T")


def redis_client(app=None) -> redis.Redis:
    """The app's Redis client for limits and progress (not the broker's)."""
    app = app or current_app._get_current_object()
    client = app.extensions.get("crier.redis")
    if client is None:
        client = redis.Redis.from_url(
            app.config["REDIS_URL"], socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
        )
        app.extensions["crier.redis"] = client
    return client


def with_db_retry(work: Callable[[], T], what: str, attempts: int = 5) -> T:
    """Run ``work`` (which commits); on a lost connection or a lock error roll back and run it again."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except (OperationalError, DBAPIError) as exc:
            db.session.rollback()
            if attempt == attempts:
                raise
            log.warning("%s failed (%s); retrying", what, exc.__class__.__name__)
            time.sleep(min(2.0, 0.1 * 2**attempt))
    raise AssertionError("unreachable")
