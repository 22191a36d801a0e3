"""Outbound webhooks: a signed JSON POST to the tenant's URL per message (see WIRE.md, "Webhook").

The receiver checks ``X-Crier-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``
and ``X-Crier-Timestamp``. The URL is the tenant's, so every hop passes the SSRF guard;
307/308 redirects (which keep the method and body) are followed up to three times, other
redirects would turn the POST into a GET and are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, ClassVar

import httpx

from tasks.providers.base import (
    Outcome,
    OutgoingMessage,
    PageConnection,
    ProviderKind,
    SendResult,
    VerifyResult,
)
from tasks.providers.classification import (
    classify_status,
    parse_retry_after,
    read_json,
    snippet,
    verify_failure,
)
from tasks.providers.http import HttpAdapter
from tasks.providers.whatsapp import media_type

MAX_REDIRECTS = 3
FOLLOWED_REDIRECTS = frozenset({307, 308})


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Crier-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhook_answer(response: httpx.Response, reference: str) -> SendResult:
    """2xx sent (id: the answer's JSON ``id`` or ``webhook-<reference>``), else by status."""
    status = response.status_code
    if response.is_success:
        body = read_json(response)
        answer_id = body.get("id") if isinstance(body, dict) else None
        provider_id = str(answer_id) if isinstance(answer_id, str | int) and answer_id != "" else None
        return SendResult(Outcome.SENT, provider_message_id=provider_id or f"webhook-{reference}")
    rule = classify_status(ProviderKind.WEBHOOK, status)
    if response.is_redirect:
        detail = f"HTTP {status} redirect to {response.headers.get('location', '(no location)')}: {rule.why}"
    else:
        detail = f"HTTP {status}: {snippet(response.text)}"
    return SendResult(
        rule.outcome,
        code=str(status),
        detail=detail,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


class WebhookAdapter(HttpAdapter):
    """POSTs each message as signed JSON to the page's URL (``PageConnection.base_url``)."""

    kind: ClassVar[ProviderKind] = ProviderKind.WEBHOOK
    label: ClassVar[str] = "webhook"

    def _setup(self, connection: PageConnection) -> None:
        self._url = connection.base_url
        self._secret = connection.credentials.get("signing_secret", "")

    def signed(self, payload: dict[str, Any], *, now: float | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one delivery."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        timestamp = str(int(time.time() if now is None else now))
        headers = {
            "Content-Type": "application/json",
            "X-Crier-Timestamp": timestamp,
            "X-Crier-Signature": signature(self._secret, timestamp, body),
        }
        return body, headers

    async def _post(self, payload: dict[str, Any]) -> httpx.Response | SendResult:
        """POST ``payload``, following 307/308 redirects (each hop re-checked) at most 3 times."""
        body, headers = self.signed(payload)
        url = self._url
        for _ in range(MAX_REDIRECTS + 1):
            answer = await self._request("POST", url, content=body, headers=headers)
            if isinstance(answer, SendResult) or answer.status_code not in FOLLOWED_REDIRECTS:
                return answer
            location = answer.headers.get("location")
            if not location:
                return answer
            url = str(answer.url.join(location))
        return SendResult(
            Outcome.PAGE_FATAL,
            code=str(answer.status_code),
            detail=f"webhook redirects more than {MAX_REDIRECTS} times",
        )

    async def _send(self, message: OutgoingMessage) -> SendResult:
        payload: dict[str, Any] = {
            "delivery": message.reference,
            "recipient": message.recipient,
            "text": message.text,
            "subject": message.subject,
            "variables": message.variables,
        }
        if message.media_url:
            payload["media_url"] = message.media_url
            payload["media_type"] = media_type(message)
        answer = await self._post(payload)
        if isinstance(answer, SendResult):
            return answer
        return webhook_answer(answer, message.reference)

    async def _verify(self) -> VerifyResult:
        answer = await self._post({"type": "ping"})
        if isinstance(answer, SendResult):
            return verify_failure(answer)
        if answer.is_success:
            return VerifyResult(
                ok=True, detail=f"the webhook answered the signed ping with HTTP {answer.status_code}"
            )
        return verify_failure(webhook_answer(answer, "ping"))
