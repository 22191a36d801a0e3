"""``Idempotency-Key`` on every POST: a retried request gets the first answer, not a second object.

The first request with a key marks it running in Redis (``SET NX``); its answer, unless a server
error, is then kept for :data:`KEPT_FOR` and replayed to every retry with the same key and the same
request (``Idempotent-Replayed: true``). The same key with a different request is a 422; a retry
while the first is still running is a 409. Keys belong to one token. A server error forgets the key,
so the retry runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta

import redis
from flask import Response, current_app, g, request

from tasks.connections import redis_client
from webapp.api.auth import current_token
from webapp.api.problems import ApiProblem

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
KEPT_FOR = timedelta(hours=24)
RUNNING_FOR = timedelta(minutes=2)  # a request that died mid-way frees its key after this
REPLAYED_HEADERS = ("Content-Type", "Location")


def _redis_key(key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{current_app.config['REDIS_PREFIX']}:api:idempotency:{current_token().digest[:32]}:{digest}"


def _fingerprint() -> str:
    parts = (request.method, request.full_path, request.get_data())
    return hashlib.sha256(b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts)).hexdigest()


def _replay(stored: dict) -> Response:
    response = Response(stored["body"], status=stored["status"])
    for name, value in stored["headers"].items():
        response.headers[name] = value
    response.headers["Idempotent-Replayed"] = "true"
    return response


def claim_key() -> Response | None:
    """Before a POST: replay the first answer, refuse a clash, or mark the key running."""
    key = request.headers.get(HEADER)
    if request.method != "POST" or key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise ApiProblem("invalid-request", f"An {HEADER} is 1 to {MAX_KEY_LENGTH} characters.")
    client, redis_key, fingerprint = redis_client(), _redis_key(key), _fingerprint()
    running = json.dumps({"fingerprint": fingerprint, "state": "running"})
    try:
        if client.set(redis_key, running, nx=True, ex=RUNNING_FOR):
            g.idempotency = (redis_key, fingerprint)
            return None
        stored_text = client.get(redis_key)
    except (redis.RedisError, OSError):
        raise ApiProblem(
            "unavailable",
            f"The {HEADER} cannot be checked right now (its store is unreachable); retry shortly.",
            headers={"Retry-After": 5},
        ) from None
    if stored_text is None:  # it expired between the two calls
        raise ApiProblem("idempotency-key-in-use", "The first request with this key just ended; retry.")
    stored = json.loads(stored_text)
    if stored["fingerprint"] != fingerprint:
        raise ApiProblem(
            "idempotency-key-reused",
            f"This {HEADER} was already used for a different request; use a new key for a new request.",
        )
    if stored["state"] == "running":
        raise ApiProblem(
            "idempotency-key-in-use",
            "The first request with this key is still running; retry in a moment.",
            headers={"Retry-After": 1},
        )
    return _replay(stored)


def keep_answer(response: Response) -> Response:
    """After a POST that claimed a key: keep its answer for retries (a server error frees the key)."""
    claimed = g.pop("idempotency", None)
    if claimed is None:
        return response
    redis_key, fingerprint = claimed
    client = redis_client()
    try:
        if response.status_code >= 500:
            client.delete(redis_key)
        else:
            client.set(redis_key, json.dumps(_kept(response, fingerprint)), ex=KEPT_FOR)
    except (redis.RedisError, OSError):  # the key stays "running" until it expires (RUNNING_FOR)
        log.exception("the answer to an Idempotency-Key could not be kept")
    return response


def _kept(response: Response, fingerprint: str) -> dict:
    return {
        "fingerprint": fingerprint,
        "state": "done",
        "status": response.status_code,
        "headers": {name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers},
        "body": response.get_data(as_text=True),
    }
