"""A per-token request limit for ``/api/v1``, told in ``RateLimit-*`` headers on every answer.

A fixed window of :data:`WINDOW_SECONDS` counted in Redis (one INCR and EXPIRE per request, shared by
every web process). Over the limit: 429 with ``Retry-After`` (the seconds until the window ends).
The headers follow the IETF draft "RateLimit header fields for HTTP": ``RateLimit-Limit``,
``RateLimit-Remaining``, ``RateLimit-Reset`` and ``RateLimit-Policy``.
"""

from __future__ import annotations

import logging
import time

import redis
from flask import Response, current_app, g

from tasks.connections import redis_client
from webapp.api.auth import current_token
from webapp.api.problems import ApiProblem

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60


def count_request() -> None:
    """Count this request against its token's window; over the limit, answer 429 (with Redis
    unreachable, the request is not counted: the API stays open, without the headers)."""
    limit = int(current_app.config["API_REQUESTS_PER_MINUTE"])
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    key = f"{current_app.config['REDIS_PREFIX']}:api:rate:{current_token().digest[:32]}:{window}"
    pipe = redis_client().pipeline()
    pipe.incr(key)
    pipe.expire(key, WINDOW_SECONDS + 5)
    try:
        used, _ = pipe.execute()
    except (redis.RedisError, OSError) as exc:  # the API stays open while its counter is unreachable
        log.warning("API rate limit not counted: Redis unreachable (%s)", exc.__class__.__name__)
        return
    reset = max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))
    g.rate_limit = {
        "RateLimit-Limit": limit,
        "RateLimit-Remaining": max(0, limit - used),
        "RateLimit-Reset": reset,
        "RateLimit-Policy": f"{limit};w={WINDOW_SECONDS}",
    }
    if used > limit:
        raise ApiProblem(
            "rate-limited",
            f"This token may make {limit} requests a minute; try again in {reset} s.",
            headers={"Retry-After": reset},
        )


def tell_limit(response: Response) -> Response:
    for name, value in g.get("rate_limit", {}).items():
        response.headers[name] = str(value)
    return response
