"""What providers tell Crier: raw webhook callbacks, and the receipts and messages read from them."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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
