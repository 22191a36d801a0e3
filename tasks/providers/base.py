"""The one small interface every provider adapter implements.

An adapter builds the provider's request for one message, sends it asynchronously over a
shared client, and classifies the answer into an :class:`Outcome`. It never raises for a
provider's answer, a timeout or a connection error: those are outcomes too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol
from urllib.parse import quote, quote_plus

from tenants.pages import ProviderKind
from tenants.provider_codes import Outcome

__all__ = [
    "Outcome",
    "OutgoingMessage",
    "PageConnection",
    "ProviderAdapter",
    "ProviderKind",
    "SendResult",
    "TemplateRef",
    "VerifyResult",
]


@dataclass(frozen=True, slots=True)
class TemplateRef:
    """An approved WhatsApp template: name, language and body parameters in order."""

    name: str
    language: str
    body_parameters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One rendered message for one recipient.

    ``reference`` is Crier's delivery id; adapters send it in the provider's own reference
    field (WhatsApp ``biz_opaque_callback_data``, Messenger ``message.metadata``, an
    ``X-Crier-Delivery`` mail header, the webhook body) so receipts and the sandbox ledger
    can be matched to deliveries.
    """

    reference: str
    recipient: str  # E.164 phone, Messenger page-scoped id, email address, or contact id (webhook)
    text: str
    subject: str | None = None
    html: str | None = None
    media_url: str | None = None
    media_type: str | None = None  # image | document | video | audio (tenants.templating.MEDIA_TYPES)
    template: TemplateRef | None = None
    unsubscribe_url: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    provider_message_id: str | None = None
    code: str | None = None  # the provider's error code (HTTP status, Graph code[/subcode], SMTP code)
    detail: str | None = None  # the provider's error text, or what went wrong locally
    retry_after: float | None = None  # seconds, from Retry-After or the provider's hint
    maybe_delivered: bool = False  # the request may have reached the provider (read timeout, garbled 2xx)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    detail: str  # what the provider said, for the user ("Acme Support (+1 555…) quality GREEN")
    code: str | None = None


@dataclass(frozen=True, slots=True)
class PageConnection:
    """What an adapter needs to know about a page (credentials already decrypted).

    ``allowed_hosts`` ("host:port") lets this connection reach those internal hosts despite
    the SSRF guard — the sandbox in development and tests. It is decided by the server, never
    read from the page's stored settings, which tenants edit.
    """

    kind: ProviderKind
    base_url: str
    credentials: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    allowed_hosts: frozenset[str] = frozenset()


class ProviderAdapter(Protocol):
    kind: ClassVar[ProviderKind]

    async def send(self, message: OutgoingMessage) -> SendResult: ...

    async def verify(self) -> VerifyResult: ...

    def flush_metrics(self) -> None:
        """Write the request times observed so far (they are written in batches)."""

    async def aclose(self) -> None: ...


REDACTED = "[redacted]"


def redact(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every form of every secret (see :func:`secret_forms`) replaced by ``[redacted]``.

    Secrets shorter than 4 characters are left alone: replacing them would garble the text and
    they protect nothing anyway.
    """
    if not text:
        return text
    forms = {form.decode() for secret in secrets for form in secret_forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


def secret_forms(secret: str) -> set[bytes]:
    """How ``secret`` may appear: as is, URL-encoded, JSON-escaped (none for secrets under 4 characters)."""
    if len(secret) < 4:
        return set()
    json_escaped = json.dumps(secret)[1:-1]
    forms = (
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json_escaped,
        json_escaped.replace("/", "\\/"),
    )
    return {form.encode() for form in forms}


def redact_result(result: SendResult, secrets: Iterable[str]) -> SendResult:
    return replace(result, detail=redact(result.detail, secrets), code=redact(result.code, secrets))


def redact_verify(result: VerifyResult, secrets: Iterable[str]) -> VerifyResult:
    return replace(result, detail=redact(result.detail, secrets) or "", code=redact(result.code, secrets))
