"""Each provider's side of the wire: reading its requests and answering in its own format.

The formats follow ``tasks/providers/WIRE.md``. A request that a real provider would
refuse before looking at the message (bad credentials, malformed body, unknown account),
or that carries no message (a webhook ping), is answered at once by raising
:class:`Answered`; a well-formed one becomes a :class:`~tasks.sandbox.ledger.Message` that
the behaviour then judges.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from functools import lru_cache
from typing import Any, ClassVar, Protocol

from aiohttp import web

from tasks.sandbox.behaviour import Verdict
from tasks.sandbox.ledger import EVOLUTION, MESSENGER, WEBHOOK, WHATSAPP, Message

GRAPH_MAX_TEXT = 4096
GRAPH_MAX_CAPTION = 1024
MESSENGER_MAX_TEXT = 2000
MISSING_ACCOUNT = "missing"
WHATSAPP_MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")
WHATSAPP_CAPTIONED = ("image", "document", "video")
WHATSAPP_HEADER_MEDIA = ("image", "document", "video")
MESSENGER_ATTACHMENT_TYPES = ("image", "video", "audio", "file")
EVOLUTION_MEDIA_TYPES = ("image", "video", "document", "audio")
EVOLUTION_MESSAGE_FIELDS = {
    "image": "imageMessage",
    "video": "videoMessage",
    "document": "documentMessage",
    "audio": "audioMessage",
}


class Answered(Exception):
    """A request answered before it reaches the behaviour: a refusal of class ``reason``, or a
    request that carries no message (``reason`` None), such as a webhook ping."""

    def __init__(self, reason: str | None, response: web.Response, account: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response
        self.account = account


_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_NON_DIGITS = re.compile(r"\D")


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encode_json(payload).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def retry_after_header(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}


BAD_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def bad_gateway() -> web.Response:
    """What a load balancer in front of the provider answers when the provider is unreachable."""
    return web.Response(body=BAD_GATEWAY_PAGE, status=502, content_type="text/html")


def garbled(answer: web.Response, kind: str) -> web.Response:
    """``answer`` (an acceptance) with its status kept and its body emptied or cut in half."""
    body = bytes(answer.body or b"") if kind == "truncated" else b""
    return web.Response(body=body[: len(body) // 2], status=answer.status, content_type=answer.content_type)


def digits_of(address: str) -> str:
    """A phone number as WhatsApp ids it: the digits, without ``+`` or a JID suffix."""
    if address.isdigit():
        return address
    return _NON_DIGITS.sub("", address.split("@", 1)[0])


@lru_cache(maxsize=4096)
def fingerprint(credential: str) -> str:
    """A short digest naming the credential a message was sent with, so receipts go to the page that
    holds it (two pages may share a phone number id) without the sandbox keeping the secret."""
    return hashlib.sha256(credential.encode()).hexdigest()[:32]


def page_id_for_token(token: str) -> str:
    """The (deterministic, 15-digit) Messenger page a page access token belongs to."""
    digest = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big")
    return str(100_000_000_000_000 + digest % 900_000_000_000_000)


def messenger_account(account_or_token: str) -> str:
    """A Messenger account given as a page id, or as that page's access token."""
    return account_or_token if account_or_token.isdigit() else page_id_for_token(account_or_token)


def display_phone_number(phone_number_id: str) -> str:
    """The made-up business number shown for a WhatsApp phone number id (``+1 555-0123``)."""
    return f"+1 555-{int(digits_of(phone_number_id) or 0) % 10_000:04d}"


def _fields(request: web.Request, payload: dict[str, Any]) -> dict[str, Any]:
    wanted = request.query.get("fields")
    if not wanted:
        return payload
    names = {name.strip() for name in wanted.split(",")} | {"id"}
    return {name: value for name, value in payload.items() if name in names}


