"""Reading stored provider callbacks into receipts and inbound messages.

Each provider's callback format (see ``tasks/providers/WIRE.md``) is parsed into plain
:class:`ParsedReceipt` and :class:`ParsedMessage` values, then stored once: a callback
delivered twice adds nothing. Messenger messages from people Crier has not seen yet
create a contact carrying that page's id for them — that is how Messenger audiences grow.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import func, select, update

from tasks.broker import actor
from tenants import event_hooks
from tenants.campaigns import Campaign, Delivery, DeliveryState, quota_day
from tenants.contacts import Contact, ContactChannelId
from tenants.db import db, insert_ignoring_conflicts, utcnow
from tenants.events import InboundMessage, Receipt, ReceiptStatus, WebhookEvent
from tenants.models import Tenant
from tenants.pages import Page, ProviderKind
from tenants.provider_codes import retryable_code
from tenants.scoping import TenantNotSet, all_tenants, current_tenant_id, tenant
from tenants.usage import count_activity


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
    db.session.execute(insert_ignoring_conflicts(model), rows)


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
        apply_receipts(event.page_id, limit=500)  # older stragglers are the sweeper's
        apply_inbound(event.page_id, limit=500)


# --------------------------------------------------------------------------- applying them to deliveries

GIVE_UP_AFTER = timedelta(hours=1)  # a receipt whose delivery never shows up is set aside after this
REPLY_WINDOW = timedelta(days=7)  # a message counts as a reply to the latest send within this
SENT_AT_LAG = timedelta(minutes=1)  # sent_at is written after the send, with the slice's other outcomes
SENT, DELIVERED, READ = DeliveryState.SENT.value, DeliveryState.DELIVERED.value, DeliveryState.READ.value
UNKNOWN, FAILED = DeliveryState.UNKNOWN.value, DeliveryState.FAILED.value
DELIVERIES = Delivery.__table__


def _tenant_id() -> int:
    """The tenant being worked for, explicitly: callers may hold all_tenants (the sweeper does), and
    then the session adds no tenant criterion of its own."""
    tenant_id = current_tenant_id(db.session)
    if tenant_id is None:
        raise TenantNotSet("receipts and replies are applied for one tenant at a time")
    return tenant_id


def _delivery_ids(receipt: Receipt) -> list[int]:
    """The delivery a receipt is about: by Crier's reference, else by the provider's message id; either
    way one the receipt's page sent, of the receipt's tenant (the sweeper calls this in all_tenants)."""
    sent_through_the_page = (
        select(Delivery.id)
        .join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(Delivery.tenant_id == receipt.tenant_id, Campaign.page_id == receipt.page_id)
    )
    if receipt.reference and re.fullmatch(r"[0-9]{1,18}", receipt.reference):  # a delivery id, not "²"
        found = db.session.scalars(sent_through_the_page.where(Delivery.id == int(receipt.reference))).all()
        if found:
            return list(found)
    if receipt.provider_message_id:
        return list(
            db.session.scalars(
                sent_through_the_page.where(Delivery.provider_message_id == receipt.provider_message_id)
            )
        )
    return []


class ActivityTally:
    """What receipts and replies changed, per campaign and day, added to the daily activity at commit."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._tenants: dict[int, Tenant] = {}
        self._pages: dict[int, Page | None] = {}

    def add(self, tenant_id: int, page_id: int, campaign_id: int, at: datetime, **counts: int) -> None:
        tenant_row = self._tenants.get(tenant_id) or db.session.get(Tenant, tenant_id)
        self._tenants[tenant_id] = tenant_row
        if page_id not in self._pages:
            self._pages[page_id] = db.session.get(Page, page_id)
        page = self._pages[page_id]
        self.rows.append(
            {
                "tenant_id": tenant_id,
                "day": quota_day(tenant_row, at),
                "campaign_id": campaign_id,
                "page_id": page_id,
                "channel": page.kind.value if page is not None else "",
                **counts,
            }
        )

    def save(self) -> None:
        count_activity(self.rows)
        self.rows = []


