"""Facebook Messenger pages through the Graph Send API (see WIRE.md, "Messenger")."""

from __future__ import annotations

from typing import Any, ClassVar

from tasks.providers.base import OutgoingMessage, PageConnection, ProviderKind, SendResult, VerifyResult
from tasks.providers.classification import graph_answer, read_json, verify_failure
from tasks.providers.http import HttpAdapter
from tasks.providers.whatsapp import media_type, unsendable

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
ATTACHMENT_TYPES = {"image": "image", "video": "video", "audio": "audio", "document": "file"}


class MessengerAdapter(HttpAdapter):
    """Sends text, or one attachment, to a page-scoped id with ``messaging_type`` + ``tag``; the
    reference is ``metadata``. An attachment carries no text, so text with media is refused."""

    kind: ClassVar[ProviderKind] = ProviderKind.MESSENGER
    trusted_base_url: ClassVar[str | None] = DEFAULT_BASE_URL
    label: ClassVar[str] = "Messenger"

    def _setup(self, connection: PageConnection) -> None:
        settings = connection.settings
        base = (connection.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._api = f"{base}/{settings.get('api_version') or DEFAULT_API_VERSION}"
        self._token = connection.credentials.get("page_access_token", "")
        self._messaging_type = settings.get("messaging_type") or "MESSAGE_TAG"
        self._tag = settings.get("tag") or "ACCOUNT_UPDATE"
        self._page_id = settings.get("page_id")

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        """The Send API body for ``message``: its text, or its media as an attachment."""
        if message.media_url:
            attachment = {
                "type": ATTACHMENT_TYPES.get(media_type(message), "file"),
                "payload": {"url": message.media_url, "is_reusable": True},
            }
            content = {"attachment": attachment, "metadata": message.reference}
        else:
            content = {"text": message.text, "metadata": message.reference}
        payload: dict[str, Any] = {
            "recipient": {"id": message.recipient},
            "messaging_type": self._messaging_type,
            "message": content,
        }
        if self._messaging_type == "MESSAGE_TAG":
            payload["tag"] = self._tag
        return payload

    async def _send(self, message: OutgoingMessage) -> SendResult:
        if message.media_url and message.text:
            return unsendable("Messenger cannot send text with an attachment in one message")
        answer = await self._request(
            "POST",
            f"{self._api}/me/messages",
            params={"access_token": self._token},
            json=self.payload(message),
        )
        if isinstance(answer, SendResult):
            return answer
        return graph_answer(self.kind, answer, lambda body: body["message_id"])

    async def _verify(self) -> VerifyResult:
        answer = await self._request(
            "GET", f"{self._api}/me", params={"fields": "id,name", "access_token": self._token}
        )
        if isinstance(answer, SendResult):
            return verify_failure(answer)
        body = read_json(answer)
        if answer.is_success and isinstance(body, dict) and body.get("id"):
            page_id, name = str(body["id"]), body.get("name") or "(no name)"
            if self._page_id and str(self._page_id) != page_id:
                return VerifyResult(
                    ok=False, detail=f"the token belongs to page {name} ({page_id}), not {self._page_id}"
                )
            return VerifyResult(ok=True, detail=f"{name} (page {page_id})")
        return verify_failure(graph_answer(self.kind, answer, lambda _: None))
