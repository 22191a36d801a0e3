"""API tokens: how a workspace's own systems act for it over ``/api/v1``.

A token is ``crier_`` and 40 random characters, shown once when it is made; only its SHA-256
digest is stored (the secret is random, so a plain digest is enough, and a lookup is one indexed
query). Each token has a name, scopes, an optional expiry, and remembers when and from where it was
last used. Owners and admins make and revoke them; both are audited, and so is every change made
with one (its name is the audit entry's actor).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ForeignKey, String, select, update
from sqlalchemy.orm import Mapped, mapped_column

from tenants import audit
from tenants.accounts import AccountError
from tenants.db import JSONDocument, db, utcnow
from tenants.models import Role, User
from tenants.scoping import TenantScoped, all_tenants

TOKEN_PREFIX = "crier_"  # noqa: S105  (the mark of a Crier token, not a secret)
SHOWN_CHARACTERS = len(TOKEN_PREFIX) + 6  # "crier_a1B2c3": enough to tell tokens apart in a list
LAST_USE_PRECISION = timedelta(minutes=1)  # a busy integration writes its last use once a minute


class Scope(enum.StrEnum):
    """What a token may do. ``admin`` may do everything, the others add writes to ``read``."""

    READ = "read"
    CONTACTS_WRITE = "contacts:write"
    CAMPAIGNS_WRITE = "campaigns:write"
    ADMIN = "admin"

    @property
    def label(self) -> str:
        return _SCOPE_LABELS[self]


_SCOPE_LABELS = {
    Scope.READ: "Read everything (contacts, lists, templates, pages, campaigns, usage)",
    Scope.CONTACTS_WRITE: "Write contacts, lists and segments",
    Scope.CAMPAIGNS_WRITE: "Write templates and campaigns, start and stop them",
    Scope.ADMIN: "Everything, including event webhooks",
}


class ApiToken(TenantScoped, db.Model):
    """One API token of a workspace (the secret itself is never stored)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    shown: Mapped[str] = mapped_column(String(20))  # the secret's first characters, for lists
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    last_used_ip: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None]

    def allows(self, scope: Scope) -> bool:
        granted = set(self.scopes)
        return Scope.ADMIN in granted or scope in granted or (scope is Scope.READ and bool(granted))

    def usable(self, now: datetime | None = None) -> bool:
        now = now or utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable() else "expired"

    @property
    def actor_label(self) -> str:
        """Who the audit log names for changes made with this token."""
        return f"API token {self.name} ({self.shown}…)"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _target(token: ApiToken) -> str:
    return f"API token {token.name}"


def issue(
    actor_role: Role,
    creator: User | None,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Make a token for the current tenant (not committed); returns it and its secret, shown once."""
    if not actor_role.manages_members:
        raise AccountError("Only owners and admins can create API tokens.")
    name = " ".join(name.split())
    if not name:
        raise AccountError("Give the token a name, such as the system that will use it.")
    if len(name) > 80:
        raise AccountError("A token's name can be at most 80 characters.")
    chosen = sorted(set(scopes))
    unknown = [s for s in chosen if s not in Scope.__members__.values()]
    if unknown:
        raise AccountError(f"Unknown scope {unknown[0]!r}.")
    if not chosen:
        raise AccountError("Choose at least one scope.")
    if expires_at is not None and expires_at <= utcnow():
        raise AccountError("The expiry date must be in the future.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(30)
    token = ApiToken(
        name=name,
        shown=secret[:SHOWN_CHARACTERS],
        digest=_digest(secret),
        scopes=chosen,
        created_by_user_id=creator.id if creator else None,
        expires_at=expires_at,
    )
    db.session.add(token)
    db.session.flush()
    audit.record(
        "api_token.created",
        tenant_id=token.tenant_id,
        target=_target(token),
        after={"scopes": " ".join(chosen), "expires_at": expires_at},
    )
    return token, secret


def revoke(actor_role: Role, token: ApiToken) -> None:
    """Revoke ``token`` for good (not committed); revoking a revoked token changes nothing."""
    if not actor_role.manages_members:
        raise AccountError("Only owners and admins can revoke API tokens.")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record("api_token.revoked", tenant_id=token.tenant_id, target=_target(token))


def end_of_day(day: date, zone: ZoneInfo) -> datetime:
    """When a token that "expires on ``day``" stops working: at the end of that day in ``zone``."""
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=zone).astimezone(UTC)


def tokens() -> list[ApiToken]:
    """The current tenant's tokens, newest first (revoked ones too: their last use still tells)."""
    return list(db.session.scalars(select(ApiToken).order_by(ApiToken.id.desc())))


def authenticate(secret: str) -> ApiToken | None:
    """The usable token whose secret this is (of any tenant), or None."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 100:
        return None
    with all_tenants(db.session):
        token = db.session.scalar(select(ApiToken).where(ApiToken.digest == _digest(secret)))
    return token if token is not None and token.usable() else None


def note_use(token: ApiToken, ip: str | None) -> None:
    """Remember the token's last use and address (written once a minute, or when the address changes)."""
    now = utcnow()
    if (
        token.last_used_at is not None
        and now - token.last_used_at < LAST_USE_PRECISION
        and token.last_used_ip == ip
    ):
        return
    with all_tenants(db.session):
        db.session.execute(
            update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now, last_used_ip=ip)
        )
    db.session.commit()
