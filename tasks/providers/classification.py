"""From a provider's answer to one :class:`Outcome`: the parsing the adapters share.

What each code means is data in ``tenants.provider_codes`` (its tables are imported here too):
``tests/providers/test_classification.py`` runs one case per row, each with a realistic answer
of that provider.

Answers that are not the provider's JSON at all (an HTML error page from a proxy, an empty
body, truncated JSON) are transient — throttled on 429 — and a 2xx answer that cannot be read
is transient with ``maybe_delivered=True``: the provider may have accepted the message.
Transport failures are transient; ``maybe_delivered`` is set only when the request may have
reached the provider (read timeout, connection lost while waiting for the answer), never for
connect errors or connect/pool timeouts.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tasks.providers.base import ProviderKind, SendResult, VerifyResult
from tasks.providers.ssrf import BlockedDestination, find_blocked
from tenants.provider_codes import (  # noqa: F401  (the tables, here for the adapters and their tests)
    EVOLUTION,
    EVOLUTION_RULES,
    GRAPH,
    GRAPH_RULES,
    HTTP_KINDS,
    HTTP_STATUS_RULES,
    MESSENGER,
    RULES,
    SMTP,
    SMTP_RULES,
    UNCLASSIFIED,
    WEBHOOK,
    WEBHOOK_RULES,
    WHATSAPP,
    K,
    Out,
    Outcome,
    Rule,
    classify_graph_code,
    classify_smtp_code,
    classify_status,
    first_match,
)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (never negative)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def snippet(text: str, limit: int = 160) -> str:
    """A short one-line excerpt of an answer body for ``detail``."""
    flat = re.sub(r"\s+", " ", text).strip()
    if not flat:
        return "(empty body)"
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def read_json(response: httpx.Response) -> Any | None:
    """The JSON body, or None if there is none or it does not parse."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def malformed_answer(response: httpx.Response, expected: str) -> SendResult:
    """An answer that is not what the provider sends: retry; a 2xx may have been delivered."""
    status = response.status_code
    success = response.is_success
    outcome = Out.THROTTLED if status == 429 else Out.TRANSIENT
    return SendResult(
        outcome,
        code=str(status),
        detail=f"HTTP {status} without {expected}: {snippet(response.text)}",
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        maybe_delivered=success,
    )


def graph_answer(
    kind: ProviderKind, response: httpx.Response, message_id: Callable[[dict[str, Any]], Any]
) -> SendResult:
    """Classify a Graph (Messenger or WhatsApp) answer to a send."""
    body = read_json(response)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        return graph_error(kind, response, error)
    if response.is_success and isinstance(body, dict):
        provider_id = _safe(message_id, body)
        if isinstance(provider_id, str) and provider_id:
            return SendResult(Out.SENT, provider_message_id=provider_id)
    return malformed_answer(response, "a Graph answer")


def graph_error(kind: ProviderKind, response: httpx.Response, error: dict[str, Any]) -> SendResult:
    code: int = error["code"]
    subcode = error.get("error_subcode")
    subcode = subcode if isinstance(subcode, int) else None
    rule = classify_graph_code(kind, response.status_code, code, subcode)
    return SendResult(
        rule.outcome,
        code=f"{code}/{subcode}" if subcode is not None else str(code),
        detail=graph_error_text(error),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def graph_error_text(error: dict[str, Any]) -> str:
    """The provider's words: message, WhatsApp's ``error_data.details`` and the trace id."""
    parts = [str(error.get("message") or error.get("type") or "Graph error")]
    data = error.get("error_data")
    if isinstance(data, dict) and data.get("details"):
        parts.append(f"— {data['details']}")
    if error.get("fbtrace_id"):
        parts.append(f"(fbtrace_id {error['fbtrace_id']})")
    return " ".join(parts)


def _safe(extract: Callable[[dict[str, Any]], Any], body: dict[str, Any]) -> Any:
    try:
        return extract(body)
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def transport_failure(exc: httpx.HTTPError | httpx.InvalidURL, label: str) -> SendResult:
    """A request that got no usable answer: refused by the SSRF guard, not sent, or maybe sent."""
    blocked = exc if isinstance(exc, BlockedDestination) else find_blocked(exc)
    if blocked is not None:
        return SendResult(Out.PAGE_FATAL, code="ssrf", detail=f"{label} URL {blocked.reason}")
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return SendResult(Out.TRANSIENT, detail=f"timed out connecting to {label}: {text}")
    if isinstance(exc, httpx.ConnectError):
        return SendResult(Out.TRANSIENT, detail=f"could not connect to {label}: {text}")
    if isinstance(exc, httpx.WriteTimeout | httpx.WriteError):
        return SendResult(Out.TRANSIENT, detail=f"could not finish sending to {label}: {text}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return SendResult(Out.PAGE_FATAL, detail=f"{label} URL is not usable: {text}")
    if isinstance(exc, httpx.ReadTimeout):
        return SendResult(
            Out.TRANSIENT, detail=f"{label} did not answer in time: {text}", maybe_delivered=True
        )
    return SendResult(
        Out.TRANSIENT,
        detail=f"lost the answer from {label} ({type(exc).__name__}: {text})",
        maybe_delivered=True,
    )


def verify_failure(result: SendResult) -> VerifyResult:
    """A failed check, worded for the page's settings screen."""
    return VerifyResult(ok=False, detail=result.detail or result.outcome.value, code=result.code)
