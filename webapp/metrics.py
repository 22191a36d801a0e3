"""``GET /metrics``: Prometheus's view of every Crier process of this host (see tasks/metrics.py).

Not for the internet: with ``METRICS_TOKEN`` set it needs ``Authorization: Bearer <token>``;
without one it answers only requests made on this machine (from a loopback address, not passed on
by a proxy).
"""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from tasks.metrics import StateCollector
from webapp.extensions import csrf

bp = Blueprint("metrics", __name__)

FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


@bp.get("/metrics")
@csrf.exempt
def metrics():
    refusal = _refusal()
    if refusal is not None:
        return refusal
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(current_app.config["METRICS_DIR"]))
    registry.register(StateCollector(current_app._get_current_object()))
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))  # as Prometheus asks
    return _plain(encode(registry), 200, content_type)


def _refusal() -> Response | None:
    """Why this request may not read the metrics, as the answer to give; None when it may."""
    token = current_app.config["METRICS_TOKEN"]
    if token:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode()):
            return None
        refused = _plain(b"A valid metrics token is required.\n", 401)
        refused.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    if _from_this_machine():
        return None
    return _plain(b"Not found.\n", 404)


def _from_this_machine() -> bool:
    if any(header in request.headers for header in FORWARDING_HEADERS):
        return False  # a proxy passed it on: whoever sent it may be anywhere
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def _plain(body: bytes, status: int, content_type: str = "text/plain; charset=utf-8") -> Response:
    response = Response(body, status, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response