def _apply(delivery_id: int, receipt: Receipt, tally: ActivityTally) -> bool:
    """Move one delivery forward; True when the receipt is settled (applied, or nothing left to do)."""
    found = db.session.execute(
        select(Delivery.state, Delivery.campaign_id).where(Delivery.id == delivery_id)
    ).first()
    if found is None:
        return True
    state, campaign_id = found
    if state in (DeliveryState.PENDING, DeliveryState.IN_FLIGHT):
        return False  # the send's own outcome is not written yet: try again later
    at, row = receipt.occurred_at, DELIVERIES.c
    # an unknown delivery that gets a receipt did reach the provider: it counts as sent then
    newly_sent = int(state is DeliveryState.UNKNOWN)

    def count(**counts: int) -> None:
        tally.add(receipt.tenant_id, receipt.page_id, campaign_id, at, **counts)

    if receipt.status is ReceiptStatus.DELIVERED:
        moved = db.session.execute(
            update(DELIVERIES)
            .where(row.id == delivery_id, row.state.in_([SENT, UNKNOWN]))
            .values(state=DELIVERED, delivered_at=func.coalesce(row.delivered_at, at))
        ).rowcount
        db.session.execute(  # a read that came first already implied delivery; keep the time
            update(DELIVERIES)
            .where(row.id == delivery_id, row.delivered_at.is_(None))
            .values(delivered_at=at)
        )
        if moved:
            count(sent=newly_sent, delivered=1)
    elif receipt.status is ReceiptStatus.READ:
        moved = db.session.execute(
            update(DELIVERIES)
            .where(row.id == delivery_id, row.state.in_([SENT, DELIVERED, UNKNOWN]))
            .values(
                state=READ,
                read_at=func.coalesce(row.read_at, at),
                delivered_at=func.coalesce(row.delivered_at, at),
            )
        ).rowcount
        if moved:
            count(sent=newly_sent, delivered=int(state is not DeliveryState.DELIVERED), read=1)
    else:
        moved = db.session.execute(
            update(DELIVERIES)
            .where(row.id == delivery_id, row.state.in_([SENT, UNKNOWN]))
            .values(
                state=FAILED,
                error_code=(receipt.error_code or "")[:50] or None,
                error_text=("the provider reported: " + (receipt.error_text or "failed"))[:500],
                retryable=receipt_failure_is_retryable(receipt),
            )
        ).rowcount
        if moved:
            count(sent=newly_sent, failed=1)
    return True


def receipt_failure_is_retryable(receipt: Receipt) -> bool:
    """A failure the provider reported later is worth resending when its code says "try again"
    (WhatsApp 131000, say), by the same tables that classify the answers to sends."""
    page = db.session.get(Page, receipt.page_id)
    return page is not None and retryable_code(page.kind, receipt.error_code)


def _apply_read_watermark(receipt: Receipt, tally: ActivityTally) -> None:
    """Messenger: everything sent to this person on this page before the watermark was read."""
    row = DELIVERIES.c
    campaigns = select(Campaign.id).where(
        Campaign.tenant_id == receipt.tenant_id, Campaign.page_id == receipt.page_id
    )
    watermarked = (
        row.tenant_id == receipt.tenant_id,
        row.campaign_id.in_(campaigns),
        row.address == receipt.recipient,
        row.sent_at <= receipt.occurred_at,
    )
    # rows not yet delivered count as delivered too (a read implies it), and unknown ones as sent
    for states, counts in (
        ([UNKNOWN], {"sent": 1, "delivered": 1, "read": 1}),
        ([SENT], {"delivered": 1, "read": 1}),
        ([DELIVERED], {"read": 1}),
    ):
        moved = db.session.execute(
            update(DELIVERIES)
            .where(*watermarked, row.state.in_(states))
            .values(
                state=READ,
                read_at=func.coalesce(row.read_at, receipt.occurred_at),
                delivered_at=func.coalesce(row.delivered_at, receipt.occurred_at),
            )
            .returning(row.campaign_id)
        ).all()
        for (campaign_id,) in moved:
            tally.add(receipt.tenant_id, receipt.page_id, campaign_id, receipt.occurred_at, **counts)


