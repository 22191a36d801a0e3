"""HMAC signatures for webhooks, both ways (constant-time comparisons only)."""

from __future__ import annotations

import hashlib
import hmac
import time

MAX_CLOCK_SKEW_SECONDS = 300


def meta_signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def crier_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Crier-Signature`` value for a webhook body sent at ``timestamp`` (unix seconds)."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def same(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())


def fresh(timestamp: str | None, now: float | None = None) -> bool:
    """A signed timestamp within five minutes of now (replays of old requests are refused)."""
    try:
        return abs((now or time.time()) - int(timestamp or "")) <= MAX_CLOCK_SKEW_SECONDS
    except ValueError:
        return False
