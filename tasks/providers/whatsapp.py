"""WhatsApp Cloud API numbers (see WIRE.md, "WhatsApp Cloud API")."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from tasks.providers.base import (
    Outcome,
    OutgoingMessage,
    PageConnection,
    ProviderKind,
    SendResult,
    VerifyResult,
)
from tasks.providers.classification import graph_answer, read_json, verify_failure
from tasks.providers.http import HttpAdapter
from tenants.templating import guess_media_type, media_file_name

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"


def wa_number(recipient: str) -> str:
    """WhatsApp's ``to``: the E.164 number's digits, without ``+``."""
    return re.sub(r"[^0-9]", "", recipient)


def media_type(message: OutgoingMessage) -> str:
    """The type of ``message``'s media: as the campaign says; a campaign started before Crier
    recorded it: told by the URL's extension, else a document (what any file can be sent as)."""
    return message.media_type or guess_media_type(message.media_url) or "document"


def unsendable(why: str) -> SendResult:
    """A message this channel cannot carry as it is (refused before any request; the template
    check refuses such templates at save and at campaign start, so only older campaigns get here)."""
    return SendResult(Outcome.PERMANENT, code="unsupported_media", detail=why)


def whatsapp_media(message: OutgoingMessage, kind: str, *, caption: bool) -> dict[str, str]:
    """The Cloud API media object: ``link``, the text as ``caption`` (never for audio), a document's
    ``filename``."""
    media = {"link": message.media_url or ""}
    if caption and message.text and kind != "audio":
        media["caption"] = message.text
    if kind == "document":
        media["filename"] = media_file_name(media["link"])
    return media


class WhatsAppAdapter(HttpAdapter):
    """Sends text, media (the text as its caption) or an approved template (media as its header)
    from one phone number id; the reference rides in ``biz_opaque_callback_data`` and comes back
    in status callbacks."""

    kind: ClassVar[ProviderKind] = ProviderKind.WHATSAPP
    trusted_base_url: ClassVar[str | None] = DEFAULT_BASE_URL
    label: ClassVar[str] = "WhatsApp"

    def _setup(self, connection: PageConnection) -> None:
        settings = connection.settings
        base = (connection.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._phone_number_id = str(settings.get("phone_number_id") or "")
        self._node = f"{base}/{settings.get('api_version') or DEFAULT_API_VERSION}/{self._phone_number_id}"
        self._headers = {"Authorization": f"Bearer {connection.credentials.get('access_token', '')}"}

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        """The Cloud API body: a template when ``message.template`` is set (its media as the header),
        else the media with the text as caption, else plain text."""
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": wa_number(message.recipient),
        }
        if message.template is not None:
            template: dict[str, Any] = {
                "name": message.template.name,
                "language": {"code": message.template.language},
            }
            components = []
            if message.media_url:
                kind = media_type(message)
                header = {"type": kind, kind: whatsapp_media(message, kind, caption=False)}
                components.append({"type": "header", "parameters": [header]})
            if message.template.body_parameters:
                parameters = [{"type": "text", "text": value} for value in message.template.body_parameters]
                components.append({"type": "body", "parameters": parameters})
            if components:
                template["components"] = components
            payload |= {"type": "template", "template": template}
        elif message.media_url:
            kind = media_type(message)
            payload |= {"type": kind, kind: whatsapp_media(message, kind, caption=True)}
        else:
            payload |= {"type": "text", "text": {"preview_url": False, "body": message.text}}
        payload["biz_opaque_callback_data"] = message.reference
        return payload

    async def _send(self, message: OutgoingMessage) -> SendResult:
        if message.media_url and media_type(message) == "audio":
            if message.template is not None:
                return unsendable("an approved template's header cannot be audio")
            if message.text:
                return unsendable("WhatsApp sends audio without a caption, so the text cannot go with it")
        answer = await self._request(
            "POST", f"{self._node}/messages", headers=self._headers, json=self.payload(message)
        )
        if isinstance(answer, SendResult):
            return answer
        return graph_answer(self.kind, answer, lambda body: body["messages"][0]["id"])

    async def _verify(self) -> VerifyResult:
        if not self._phone_number_id:
            return VerifyResult(ok=False, detail="the page has no phone_number_id")
        answer = await self._request(
            "GET",
            self._node,
            params={"fields": "verified_name,display_phone_number,quality_rating"},
            headers=self._headers,
        )
        if isinstance(answer, SendResult):
            return verify_failure(answer)
        body = read_json(answer)
        if answer.is_success and isinstance(body, dict) and body.get("display_phone_number"):
            name = body.get("verified_name") or "(unverified name)"
            quality = body.get("quality_rating") or "UNKNOWN"
            return VerifyResult(ok=True, detail=f"{name} ({body['display_phone_number']}) quality {quality}")
        return verify_failure(graph_answer(self.kind, answer, lambda _: None))