def graph_error(
    status: int,
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    error_data: dict[str, Any] | None = None,
    is_transient: bool = False,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if error_data is not None:
        error["error_data"] = error_data
    if is_transient:
        error["is_transient"] = True
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(15)
    return json_response({"error": error}, status, headers)


def graph_token(request: web.Request) -> str:
    """The access token of a Graph request (query ``access_token`` or ``Authorization: Bearer``)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else ""
    if not token:
        token = request.query.get("access_token", "")
    if not token:
        raise Answered(
            "unauthorized", graph_error(401, 190, "An access token is required to request this resource.")
        )
    if token.startswith("invalid"):
        raise Answered(
            "unauthorized", graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        )
    if token.startswith("expired"):
        raise Answered(
            "unauthorized",
            graph_error(401, 190, "Error validating access token: Session has expired.", subcode=463),
        )
    return token


def graph_bad_request(message: str, account: str | None = None) -> Answered:
    return Answered("bad_request", graph_error(400, 100, f"(#100) {message}"), account)


async def graph_json(request: web.Request, account: str | None) -> dict[str, Any]:
    try:
        payload = json.loads(await request.read())
    except ValueError:
        raise graph_bad_request("The request body could not be parsed as JSON.", account) from None
    if not isinstance(payload, dict):
        raise graph_bad_request("The request body must be a JSON object.", account)
    return payload


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _web_url(value: Any) -> str | None:
    """``value`` if it is an http(s) URL a provider could fetch, else None."""
    text = _text(value)
    return text if text is not None and text.startswith(("https://", "http://")) and " " not in text else None


def _objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of a list (anything else holds none)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


class Wire(Protocol):
    """One provider's send endpoint: read a message, answer its acceptance or refusal."""

    kind: ClassVar[str]

    async def read(self, request: web.Request) -> Message: ...

    def accepted(self, message: Message, message_id: str) -> web.Response: ...

    def refused(self, message: Message, verdict: Verdict, retry_after: float | None) -> web.Response: ...


class WhatsApp:
    """WhatsApp Cloud API: ``POST /{v}/{phone_number_id}/messages``."""

    kind = WHATSAPP

    async def read(self, request: web.Request) -> Message:
        account = request.match_info["node"]
        token = graph_token(request)
        if account == MISSING_ACCOUNT:
            raise Answered("not_found", self.unknown_object(account), account)
        payload = await graph_json(request, account)
        if payload.get("messaging_product") != "whatsapp":
            raise graph_bad_request("The parameter messaging_product is required.", account)
        to = _text(payload.get("to"))
        recipient = digits_of(to) if to else ""
        if not recipient:
            raise graph_bad_request("The parameter to is required.", account)
        body, media_url, media_type = self._content(payload, account)
        reference = _text(payload.get("biz_opaque_callback_data"))
        return Message(
            WHATSAPP, account, recipient, body, reference, fingerprint(token), media_url, media_type
        )

    @staticmethod
    def _content(payload: dict[str, Any], account: str) -> tuple[str, str | None, str | None]:
        """The message's text and its media (URL and type), refused as the Cloud API refuses them."""
        kind = payload.get("type", "text")
        content = payload.get(kind) if isinstance(kind, str) else None
        if not isinstance(content, dict):
            if kind in ("text", "template", *WHATSAPP_MEDIA_TYPES):
                raise graph_bad_request(f"The parameter {kind} is required.", account)
            raise graph_bad_request(
                "Param type must be one of {TEXT, TEMPLATE, IMAGE, DOCUMENT, ...}", account
            )
        if kind == "text":
            text = _text(content.get("body"))
            if text is None:
                raise graph_bad_request("The parameter text['body'] is required.", account)
            if len(text) > GRAPH_MAX_TEXT:
                raise graph_bad_request("Param text['body'] must be at most 4096 characters long.", account)
            return text, None, None
        if kind == "template":
            name = _text(content.get("name"))
            language = content.get("language")
            code = _text(language.get("code")) if isinstance(language, dict) else None
            if name is None or code is None:
                raise graph_bad_request(
                    "The parameters template['name'] and ['language'] are required.", account
                )
            components = _objects(content.get("components"))
            media_url, media_type = WhatsApp._header_media(components, account)
            parameters = [
                str(parameter.get("text", ""))
                for component in components
                if component.get("type") != "header"
                for parameter in _objects(component.get("parameters"))
            ]
            return f"[template {name}/{code}] " + " | ".join(parameters), media_url, media_type
        if kind in WHATSAPP_MEDIA_TYPES:
            return WhatsApp._media(kind, content, account)
        raise graph_bad_request("Param type must be one of {TEXT, TEMPLATE, IMAGE, DOCUMENT, ...}", account)

    @staticmethod
    def _media(kind: str, content: dict[str, Any], account: str) -> tuple[str, str | None, str | None]:
        """An image, document, audio, video or sticker message: ``link`` (or a Meta media ``id``)."""
        link = content.get("link")
        if link is None and _text(content.get("id")) is not None:
            link = f"media:{content['id']}"
        elif _web_url(link) is None:
            if link is None:
                raise graph_bad_request(f"The parameter {kind}['link'] or {kind}['id'] is required.", account)
            raise graph_bad_request(f"Param {kind}['link'] must be a valid URL.", account)
        caption = content.get("caption")
        if caption is not None:
            if kind not in WHATSAPP_CAPTIONED:
                raise graph_bad_request(
                    f"Param {kind}['caption'] is not supported for {kind} messages.", account
                )
            if not isinstance(caption, str) or len(caption) > GRAPH_MAX_CAPTION:
                raise graph_bad_request(
                    f"Param {kind}['caption'] must be a string of at most 1024 characters.", account
                )
        return caption or "", link, kind

    @staticmethod
    def _header_media(components: list[dict[str, Any]], account: str) -> tuple[str | None, str | None]:
        """The media of a template's header component (image, document or video), if it has one."""
        for component in components:
            if component.get("type") != "header":
                continue
            for parameter in _objects(component.get("parameters")):
                kind = parameter.get("type")
                if kind == "text":
                    continue
                if kind not in WHATSAPP_HEADER_MEDIA or not isinstance(parameter.get(kind), dict):
                    raise graph_bad_request(
                        "Param template['components'][0]['parameters'][0]['type'] must be one of "
                        "{TEXT, IMAGE, DOCUMENT, VIDEO, ...} with its object.",
                        account,
                    )
                _, link, _ = WhatsApp._media(kind, {**parameter[kind], "caption": None}, account)
                return link, kind
        return None, None

    def accepted(self, message: Message, message_id: str) -> web.Response:
        # The hot path of benchmarks: recipient (digits) and id need no JSON escaping.
        recipient = message.recipient
        body = (
            f'{{"messaging_product":"whatsapp","contacts":[{{"input":"{recipient}","wa_id":"{recipient}"}}],'
            f'"messages":[{{"id":"{message_id}"}}]}}'
        )
        return web.Response(body=body.encode(), content_type="application/json")

    def refused(self, message: Message, verdict: Verdict, retry_after: float | None) -> web.Response:
        if verdict is Verdict.THROTTLED:
            return graph_error(
                429,
                130429,
                "(#130429) Rate limit hit",
                error_data=self._details("Cloud API message throughput has been reached."),
                headers=retry_after_header(retry_after),
            )
        if verdict is Verdict.RECIPIENT_PACED:
            return graph_error(
                400,
                131056,
                "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                error_data=self._details(
                    "Message failed to send because there were too many messages sent from this phone "
                    "number to the same phone number in a short period of time."
                ),
            )
        if verdict is Verdict.PERMANENT:
            return graph_error(
                400,
                131026,
                "(#131026) Message undeliverable",
                error_data=self._details(
                    "Unable to deliver message. The recipient phone number is not a WhatsApp phone number."
                ),
            )
        return graph_error(
            500,
            131000,
            "(#131000) Something went wrong",
            error_data=self._details("Something went wrong. Please try again later."),
            is_transient=True,
        )

    @staticmethod
    def _details(details: str) -> dict[str, str]:
        return {"messaging_product": "whatsapp", "details": details}

    @staticmethod
    def unknown_object(account: str) -> web.Response:
        return graph_error(
            400,
            100,
            f"Unsupported post request. Object with ID '{account}' does not exist, cannot be loaded due "
            "to missing permissions, or does not support this operation.",
            subcode=33,
        )

    async def verify(self, request: web.Request) -> web.Response:
        """``GET /{v}/{phone_number_id}``: the number's name, display number and quality."""
        account = request.match_info["node"]
        try:
            graph_token(request)
        except Answered as answered:
            return answered.response
        if account == MISSING_ACCOUNT:
            return self.unknown_object(account)
        return json_response(
            _fields(
                request,
                {
                    "verified_name": f"Sandbox {account[-4:]}",
                    "display_phone_number": display_phone_number(account),
                    "quality_rating": "GREEN",
                    "id": account,
                },
            )
        )


