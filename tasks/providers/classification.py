"""From a provider's answer to one :class:`Outcome`: the tables, and the parsing they share.

The mapping is data: each table is a tuple of :class:`Rule` rows ``(kinds, code, subcode,
outcome, why)``, checked **in order, first match wins** (so a row with a subcode comes before
the row for the same code with any subcode). ``tests/providers/test_classification.py`` runs
one case per row, each with a realistic answer of that provider.

* :data:`GRAPH_RULES` — Meta Graph ``error.code`` / ``error.error_subcode`` (Messenger, WhatsApp).
* :data:`EVOLUTION_RULES` — Evolution API HTTP status / a condition read from the body.
* :data:`WEBHOOK_RULES` — tenant webhooks, by HTTP status.
* :data:`HTTP_STATUS_RULES` — the fallback for every HTTP provider when no row above matched:
  429 throttled, 408 and 5xx transient, any other 4xx permanent. So an **unknown Graph code
  is permanent on a 4xx answer and transient on a 5xx answer**.
* :data:`SMTP_RULES` — SMTP reply codes.

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
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tasks.providers.base import Outcome, ProviderKind, SendResult, VerifyResult
from tasks.providers.ssrf import BlockedDestination, find_blocked

K = ProviderKind
MESSENGER = frozenset({K.MESSENGER})
WHATSAPP = frozenset({K.WHATSAPP})
GRAPH = frozenset({K.MESSENGER, K.WHATSAPP})
EVOLUTION = frozenset({K.EVOLUTION})
WEBHOOK = frozenset({K.WEBHOOK})
SMTP = frozenset({K.SMTP})
HTTP_KINDS = frozenset(K) - SMTP


@dataclass(frozen=True, slots=True)
class Rule:
    """One row: for these provider kinds, this code (and subcode, None = any) means this outcome."""

    kinds: frozenset[ProviderKind]
    code: int | range
    subcode: int | str | None
    outcome: Outcome
    why: str

    def matches(self, kind: ProviderKind, code: int, subcode: int | str | None = None) -> bool:
        in_code = code in self.code if isinstance(self.code, range) else code == self.code
        return kind in self.kinds and in_code and (self.subcode is None or self.subcode == subcode)


Out = Outcome

GRAPH_RULES: tuple[Rule, ...] = (
    Rule(MESSENGER, 10, 2018278, Out.PERMANENT, "outside the messaging window for this person"),
    Rule(MESSENGER, 100, 2018001, Out.PERMANENT, "no matching user: the PSID is unknown to this page"),
    Rule(GRAPH, 1, None, Out.TRANSIENT, "API unknown error; Meta says retry later"),
    Rule(GRAPH, 2, None, Out.TRANSIENT, "API service temporarily unavailable"),
    Rule(WHATSAPP, 131000, None, Out.TRANSIENT, "something went wrong on WhatsApp's side"),
    Rule(WHATSAPP, 131016, None, Out.TRANSIENT, "WhatsApp service temporarily unavailable"),
    Rule(GRAPH, 1200, None, Out.TRANSIENT, "temporary send message failure"),
    Rule(GRAPH, 4, None, Out.THROTTLED, "application request limit reached"),
    Rule(GRAPH, 613, None, Out.THROTTLED, "calls to this API exceeded the rate limit"),
    Rule(WHATSAPP, 130429, None, Out.THROTTLED, "Cloud API message throughput reached"),
    Rule(WHATSAPP, 80007, None, Out.THROTTLED, "WhatsApp Business Account rate limit reached"),
    Rule(
        WHATSAPP, 131056, None, Out.RECIPIENT_PACED, "pair rate limit: too many messages to this one number"
    ),
    Rule(GRAPH, 190, None, Out.PAGE_FATAL, "access token invalid or expired (any subcode)"),
    Rule(GRAPH, 0, None, Out.PAGE_FATAL, "AuthException: the token cannot be used"),
    Rule(GRAPH, 10, None, Out.PAGE_FATAL, "permission denied for this app or page"),
    Rule(GRAPH, range(200, 300), None, Out.PAGE_FATAL, "a permission the token needs is missing (200-299)"),
    Rule(GRAPH, 368, None, Out.PAGE_FATAL, "temporarily blocked for policy violations"),
    Rule(WHATSAPP, 131048, None, Out.PAGE_FATAL, "spam rate limit hit: the number is restricted"),
    Rule(WHATSAPP, 131031, None, Out.PAGE_FATAL, "the business account is locked"),
    Rule(WHATSAPP, 131045, None, Out.PAGE_FATAL, "the sending phone number is not registered"),
    Rule(WHATSAPP, 131026, None, Out.PERMANENT, "message undeliverable to this recipient"),
    Rule(WHATSAPP, 131047, None, Out.PERMANENT, "outside the 24 h customer service window: needs a template"),
    Rule(WHATSAPP, 131051, None, Out.PERMANENT, "unsupported message type"),
    Rule(WHATSAPP, 131021, None, Out.PERMANENT, "recipient is the sending number"),
    Rule(WHATSAPP, 131052, None, Out.PERMANENT, "the message's media could not be downloaded"),
    Rule(WHATSAPP, 132000, None, Out.PERMANENT, "template parameter count mismatch"),
    Rule(WHATSAPP, 132001, None, Out.PERMANENT, "template does not exist in this language"),
    Rule(WHATSAPP, 132012, None, Out.PERMANENT, "template parameter format mismatch"),
    Rule(GRAPH, 100, None, Out.PERMANENT, "invalid parameter (bad recipient or payload)"),
    Rule(MESSENGER, 551, None, Out.PERMANENT, "this person isn't available right now"),
)

EVOLUTION_RULES: tuple[Rule, ...] = (
    Rule(EVOLUTION, 400, "exists:false", Out.PERMANENT, "the number is not on WhatsApp"),
    Rule(EVOLUTION, 401, None, Out.PAGE_FATAL, "the API key was rejected"),
    Rule(EVOLUTION, 403, None, Out.PAGE_FATAL, "the API key may not use this instance"),
    Rule(EVOLUTION, 404, "instance", Out.PAGE_FATAL, "the instance does not exist"),
    Rule(
        EVOLUTION, 404, None, Out.PAGE_FATAL, "no such route: the base URL is not an Evolution API v2 server"
    ),
)

WEBHOOK_RULES: tuple[Rule, ...] = (
    Rule(WEBHOOK, range(300, 400), None, Out.PAGE_FATAL, "redirect not followed (only 307/308, 3 hops)"),
)

HTTP_STATUS_RULES: tuple[Rule, ...] = (
    Rule(HTTP_KINDS, 429, None, Out.THROTTLED, "too many requests"),
    Rule(HTTP_KINDS, 408, None, Out.TRANSIENT, "the server timed out reading the request"),
    Rule(HTTP_KINDS, range(500, 600), None, Out.TRANSIENT, "server error; also unknown Graph codes on 5xx"),
    Rule(
        HTTP_KINDS,
        range(400, 500),
        None,
        Out.PERMANENT,
        "other client error; also unknown Graph codes on 4xx",
    ),
)

SMTP_RULES: tuple[Rule, ...] = (
    Rule(SMTP, 421, None, Out.THROTTLED, "service not available / too many connections or messages"),
    Rule(SMTP, 450, None, Out.THROTTLED, "mailbox temporarily unavailable (greylisting, rate limit)"),
    Rule(SMTP, 454, None, Out.THROTTLED, "temporary authentication or TLS failure"),
    Rule(SMTP, 451, None, Out.TRANSIENT, "local error in processing"),
    Rule(SMTP, 452, None, Out.TRANSIENT, "insufficient system storage"),
    Rule(SMTP, 530, None, Out.PAGE_FATAL, "authentication required"),
    Rule(SMTP, 534, None, Out.PAGE_FATAL, "authentication mechanism too weak / web login required"),
    Rule(SMTP, 535, None, Out.PAGE_FATAL, "username and password not accepted"),
    Rule(SMTP, range(400, 500), None, Out.TRANSIENT, "other temporary failure"),
    Rule(SMTP, range(500, 600), None, Out.PERMANENT, "other permanent failure for this recipient or message"),
)

RULES: tuple[Rule, ...] = GRAPH_RULES + EVOLUTION_RULES + WEBHOOK_RULES + HTTP_STATUS_RULES + SMTP_RULES
UNCLASSIFIED = Rule(frozenset(K), range(0), None, Out.TRANSIENT, "answer matches no rule; retry")

_TABLES_BY_KIND: dict[ProviderKind, tuple[Rule, ...]] = {
    K.MESSENGER: GRAPH_RULES,
    K.WHATSAPP: GRAPH_RULES,
    K.EVOLUTION: EVOLUTION_RULES,
    K.WEBHOOK: WEBHOOK_RULES,
    K.SMTP: SMTP_RULES,
}


def first_match(
    rules: tuple[Rule, ...], kind: ProviderKind, code: int, subcode: int | str | None = None
) -> Rule:
    return next((rule for rule in rules if rule.matches(kind, code, subcode)), UNCLASSIFIED)


def classify_graph_code(kind: ProviderKind, status: int, code: int, subcode: int | None) -> Rule:
    """The rule for a Graph error: its code first, else the HTTP status fallback."""
    rule = first_match(GRAPH_RULES, kind, code, subcode)
    return rule if rule is not UNCLASSIFIED else first_match(HTTP_STATUS_RULES, kind, status)


def classify_status(kind: ProviderKind, status: int, condition: str | None = None) -> Rule:
    """The rule for an HTTP status (Evolution, webhook, or a Graph answer without an error code)."""
    rule = first_match(_TABLES_BY_KIND.get(kind, ()), kind, status, condition)
    return rule if rule is not UNCLASSIFIED else first_match(HTTP_STATUS_RULES, kind, status)


def classify_smtp_code(code: int) -> Rule:
    return first_match(SMTP_RULES, K.SMTP, code)


RETRYABLE_OUTCOMES = frozenset({Out.TRANSIENT, Out.THROTTLED, Out.RECIPIENT_PACED})


def retryable_code(kind: ProviderKind, code: int) -> bool:
    """Whether the provider's own table says a failure with ``code`` may succeed if sent again later
    (for failures reported after the send, by receipt); a code no row names is not."""
    rule = first_match(_TABLES_BY_KIND.get(kind, ()), kind, code)
    return rule is not UNCLASSIFIED and rule.outcome in RETRYABLE_OUTCOMES


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
