"""Tenants, users and memberships: who may act for which business."""

from __future__ import annotations

import enum
from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tenants.db import JSONDocument, TimestampMixin, db, str_enum, utcnow
from tenants.scoping import TenantScoped


class TenantStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"

    @property
    def manages_members(self) -> bool:
        return self in (Role.OWNER, Role.ADMIN)


class Tenant(TimestampMixin, db.Model):
    """A business using Crier, with its plan limits."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    default_country: Mapped[str | None] = mapped_column(String(2))  # ISO 3166 code for national phone numbers
    status: Mapped[TenantStatus] = mapped_column(
        str_enum(TenantStatus, "tenant_status"), default=TenantStatus.ACTIVE
    )
    daily_message_quota: Mapped[int] = mapped_column(default=10_000)
    max_pages: Mapped[int] = mapped_column(default=10)
    max_recipients_per_campaign: Mapped[int] = mapped_column(default=100_000)
    max_send_rate: Mapped[int] = mapped_column(default=100)
    max_contacts: Mapped[int] = mapped_column(default=100_000)
    # the plan the limits above come from, and the ones set for this tenant alone (tenants.plans)
    plan_id: Mapped[int | None] = mapped_column(index=True)  # no key: see migration 0007
    limit_overrides: Mapped[dict[str, int]] = mapped_column(JSONDocument, default=dict)
    suspended_reason: Mapped[str | None] = mapped_column(String(500))
    suspended_at: Mapped[datetime | None]

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan"
    )

    @property
    def is_active(self) -> bool:
        return self.status is TenantStatus.ACTIVE


class User(UserMixin, TimestampMixin, db.Model):
    """A person who signs in; global across tenants."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_platform_admin: Mapped[bool] = mapped_column(default=False)
    last_login_at: Mapped[datetime | None]
    # bumped to end every session of the user (sign-out, password change, removal): see get_id
    session_version: Mapped[int] = mapped_column(default=1, server_default="1")
    email_verified_at: Mapped[datetime | None]

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")

    def get_id(self) -> str:
        """The session's user id carries the session version, so a bumped version ends old sessions."""
        return f"{self.id}:{self.session_version}"

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


class Membership(TenantScoped, TimestampMixin, db.Model):
    """A user's role in one tenant."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("tenant_id", "user_id", name="uq_memberships_tenant_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(str_enum(Role, "membership_role"), default=Role.MEMBER)

    tenant: Mapped[Tenant] = relationship(back_populates="memberships")
    user: Mapped[User] = relationship(back_populates="memberships")


class Invitation(TenantScoped, TimestampMixin, db.Model):
    """An invitation by email to join a tenant; its link carries a token kept here only as a digest."""

    __tablename__ = "invitations"
    __table_args__ = (Index("ix_invitations_tenant_email", "tenant_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[Role] = mapped_column(str_enum(Role, "membership_role"), default=Role.MEMBER)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime]
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    accepted_at: Mapped[datetime | None]
    accepted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None]


class LoginFailure(db.Model):
    """One failed sign-in, kept a short while to throttle guessing per account and per address."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_email_at", "email", "at"),
        Index("ix_login_failures_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