class Messenger:
    """Messenger Send API: ``POST /{v}/me/messages``; the account is the token's page."""

    kind = MESSENGER
    messaging_types = ("RESPONSE", "UPDATE", "MESSAGE_TAG")

    async def read(self, request: web.Request) -> Message:
        token = graph_token(request)
        account = page_id_for_token(token)
        payload = await graph_json(request, account)
        recipient_field = payload.get("recipient")
        recipient = _text(recipient_field.get("id")) if isinstance(recipient_field, dict) else None
        if recipient is None:
            raise graph_bad_request("The parameter recipient is required", account)
        messaging_type = payload.get("messaging_type")
        if messaging_type not in self.messaging_types:
            raise graph_bad_request(
                "param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}", account
            )
        if messaging_type == "MESSAGE_TAG" and _text(payload.get("tag")) is None:
            raise graph_bad_request("param tag is required for messaging_type MESSAGE_TAG", account)
        message = payload.get("message")
        if not isinstance(message, dict):
            raise graph_bad_request("Must send either message or sender_action", account)
        text = _text(message.get("text"))
        if text is not None and len(text) > MESSENGER_MAX_TEXT:
            raise graph_bad_request(
                "Length of param message[text] must be less than or equal to 2000", account
            )
        attachment = message.get("attachment")
        media_url = media_type = None
        if attachment is not None:
            if text is not None:
                raise graph_bad_request(
                    "Only one of message[text] or message[attachment] may be set", account
                )
            media_url, media_type = self._attachment(attachment, account)
        elif text is None:
            raise graph_bad_request("param message must be non-empty", account)
        reference = _text(message.get("metadata"))
        return Message(
            MESSENGER, account, recipient, text or "", reference, fingerprint(token), media_url, media_type
        )

    @staticmethod
    def _attachment(attachment: Any, account: str) -> tuple[str, str]:
        """An attachment's URL and type: ``{"type": image|video|audio|file, "payload": {"url": ...}}``."""
        kind = attachment.get("type") if isinstance(attachment, dict) else None
        if kind not in MESSENGER_ATTACHMENT_TYPES:
            raise graph_bad_request(
                "param message[attachment][type] must be one of {image, video, audio, file}", account
            )
        content = attachment.get("payload")
        url = content.get("url") if isinstance(content, dict) else None
        if url is None and isinstance(content, dict) and _text(content.get("attachment_id")) is not None:
            return f"attachment:{content['attachment_id']}", kind
        if _web_url(url) is None:
            raise graph_bad_request(
                "param message[attachment][payload][url] must be a valid URL (or give an attachment_id)",
                account,
            )
        return url, kind

    def accepted(self, message: Message, message_id: str) -> web.Response:
        return json_response({"recipient_id": message.recipient, "message_id": message_id})

    def refused(self, message: Message, verdict: Verdict, retry_after: float | None) -> web.Response:
        if verdict is Verdict.THROTTLED:
            return graph_error(
                400, 613, "(#613) Calls to this api have exceeded the rate limit.", subcode=1893016
            )
        if verdict is Verdict.PERMANENT:
            return graph_error(400, 100, "(#100) No matching user found", subcode=2018001)
        return graph_error(
            500, 2, "An unexpected error has occurred. Please retry your request later.", is_transient=True
        )

    async def verify(self, request: web.Request) -> web.Response:
        """``GET /{v}/me``: the page behind the token."""
        try:
            page_id = page_id_for_token(graph_token(request))
        except Answered as answered:
            return answered.response
        return json_response(_fields(request, {"id": page_id, "name": f"Sandbox Page {page_id[-4:]}"}))


