"""The audit log: who did what, when, to which tenant, with the values before and after.

Append-only: rows are only ever inserted (the database refuses UPDATE and DELETE on the table,
migration 0007). The actor comes from the context the code runs in: the web app sets the
signed-in user and their address for each request, the CLI names itself, and code acting on its
own (the engine pausing for quota) is not audited. Callers add an entry with :func:`record` in
the same transaction as the change it describes, so both are kept or neither.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from tenants.db import JSONDocument, db, utcnow

ID = BigInteger().with_variant(Integer, "sqlite")


@dataclass(frozen=True)
class Actor:
    """Who acts: a signed-in user (with their address), or a named tool such as the CLI."""

    user_id: int | None
    label: str  # the user's email, or "cli", "system"
    ip: str | None = None


SYSTEM = Actor(None, "system")
_actor: contextvars.ContextVar[Actor] = contextvars.ContextVar("crier_audit_actor", default=SYSTEM)


def set_actor(actor: Actor) -> None:
    """Make ``actor`` the author of every entry recorded from now on in this context."""
    _actor.set(actor)


def current_actor() -> Actor:
    return _actor.get()


@contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


class AuditEntry(db.Model):
    """One audited action. Platform-level (no tenant scoping): a tenant's entries are those with its
    ``tenant_id``; plan changes have none."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_user_id: Mapped[int | None] = mapped_column(Integer)  # no key: entries outlive users
    actor: Mapped[str] = mapped_column(String(254))
    ip: Mapped[str | None] = mapped_column(String(64))
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(60), index=True)
    target: Mapped[str | None] = mapped_column(String(300))  # "campaign 12 Spring sale"
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)

    def changes(self) -> list[tuple[str, Any, Any]]:
        """(field, before, after) for every field either side names, in a stable order."""
        before, after = self.before or {}, self.after or {}
        keys = list(dict.fromkeys([*before, *after]))
        return [(key, before.get(key), after.get(key)) for key in keys]


ACTION_TEXT = {
    "plan.created": "created plan",
    "plan.changed": "changed plan",
    "tenant.plan_changed": "changed the plan",
    "tenant.limits_changed": "changed limits",
    "tenant.suspended": "suspended the workspace",
    "tenant.reactivated": "reactivated the workspace",
    "campaign.started": "started a campaign",
    "campaign.scheduled": "scheduled a campaign",
    "campaign.paused": "paused a campaign",
    "campaign.resumed": "resumed a campaign",
    "campaign.cancelled": "cancelled a campaign",
    "campaign.resent": "resent failed messages",
    "page.created": "connected a page",
    "page.credentials_changed": "changed a page's credentials",
    "page.deleted": "deleted a page",
    "member.invited": "invited someone",
    "invitation.revoked": "revoked an invitation",
    "member.added": "added a member",
    "member.role_changed": "changed a member's role",
    "member.removed": "removed a member",
    "workspace.settings_changed": "changed the workspace settings",
    "api_token.created": "created an API token",
    "api_token.revoked": "revoked an API token",
    "api.request": "changed data through the API",
    "event_hook.created": "subscribed a URL to events",
    "event_hook.deleted": "deleted a webhook",
}


def record(
    action: str,
    *,
    tenant_id: int | None,
    target: str | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Add an entry by the current actor to the session (committed with the change it describes)."""
    if action not in ACTION_TEXT:
        raise ValueError(f"unknown audit action {action!r}")
    actor = current_actor()
    entry = AuditEntry(
        at=utcnow(),
        actor_user_id=actor.user_id,
        actor=actor.label[:254],
        ip=(actor.ip or None) and actor.ip[:64],
        tenant_id=tenant_id,
        action=action,
        target=(target or None) and target[:300],
        before=_plain(before),
        after=_plain(after),
    )
    db.session.add(entry)
    return entry


def _plain(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """JSON-safe values: numbers, text, booleans and None as they are, anything else as text."""
    if values is None:
        return None
    return {
        str(k): v if v is None or isinstance(v, bool | int | float | str) else str(v)
        for k, v in values.items()
    }


ENTRIES_PER_PAGE = 50


def entries(
    tenant_id: int | None = None,
    *,
    before_id: int | None = None,
    action: str | None = None,
    limit: int = ENTRIES_PER_PAGE,
) -> list[AuditEntry]:
    """Newest first, keyset-paginated by id; ``tenant_id`` None means every tenant's and the platform's."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    if action:
        query = query.where(AuditEntry.action == action)
    return list(db.session.scalars(query))