def apply_receipts(page_id: int | None = None, limit: int = 2000) -> int:
    """Apply the current tenant's unapplied receipts to their deliveries, idempotently and in any order."""
    query = (
        select(Receipt)
        .where(Receipt.tenant_id == _tenant_id(), Receipt.applied_at.is_(None))
        .order_by(Receipt.id)
        .limit(limit)
    )
    if page_id is not None:
        query = query.where(Receipt.page_id == page_id)
    now = utcnow()
    applied = 0
    tally = ActivityTally()
    for receipt in db.session.scalars(query).all():
        if receipt.provider_message_id is None and receipt.reference is None:
            if receipt.status is ReceiptStatus.READ and receipt.recipient:
                _apply_read_watermark(receipt, tally)
            settled = True
        else:
            ids = _delivery_ids(receipt)
            settled = all([_apply(delivery_id, receipt, tally) for delivery_id in ids]) if ids else False
        if settled or now - receipt.occurred_at > GIVE_UP_AFTER:
            receipt.applied_at = now
            applied += 1
    tally.save()
    db.session.commit()
    return applied


def stop_keywords() -> frozenset[str]:
    return frozenset(
        word.strip().upper() for word in current_app.config["STOP_KEYWORDS"].split(",") if word.strip()
    )


def is_stop(text: str, keywords: frozenset[str]) -> bool:
    """A reply that asks to stop: the whole message is a keyword ("stop", "Stop.", "UNSUBSCRIBE!")."""
    words = re.sub(r"[^\w\s]", " ", text or "").upper().split()
    return bool(words) and " ".join(words) in keywords


def _contact_of(message: InboundMessage, kind: ProviderKind) -> int | None:
    """The sender among the message's tenant's contacts (the same phone is often another tenant's too)."""
    if message.contact_id is not None:
        return message.contact_id
    ours = select(Contact.id).where(Contact.tenant_id == message.tenant_id)
    digits = re.sub(r"[^0-9]", "", message.sender or "")
    if kind in (ProviderKind.WHATSAPP, ProviderKind.EVOLUTION) and digits:
        return db.session.scalar(ours.where(Contact.phone == f"+{digits}"))
    if kind is ProviderKind.SMTP and "@" in (message.sender or ""):
        return db.session.scalar(ours.where(func.lower(Contact.email) == message.sender.lower()))
    if kind is ProviderKind.WEBHOOK and digits == (message.sender or "") and len(digits) <= 18:
        return db.session.scalar(ours.where(Contact.id == int(digits)))
    return None


def apply_inbound(page_id: int | None = None, limit: int = 2000) -> int:
    """Count replies on the latest delivery to their sender, and opt out people who reply STOP."""
    query = (
        select(InboundMessage)
        .where(InboundMessage.tenant_id == _tenant_id(), InboundMessage.applied_at.is_(None))
        .order_by(InboundMessage.id)
        .limit(limit)
    )
    if page_id is not None:
        query = query.where(InboundMessage.page_id == page_id)
    keywords = stop_keywords()
    now = utcnow()
    tally = ActivityTally()
    messages = db.session.scalars(query).all()
    for message in messages:
        page = db.session.get(Page, message.page_id)
        contact_id = _contact_of(message, page.kind) if page is not None else None
        if contact_id is not None:
            message.contact_id = contact_id
            row = DELIVERIES.c
            latest = db.session.execute(
                select(row.id, row.campaign_id, row.replied_at)
                .join(Campaign.__table__, Campaign.id == row.campaign_id)
                .where(
                    row.tenant_id == message.tenant_id,
                    row.contact_id == contact_id,
                    Campaign.page_id == message.page_id,
                    row.state.in_([SENT, DELIVERED, READ, UNKNOWN]),
                    row.sent_at >= message.received_at - REPLY_WINDOW,
                    row.sent_at <= message.received_at + SENT_AT_LAG,  # not one sent after the reply
                )
                .order_by(row.sent_at.desc())
                .limit(1)
            ).first()
            if latest is not None:
                message.delivery_id, message.campaign_id = latest.id, latest.campaign_id
                if latest.replied_at is None:
                    db.session.execute(
                        update(DELIVERIES).where(row.id == latest.id).values(replied_at=message.received_at)
                    )
                    tally.add(
                        message.tenant_id, message.page_id, latest.campaign_id, message.received_at, replied=1
                    )
            if is_stop(message.text, keywords):
                contact = db.session.get(Contact, contact_id)
                if contact is not None and not contact.opted_out:
                    contact.opted_out = True
                    contact.opted_out_at = message.received_at
                    contact.opted_out_source = f"replied {message.text.strip()[:40]!r} on {page.name}"[:200]
                    event_hooks.publish_opt_out(contact)
        event_hooks.publish_reply(message)
        message.applied_at = now
    tally.save()
    db.session.commit()
    return len(messages)
