"""Contacts: the people a tenant sends to."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tenants.db import JSONDocument, TimestampMixin, db
from tenants.scoping import TenantScoped


class Contact(TenantScoped, TimestampMixin, db.Model):
    """A person, unique per tenant by E.164 phone and by email."""

    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "phone", name="uq_contacts_tenant_phone"),
        UniqueConstraint("tenant_id", "email", name="uq_contacts_tenant_email"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str | None] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(254))
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    opted_out: Mapped[bool] = mapped_column(default=False)
    opted_out_at: Mapped[datetime | None]
    opted_out_source: Mapped[str | None] = mapped_column(String(200))

    channel_ids: Mapped[list[ContactChannelId]] = relationship(
        back_populates="contact", cascade="all, delete-orphan"
    )


class ContactChannelId(TenantScoped, db.Model):
    """A contact's id on one page, where the channel addresses people by its own ids (Messenger PSIDs)."""

    __tablename__ = "contact_channel_ids"
    __table_args__ = (
        UniqueConstraint("page_id", "external_id", name="uq_contact_channel_ids_page_external"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(128))

    contact: Mapped[Contact] = relationship(back_populates="channel_ids")
