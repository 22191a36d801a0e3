"""What providers tell Crier: raw webhook callbacks, and the receipts and messages read from them."""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from tenants.db import db, str_enum, utcnow
from tenants.pages import ProviderKind
from tenants.scoping import TenantScoped


class ReceiptStatus(enum.StrEnum):
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


class WebhookEvent(TenantScoped, db.Model):
    """A callback exactly as it arrived (after its signature was checked), until a worker reads it."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_unprocessed", "processed_at", "id"),
        # a replayed request (same page, signature, timestamp and body) is stored once
        Index("uq_webhook_events_page_dedupe", "page_id", "dedupe_key", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ProviderKind] = mapped_column(str_enum(ProviderKind, "provider_kind"))
    body: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(500))


def callback_dedupe_key(*parts: bytes) -> str:
    """The sha256 hex digest identifying one callback request (its signature, timestamp and body).

    Each part is length-prefixed, so no two different sequences of parts share a key.
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def store_webhook_event(page_id: int, kind: ProviderKind, body: str, dedupe_key: str) -> int | None:
    """Store a verified callback and commit; answers its id, or None when the same request
    (``page_id`` and ``dedupe_key``) is already stored: a provider's retry or a replay.

    The unique index decides, so two identical requests at once store one event. Runs in the
    page's tenant scope.
    """
    event = WebhookEvent(page_id=page_id, kind=kind, body=body, dedupe_key=dedupe_key)
    db.session.add(event)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        stored = select(WebhookEvent.id).where(
            WebhookEvent.page_id == page_id, WebhookEvent.dedupe_key == dedupe_key
        )
        if db.session.scalar(stored) is None:
            raise  # another constraint (the page deleted meanwhile): not a duplicate
        return None
    return event.id


class Receipt(TenantScoped, db.Model):
    """A delivery, read or failure report for a message Crier sent, for the campaign engine to apply.

    Messenger reports reads as a watermark: every message to ``recipient`` sent before
    ``occurred_at`` was read; such receipts carry no message id.
    """

    __tablename__ = "receipts"
    __table_args__ = (
        UniqueConstraint("page_id", "provider_message_id", "status", name="uq_receipts_page_message_status"),
        Index("ix_receipts_unapplied", "applied_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), index=True)
    status: Mapped[ReceiptStatus] = mapped_column(str_enum(ReceiptStatus, "receipt_status"))
    provider_message_id: Mapped[str | None] = mapped_column(String(200), index=True)
    reference: Mapped[str | None] = mapped_column(String(64), index=True)
    recipient: Mapped[str | None] = mapped_column(String(200))
    occurred_at: Mapped[datetime]
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_text: Mapped[str | None] = mapped_column(String(500))
    applied_at: Mapped[datetime | None]


class InboundMessage(TenantScoped, db.Model):
    """A message a person sent to one of the tenant's pages (replies, STOP, new Messenger audiences)."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("page_id", "provider_message_id", name="uq_inbound_messages_page_message"),
        Index("ix_inbound_messages_unapplied", "applied_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"), index=True)
    sender: Mapped[str] = mapped_column(String(200))
    sender_name: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text, default="")
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime]
    applied_at: Mapped[datetime | None]
    # the delivery it answers (the latest one to its sender on that page), once applied
    campaign_id: Mapped[int | None] = mapped_column(Integer, index=True)
    delivery_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
