"""Reading stored provider callbacks into receipts and inbound messages.

Each provider's callback format (see ``tasks/providers/WIRE.md``) is parsed into plain
:class:`ParsedReceipt` and :class:`ParsedMessage` values, then stored once: a callback
delivered twice adds nothing. Messenger messages from people Crier has not seen yet
create a contact carrying that page's id for them — that is how Messenger audiences grow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tasks.broker import actor
from tenants.contacts import Contact, ContactChannelId
from tenants.db import db, utcnow
from tenants.events import InboundMessage, Receipt, ReceiptStatus, WebhookEvent
from tenants.pages import ProviderKind
from tenants.scoping import all_tenants, tenant


class MalformedCallback(ValueError):
    """A signed callback whose body is not what the provider documents."""


@dataclass(frozen=True)
class ParsedReceipt:
    status: ReceiptStatus
    occurred_at: datetime
    provider_message_id: str | None = None
    reference: str | None = None
    recipient: str | None = None
    error_code: str | None = None
    error_text: str | None = None


@dataclass(frozen=True)
class ParsedMessage:
    sender: str
    text: str
    received_at: datetime
    provider_message_id: str | None = None
    sender_name: str | None = None


@dataclass
class ParsedCallback:
    receipts: list[ParsedReceipt]
    messages: list[ParsedMessage]


def _from_epoch(value: Any, millis: bool = False) -> datetime:
    try:
        seconds = float(value) / (1000 if millis else 1)
    except (TypeError, ValueError):
        return utcnow()
    return datetime.fromtimestamp(seconds, UTC)


WHATSAPP_STATUSES = {
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.READ,
    "failed": ReceiptStatus.FAILED,
}
EVOLUTION_STATUSES = {
    "DELIVERY_ACK": ReceiptStatus.DELIVERED,
    "READ": ReceiptStatus.READ,
    "PLAYED": ReceiptStatus.READ,
}


def parse_whatsapp(payload: dict) -> ParsedCallback:
    parsed = ParsedCallback([], [])
    for entry in payload.get("entry", []):
        for change in entry.get("changes", []):
            value = change.get("value", {})
            names = {c.get("wa_id"): (c.get("profile") or {}).get("name") for c in value.get("contacts", [])}
            for status in value.get("statuses", []):
                kind = WHATSAPP_STATUSES.get(status.get("status"))
                if kind is None:
                    continue  # "sent" adds nothing to what the send itself reported
                error = (status.get("errors") or [{}])[0]
                parsed.receipts.append(
                    ParsedReceipt(
                        kind,
                        _from_epoch(status.get("timestamp")),
                        status.get("id"),
                        status.get("biz_opaque_callback_data"),
                        status.get("recipient_id"),
                        str(error["code"]) if "code" in error else None,
                        error.get("title") or error.get("message"),
                    )
                )
            for message in value.get("messages", []):
                text = (
                    (message.get("text") or {}).get("body") or (message.get("button") or {}).get("text") or ""
                )
                sender = message.get("from") or ""
                parsed.messages.append(
                    ParsedMessage(
                        sender,
                        text,
                        _from_epoch(message.get("timestamp")),
                        message.get("id"),
                        names.get(sender),
                    )
                )
    return parsed


def parse_messenger(payload: dict) -> ParsedCallback:
    parsed = ParsedCallback([], [])
    for entry in payload.get("entry", []):
        for item in entry.get("messaging", []):
            sender = (item.get("sender") or {}).get("id") or ""
            if "message" in item and not item["message"].get("is_echo"):
                message = item["message"]
                parsed.messages.append(
                    ParsedMessage(
                        sender,
                        message.get("text") or "",
                        _from_epoch(item.get("timestamp"), True),
                        message.get("mid"),
                    )
                )
            if "delivery" in item:
                at = _from_epoch(item["delivery"].get("watermark"), True)
                for mid in item["delivery"].get("mids", []):
                    parsed.receipts.append(ParsedReceipt(ReceiptStatus.DELIVERED, at, mid, recipient=sender))
            if "read" in item:
                at = _from_epoch(item["read"].get("watermark"), True)
                parsed.receipts.append(ParsedReceipt(ReceiptStatus.READ, at, recipient=sender))
    return parsed


def parse_evolution(payload: dict) -> ParsedCallback:
    parsed = ParsedCallback([], [])
    data = payload.get("data") or {}
    event = (payload.get("event") or "").lower().replace("_", ".")
    items = data if isinstance(data, list) else [data]
    for item in items:
        if event == "messages.update":
            kind = EVOLUTION_STATUSES.get(item.get("status", ""))
            if kind:
                recipient = (item.get("remoteJid") or "").split("@")[0] or None
                parsed.receipts.append(ParsedReceipt(kind, utcnow(), item.get("keyId"), recipient=recipient))
        elif event == "messages.upsert":
            key = item.get("key") or {}
            if key.get("fromMe"):
                continue
            message = item.get("message") or {}
            text = message.get("conversation") or (message.get("extendedTextMessage") or {}).get("text") or ""
            parsed.messages.append(
                ParsedMessage(
                    (key.get("remoteJid") or "").split("@")[0],
                    text,
                    _from_epoch(item.get("messageTimestamp")),
                    key.get("id"),
                    item.get("pushName"),
                )
            )
    return parsed


def parse_webhook(payload: dict) -> ParsedCallback:
    """A tenant's own server reporting back: ``{"delivery", "status", ...}`` or ``{"sender", "text"}``."""
    parsed = ParsedCallback([], [])
    for item in payload.get("events", [payload]):
        status = {s.value: s for s in ReceiptStatus}.get(item.get("status", ""))
        if status and item.get("delivery"):
            parsed.receipts.append(
                ParsedReceipt(
                    status,
                    _from_epoch(item.get("timestamp")) if item.get("timestamp") else utcnow(),
                    item.get("id") or f"webhook-{item['delivery']}",
                    str(item["delivery"]),
                    error_text=item.get("error"),
                )
            )
        elif item.get("sender"):
            parsed.messages.append(
                ParsedMessage(str(item["sender"]), str(item.get("text", "")), utcnow(), item.get("id"))
            )
    return parsed


