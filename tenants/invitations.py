"""Invitations by email: the only way into a workspace for someone who is not in it yet.

The link carries a random token; only its SHA-256 digest is stored, so a copy of the database opens
no workspace. A link lasts :data:`INVITATION_LIFETIME`, works once, and dies when the invitation is
resent (a new token) or revoked. Inviting never says whether the address has a Crier account.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update

from tenants import audit
from tenants.accounts import AccountError, check_owner_change, create_account, normalise_email
from tenants.db import db, utcnow
from tenants.models import Invitation, Membership, Role, Tenant, User
from tenants.scoping import all_tenants, tenant

INVITATION_LIFETIME = timedelta(days=7)
UNUSABLE = (
    "This invitation link no longer works: it has expired, was revoked, was replaced by a newer one "
    "or was already used. Ask the workspace's owner to invite you again."
)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(invitation: Invitation) -> str:
    token = secrets.token_urlsafe(32)
    invitation.token_digest = _digest(token)
    invitation.expires_at = utcnow() + INVITATION_LIFETIME
    invitation.sent_at = utcnow()
    return token


def _target(invitation: Invitation) -> str:
    return f"invitation {invitation.email}"


def invite(actor_role: Role, inviter: User, email: str, role: Role) -> tuple[Invitation, str]:
    """Invite ``email`` to the current tenant as ``role`` (not committed); returns the invitation and
    its link's token. Inviting an address with a pending invitation renews that one."""
    check_owner_change(actor_role, role)
    email = normalise_email(email)
    member = db.session.scalar(
        select(Membership.id).join(User, User.id == Membership.user_id).where(User.email == email)
    )
    if member is not None:
        raise AccountError(f"{email} is already a member of this workspace.")
    invitation = db.session.scalar(
        select(Invitation).where(
            Invitation.email == email, Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None)
        )
    )
    if invitation is None:
        invitation = Invitation(email=email)
        db.session.add(invitation)
    invitation.role = role
    invitation.invited_by_id = inviter.id
    token = _new_token(invitation)
    db.session.flush()
    audit.record(
        "member.invited",
        tenant_id=invitation.tenant_id,
        target=_target(invitation),
        after={"role": role.value},
    )
    return invitation, token


def pending() -> list[Invitation]:
    """The current tenant's invitations not yet accepted or revoked (expired ones too: they can be
    resent), by address."""
    return list(
        db.session.scalars(
            select(Invitation)
            .where(Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None))
            .order_by(Invitation.email, Invitation.id)
        )
    )


def _check_open(invitation: Invitation) -> None:
    if invitation.accepted_at is not None:
        raise AccountError(f"{invitation.email} already accepted this invitation.")
    if invitation.revoked_at is not None:
        raise AccountError(f"The invitation of {invitation.email} was revoked: invite them again.")


def resend(actor_role: Role, invitation: Invitation) -> str:
    """A new token and a new expiry for a pending invitation (not committed): the old link dies."""
    check_owner_change(actor_role, invitation.role)
    _check_open(invitation)
    return _new_token(invitation)


def revoke(actor_role: Role, invitation: Invitation) -> None:
    """The link stops working (not committed)."""
    check_owner_change(actor_role, invitation.role)
    _check_open(invitation)
    invitation.revoked_at = utcnow()
    audit.record(
        "invitation.revoked",
        tenant_id=invitation.tenant_id,
        target=_target(invitation),
        before={"role": invitation.role.value},
    )


@dataclass(frozen=True)
class Found:
    """What a link's token leads to: the invitation and its workspace, or why it cannot be used."""

    invitation: Invitation | None
    workspace: Tenant | None

    @property
    def usable(self) -> bool:
        return self.invitation is not None and self.workspace is not None


def find(token: str) -> Found | None:
    """The invitation a link's token names, across tenants; None for an unknown token, an unusable
    ``Found`` for an expired, revoked, replaced or used one (or a suspended workspace's)."""
    with all_tenants(db.session):
        invitation = db.session.scalar(select(Invitation).where(Invitation.token_digest == _digest(token)))
        if invitation is None:
            return None
        workspace = db.session.get(Tenant, invitation.tenant_id)
    if (
        invitation.accepted_at is not None
        or invitation.revoked_at is not None
        or invitation.expires_at <= utcnow()
        or workspace is None
        or not workspace.is_active
    ):
        return Found(None, None)
    return Found(invitation, workspace)


def is_member(user: User, tenant_id: int) -> bool:
    with all_tenants(db.session):
        return (
            db.session.scalar(
                select(Membership.id).where(Membership.user_id == user.id, Membership.tenant_id == tenant_id)
            )
            is not None
        )


def accept(invitation: Invitation, user: User) -> Membership:
    """``user`` joins the inviting tenant with the invited role, and commits. The link is used up
    atomically: of two clicks at once, one joins and the other is refused."""
    with tenant(db.session, invitation.tenant_id):
        if is_member(user, invitation.tenant_id):
            raise AccountError("You are already a member of this workspace.")
        now = utcnow()
        used = db.session.execute(
            update(Invitation)
            .where(
                Invitation.id == invitation.id,
                Invitation.accepted_at.is_(None),
                Invitation.revoked_at.is_(None),
                Invitation.expires_at > now,
            )
            .values(accepted_at=now, accepted_by_id=user.id)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not used:
            db.session.rollback()
            raise AccountError(UNUSABLE)
        membership = Membership(tenant_id=invitation.tenant_id, user=user, role=invitation.role)
        db.session.add(membership)
        db.session.flush()
        audit.record(
            "member.added",
            tenant_id=invitation.tenant_id,
            target=f"member {user.email}",
            after={"role": invitation.role.value, "invited": invitation.email},
        )
        db.session.commit()
    return membership


def sign_up_invited(invitation: Invitation, password: str) -> User:
    """An account for the invited address (proven by the link, so verified) that joins the inviting
    workspace and no other: no workspace of its own is created."""
    user = create_account(invitation.email, password, verified=True)
    db.session.flush()
    accept(invitation, user)
    return user
