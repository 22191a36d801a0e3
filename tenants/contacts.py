"""Contacts: the people a tenant sends to."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tenants.db import JSONDocument, TimestampMixin, db, str_enum, utcnow
from tenants.scoping import TenantScoped


class Contact(TenantScoped, TimestampMixin, db.Model):
    """A person, unique per tenant by E.164 phone and by email."""

    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "phone", name="uq_contacts_tenant_phone"),
        UniqueConstraint("tenant_id", "email", name="uq_contacts_tenant_email"),
        Index("ix_contacts_tenant_id_id", "tenant_id", "id"),
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


class ContactList(TenantScoped, TimestampMixin, db.Model):
    """A static list of contacts (an import's target, a campaign's audience)."""

    __tablename__ = "contact_lists"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_contact_lists_tenant_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))


class ContactListMember(TenantScoped, db.Model):
    """A contact on a list."""

    __tablename__ = "contact_list_members"
    __table_args__ = (Index("ix_contact_list_members_contact", "contact_id"),)

    list_id: Mapped[int] = mapped_column(ForeignKey("contact_lists.id", ondelete="CASCADE"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class Segment(TenantScoped, TimestampMixin, db.Model):
    """Contacts matching conditions on fields and custom fields, evaluated when used.

    ``conditions`` is a list of ``{"field": "first_name" | "custom.city" | ..., "op": "equals" |
    "contains" | "is_empty" | "not_empty" | "before" | "after", "value": "..."}``; ``match`` is
    ``all`` or ``any``.
    """

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_segments_tenant_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    match: Mapped[str] = mapped_column(String(3), default="all")
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument, default=list)


class ImportStatus(enum.StrEnum):
    UPLOADED = "uploaded"  # waiting for the user to confirm the column mapping
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class ContactImport(TenantScoped, TimestampMixin, db.Model):
    """One CSV upload and what became of each of its rows."""

    __tablename__ = "contact_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    filename: Mapped[str] = mapped_column(String(255))
    stored_path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    encoding: Mapped[str | None] = mapped_column(String(30))
    delimiter: Mapped[str | None] = mapped_column(String(5))
    header: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    mapping: Mapped[dict[str, str]] = mapped_column(JSONDocument, default=dict)
    phone_country: Mapped[str | None] = mapped_column(String(2))  # of national numbers, for this import
    list_id: Mapped[int | None] = mapped_column(ForeignKey("contact_lists.id", ondelete="SET NULL"))
    update_existing: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[ImportStatus] = mapped_column(
        str_enum(ImportStatus, "import_status"), default=ImportStatus.UPLOADED
    )
    rows_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_processed: Mapped[int] = mapped_column(Integer, default=0)
    created_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_count: Mapped[int] = mapped_column(Integer, default=0)
    merged_count: Mapped[int] = mapped_column(Integer, default=0)
    rejected_count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(1000))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ImportRejection(TenantScoped, db.Model):
    """A row an import could not take, with its line number in the file and the reason."""

    __tablename__ = "import_rejections"
    __table_args__ = (Index("ix_import_rejections_import_line", "import_id", "line"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("contact_imports.id", ondelete="CASCADE"))
    line: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(500))
    raw: Mapped[str] = mapped_column(Text)
