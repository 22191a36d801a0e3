"""Evolution API v2 instances, self-hosted by the tenant (see WIRE.md, "Evolution API").

The base URL is the tenant's own server, so requests pass the SSRF guard like webhooks do.
Evolution does not carry Crier's reference; the provider id is the answer's ``key.id``.
Text goes to ``sendText``; an image, a video or a document (the text as its caption) to
``sendMedia``; audio, which carries no caption, to ``sendWhatsAppAudio`` as a voice note.
"""

from __future__ import annotations

import mimetypes
from typing import Any, ClassVar
from urllib.parse import quote

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
    malformed_answer,
    parse_retry_after,
    read_json,
    snippet,
    verify_failure,
)
from tasks.providers.http import HttpAdapter
from tasks.providers.whatsapp import media_type, unsendable, wa_number
from tenants.templating import media_file_name


def error_condition(status: int, body: Any) -> str | None:
    """The refinement of an error status the rules know: ``exists:false`` or ``instance``."""
    response = body.get("response") if isinstance(body, dict) else None
    message = response.get("message") if isinstance(response, dict) else None
    entries = message if isinstance(message, list) else [message]
    if status == 400 and any(isinstance(e, dict) and e.get("exists") is False for e in entries):
        return "exists:false"
    if status == 404 and any(isinstance(e, str) and "instance" in e.lower() for e in entries):
        return "instance"
    return None


def error_text(body: dict[str, Any]) -> str:
    response = body.get("response")
    message = response.get("message") if isinstance(response, dict) else None
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    return " — ".join(str(part) for part in (body.get("error"), message) if part) or snippet(str(body))


def evolution_answer(response: httpx.Response) -> SendResult:
    """Classify Evolution's answer to ``sendText``, ``sendMedia`` or ``sendWhatsAppAudio``."""
    body = read_json(response)
    if not isinstance(body, dict):
        return malformed_answer(response, "an Evolution JSON answer")
    if response.is_success:
        key = body.get("key")
        provider_id = key.get("id") if isinstance(key, dict) else None
        if isinstance(provider_id, str) and provider_id:
            return SendResult(Outcome.SENT, provider_message_id=provider_id)
        return malformed_answer(response, "a message key")
    rule = classify_status(
        ProviderKind.EVOLUTION, response.status_code, error_condition(response.status_code, body)
    )
    return SendResult(
        rule.outcome,
        code=str(response.status_code),
        detail=error_text(body),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


class EvolutionAdapter(HttpAdapter):
    """Sends text or media through one Evolution instance, authenticated by the ``apikey`` header."""

    kind: ClassVar[ProviderKind] = ProviderKind.EVOLUTION
    label: ClassVar[str] = "Evolution"

    def _setup(self, connection: PageConnection) -> None:
        self._base = connection.base_url.rstrip("/")
        self._instance = quote(str(connection.settings.get("instance") or ""), safe="")
        self._headers = {"apikey": connection.credentials.get("api_key", "")}

    async def _send(self, message: OutgoingMessage) -> SendResult:
        if message.media_url:
            return await self._send_media(message)
        answer = await self._request(
            "POST",
            f"{self._base}/message/sendText/{self._instance}",
            headers=self._headers,
            json={"number": wa_number(message.recipient), "text": message.text},
        )
        if isinstance(answer, SendResult):
            return answer
        return evolution_answer(answer)

    async def _send_media(self, message: OutgoingMessage) -> SendResult:
        url, kind = message.media_url or "", media_type(message)
        if kind == "audio":
            if message.text:
                return unsendable("WhatsApp sends audio without a caption, so the text cannot go with it")
            endpoint = "sendWhatsAppAudio"
            body: dict[str, Any] = {"number": wa_number(message.recipient), "audio": url}
        else:
            endpoint = "sendMedia"
            file_name = media_file_name(url)
            body = {
                "number": wa_number(message.recipient),
                "mediatype": kind,
                "media": url,
                "caption": message.text,
                "fileName": file_name,
            }
            mimetype = mimetypes.guess_type(file_name, strict=False)[0]
            if mimetype:
                body["mimetype"] = mimetype
        answer = await self._request(
            "POST", f"{self._base}/message/{endpoint}/{self._instance}", headers=self._headers, json=body
        )
        if isinstance(answer, SendResult):
            return answer
        return evolution_answer(answer)

    async def _verify(self) -> VerifyResult:
        answer = await self._request(
            "GET", f"{self._base}/instance/connectionState/{self._instance}", headers=self._headers
        )
        if isinstance(answer, SendResult):
            return verify_failure(answer)
        body = read_json(answer)
        if answer.is_success and isinstance(body, dict) and isinstance(body.get("instance"), dict):
            state = body["instance"].get("state")
            name = body["instance"].get("instanceName") or self._instance
            if state == "open":
                return VerifyResult(ok=True, detail=f"instance {name} is connected (state open)")
            return VerifyResult(
                ok=False, detail=f"instance {name} is not connected (state {state})", code=state
            )
        return verify_failure(evolution_answer(answer))
