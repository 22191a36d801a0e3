"""What providers' answer codes mean: the outcome each stands for and why, as data.

Each table is a tuple of :class:`Rule` rows ``(kinds, code, subcode, outcome, why)``, checked **in
order, first match wins** (so a row with a subcode comes before the row for the same code with any
subcode):

* :data:`GRAPH_RULES` — Meta Graph ``error.code`` / ``error.error_subcode`` (Messenger, WhatsApp).
* :data:`EVOLUTION_RULES` — Evolution API HTTP status / a condition read from the body.
* :data:`WEBHOOK_RULES` — tenant webhooks, by HTTP status.
* :data:`HTTP_STATUS_RULES` — the fallback for every HTTP provider when no row above matched:
  429 throttled, 408 and 5xx transient, any other 4xx permanent. So an **unknown Graph code
  is permanent on a 4xx answer and transient on a 5xx answer**.
* :data:`SMTP_RULES` — SMTP reply codes.

The adapters (``tasks.providers.classification``) classify each answer with them when they send;
the domain reads them again afterwards, for a failure's readable reason on the report and for
whether a failure is worth resending, from the code stored with the delivery.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

from tenants.pages import ProviderKind


class Outcome(enum.StrEnum):
    SENT = "sent"  # accepted; provider_message_id is set
    TRANSIENT = "transient"  # timeout, connection error, 5xx, malformed answer: retry later
    THROTTLED = "throttled"  # the whole page must slow down (429, 130429, 80007, 4, 613, SMTP 421/450/454)
    RECIPIENT_PACED = "recipient_paced"  # only this recipient must wait (WhatsApp 131056)
    PAGE_FATAL = "page_fatal"  # stop using the page: bad/expired token, spam limit, policy block
    PERMANENT = "permanent"  # this recipient can never get it: invalid/unreachable, outside window, SMTP 5xx


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
GRAPH_KINDS = (ProviderKind.MESSENGER, ProviderKind.WHATSAPP)


def rule_for_stored_code(kind: ProviderKind | None, code: str | None) -> Rule | None:
    """The classification row a stored provider code matched (``"131026"``, ``"100/2018001"``, ``"550"``)."""
    if kind is None or not code:
        return None
    number, _, sub = code.partition("/")
    if not number.isdigit() or (sub and not sub.isdigit()):
        return None
    main, subcode = int(number), int(sub) if sub else None
    if kind is ProviderKind.SMTP:
        rule = classify_smtp_code(main)
    elif kind in GRAPH_KINDS:
        rule = first_match(GRAPH_RULES, kind, main, subcode)
        if rule is UNCLASSIFIED and 100 <= main <= 599:  # an HTTP status: the answer had no Graph error
            rule = first_match(HTTP_STATUS_RULES, kind, main)
    else:
        rule = classify_status(kind, main)
    return None if rule is UNCLASSIFIED else rule


CRIER_REASONS = {
    "opted_out": "the contact opted out, so Crier did not send it",
    "missing_variable": "the contact lacks a value the message uses",
    "render_error": "the message could not be written for this contact",
    "lease_expired": "the worker stopped while sending: it may or may not have been delivered",
    "ssrf": "the page's address points into a private network, which Crier refuses to call",
}
"""Crier's own error codes (not a provider's), in words."""


@lru_cache(maxsize=1024)
def _why(kind: ProviderKind | None, code: str | None) -> str | None:
    if code in CRIER_REASONS:
        return CRIER_REASONS[code]
    rule = rule_for_stored_code(kind, code)
    return rule.why if rule is not None else None


def readable_reason(kind: ProviderKind | None, code: str | None, text: str | None) -> str:
    """Why a message failed, for people: the provider table's explanation of ``code`` (or Crier's own
    words for its own codes), then the provider's text when it adds something."""
    why = _why(kind, code)
    text = (text or "").strip()
    if why is None:
        return text or (f"code {code}" if code else "")
    why = why[:1].upper() + why[1:]
    if not text or text.casefold() in why.casefold():
        return why
    return f"{why} — {text}"


def retryable_code(kind: ProviderKind | None, code: str | None) -> bool:
    """Whether a failure stored with ``code`` may succeed if sent again later (WhatsApp 131000, an HTTP
    503), by the same tables that classify answers; a code no row names is not."""
    rule = rule_for_stored_code(kind, code)
    return rule is not None and rule.outcome in RETRYABLE_OUTCOMES