def evolution_error(
    status: int, error: str, message: Any, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(
        {"status": status, "error": error, "response": {"message": message}}, status, headers
    )


class Evolution:
    """Evolution API v2: ``POST /message/sendText/{instance}`` with an ``apikey`` header (media:
    :class:`EvolutionMedia` and :class:`EvolutionAudio`)."""

    kind = EVOLUTION

    @staticmethod
    def authorize(request: web.Request) -> str:
        """The instance of an authorized request; refuses bad keys and unknown instances."""
        instance = request.match_info["instance"]
        key = request.headers.get("apikey", "")
        if not key or key.startswith(("invalid", "expired")):
            raise Answered("unauthorized", evolution_error(401, "Unauthorized", "Unauthorized"), instance)
        if instance == MISSING_ACCOUNT:
            raise Answered(
                "not_found",
                evolution_error(404, "Not Found", [f'The "{instance}" instance does not exist']),
                instance,
            )
        return instance

    async def read(self, request: web.Request) -> Message:
        """``sendText``: ``{"number", "text"}``."""
        instance = self.authorize(request)
        number, text = self.required(await self.payload(request, instance), instance, "number", "text")
        sender = fingerprint(request.headers.get("apikey", ""))
        return Message(EVOLUTION, instance, digits_of(number) or number, text, None, sender)

    @staticmethod
    async def payload(request: web.Request, instance: str) -> dict[str, Any]:
        try:
            payload = json.loads(await request.read())
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise Answered(
                "bad_request", evolution_error(400, "Bad Request", ["body must be a JSON object"]), instance
            )
        return payload

    @staticmethod
    def required(payload: dict[str, Any], instance: str, *names: str) -> list[str]:
        """The values of the text properties ``names``; refuses a body that lacks any of them."""
        values = [_text(payload.get(name)) for name in names]
        missing = [name for name, value in zip(names, values, strict=True) if value is None]
        if missing:
            raise Answered(
                "bad_request",
                evolution_error(
                    400, "Bad Request", [f'instance requires property "{name}"' for name in missing]
                ),
                instance,
            )
        return [value or "" for value in values]

    @staticmethod
    def media_url(value: str, instance: str) -> str:
        """Evolution fetches a URL (or takes base64); the sandbox takes URLs only."""
        if _web_url(value) is None:
            raise Answered(
                "bad_request",
                evolution_error(400, "Bad Request", ["Owned media must be a url or base64"]),
                instance,
            )
        return value

    def accepted(self, message: Message, message_id: str) -> web.Response:
        if message.media_type is None:
            content: dict[str, Any] = {"extendedTextMessage": {"text": message.body}}
        else:
            media: dict[str, Any] = {"url": message.media_url}
            if message.body:
                media["caption"] = message.body
            if message.media_type == "audio":
                media["ptt"] = True
            content = {EVOLUTION_MESSAGE_FIELDS[message.media_type]: media}
        return json_response(
            {
                "key": {"remoteJid": f"{message.recipient}@s.whatsapp.net", "fromMe": True, "id": message_id},
                "message": content,
                "messageTimestamp": str(int(time.time())),
                "status": "PENDING",
            },
            201,
        )

    def refused(self, message: Message, verdict: Verdict, retry_after: float | None) -> web.Response:
        if verdict is Verdict.THROTTLED:
            return evolution_error(
                429, "Too Many Requests", ["rate-overlimit"], headers=retry_after_header(retry_after)
            )
        if verdict is Verdict.PERMANENT:
            jid = f"{message.recipient}@s.whatsapp.net"
            return evolution_error(
                400, "Bad Request", [{"exists": False, "jid": jid, "number": message.recipient}]
            )
        return evolution_error(500, "Internal Server Error", ["Connection Closed"])

    async def verify(self, request: web.Request) -> web.Response:
        """``GET /instance/connectionState/{instance}``."""
        try:
            instance = self.authorize(request)
        except Answered as answered:
            return answered.response
        return json_response({"instance": {"instanceName": instance, "state": "open"}})


class EvolutionMedia(Evolution):
    """``POST /message/sendMedia/{instance}``: an image, video, document or audio by URL, with a caption."""

    async def read(self, request: web.Request) -> Message:
        instance = self.authorize(request)
        payload = await self.payload(request, instance)
        number, mediatype, media = self.required(payload, instance, "number", "mediatype", "media")
        if mediatype not in EVOLUTION_MEDIA_TYPES:
            raise Answered(
                "bad_request",
                evolution_error(
                    400, "Bad Request", ["mediatype must be one of image, video, document, audio"]
                ),
                instance,
            )
        caption = payload.get("caption") if isinstance(payload.get("caption"), str) else ""
        sender = fingerprint(request.headers.get("apikey", ""))
        url = self.media_url(media, instance)
        return Message(
            EVOLUTION, instance, digits_of(number) or number, caption, None, sender, url, mediatype
        )


class EvolutionAudio(Evolution):
    """``POST /message/sendWhatsAppAudio/{instance}``: ``{"number", "audio"}``, sent as a voice note."""

    async def read(self, request: web.Request) -> Message:
        instance = self.authorize(request)
        number, audio = self.required(await self.payload(request, instance), instance, "number", "audio")
        sender = fingerprint(request.headers.get("apikey", ""))
        url = self.media_url(audio, instance)
        return Message(EVOLUTION, instance, digits_of(number) or number, "", None, sender, url, "audio")


class Webhook:
    """A tenant's webhook receiver: ``POST /webhook/{name}`` answering ``{"id": ...}``."""

    kind = WEBHOOK

    async def read(self, request: web.Request) -> Message:
        name = request.match_info["name"]
        if name == MISSING_ACCOUNT:
            raise Answered("not_found", json_response({"error": "no such webhook"}, 404), name)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise Answered("bad_request", json_response({"error": "body must be a JSON object"}, 400), name)
        if payload.get("type") == "ping":
            raise Answered(None, json_response({"ok": True}), name)
        recipient = payload.get("recipient")
        if not isinstance(recipient, str | int) or isinstance(recipient, bool) or recipient == "":
            raise Answered("bad_request", json_response({"error": "recipient is required"}, 400), name)
        text = payload.get("text") if isinstance(payload.get("text"), str) else ""
        subject = _text(payload.get("subject"))
        body = f"{subject}\n{text}" if subject else text
        media_url = _text(payload.get("media_url"))
        media_type = _text(payload.get("media_type")) if media_url is not None else None
        return Message(
            WEBHOOK, name, str(recipient), body, _text(payload.get("delivery")), None, media_url, media_type
        )

    def accepted(self, message: Message, message_id: str) -> web.Response:
        return json_response({"id": message_id})

    def refused(self, message: Message, verdict: Verdict, retry_after: float | None) -> web.Response:
        if verdict is Verdict.THROTTLED:
            return json_response({"error": "too many requests"}, 429, retry_after_header(retry_after))
        if verdict is Verdict.PERMANENT:
            return json_response({"error": "recipient rejected"}, 422)
        return json_response({"error": "temporarily unavailable"}, 500)