PARSERS = {
    ProviderKind.WHATSAPP: parse_whatsapp,
    ProviderKind.MESSENGER: parse_messenger,
    ProviderKind.EVOLUTION: parse_evolution,
    ProviderKind.WEBHOOK: parse_webhook,
}


def parse(kind: ProviderKind, body: str) -> ParsedCallback:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise MalformedCallback(f"not JSON: {exc}") from None
    if not isinstance(payload, dict) or kind not in PARSERS:
        raise MalformedCallback("not a JSON object" if kind in PARSERS else f"no callbacks for {kind.value}")
    try:
        return PARSERS[kind](payload)
    except (AttributeError, KeyError, TypeError) as exc:
        raise MalformedCallback(f"unexpected shape: {exc!r}") from None


def _insert_ignoring_duplicates(model: type, rows: list[dict]) -> None:
    if not rows:
        return
    insert = pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert
    db.session.execute(insert(model).on_conflict_do_nothing(), rows)


def _contact_for_messenger_sender(page_id: int, psid: str) -> int:
    """The contact Crier knows by this page-scoped id, created on first contact."""
    known = db.session.scalar(
        select(ContactChannelId.contact_id).where(
            ContactChannelId.page_id == page_id, ContactChannelId.external_id == psid
        )
    )
    if known is not None:
        return known
    contact = Contact(custom_fields={"source": "messenger"})
    contact.channel_ids.append(ContactChannelId(page_id=page_id, external_id=psid))
    db.session.add(contact)
    db.session.flush()
    return contact.id


def store(event: WebhookEvent, parsed: ParsedCallback) -> None:
    """Record what a callback said, once, for the event's tenant."""
    base = {"tenant_id": event.tenant_id, "page_id": event.page_id}
    _insert_ignoring_duplicates(Receipt, [{**base, **vars(r), "applied_at": None} for r in parsed.receipts])
    inbound = []
    for message in parsed.messages:
        contact_id = None
        if event.kind is ProviderKind.MESSENGER and message.sender:
            contact_id = _contact_for_messenger_sender(event.page_id, message.sender)
        inbound.append({**base, **vars(message), "contact_id": contact_id, "applied_at": None})
    _insert_ignoring_duplicates(InboundMessage, inbound)


@actor(max_retries=5)
def process_webhook_event(event_id: int) -> None:
    """Parse one stored callback; idempotent, so a redelivered message changes nothing twice."""
    with all_tenants(db.session):
        event = db.session.scalar(
            select(WebhookEvent).where(WebhookEvent.id == event_id).with_for_update(skip_locked=True)
        )
    if event is None or event.processed_at is not None:
        return  # gone, done, or being processed by another worker right now
    with tenant(db.session, event.tenant_id):
        try:
            store(event, parse(event.kind, event.body))
        except MalformedCallback as exc:
            db.session.rollback()
            event = db.session.get(WebhookEvent, event_id)
            event.error = str(exc)[:500]
        event.processed_at = utcnow()
        db.session.commit()
