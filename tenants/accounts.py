"""Accounts: sign-up, sign-in with throttling, workspaces and their members."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import phonenumbers
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from flask import current_app
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import delete, func, select

from tenants import audit
from tenants.db import db, utcnow
from tenants.models import LoginFailure, Membership, Role, Tenant, TenantStatus, User
from tenants.phones import country_for_timezone
from tenants.plans import assign_plan, default_plan
from tenants.scoping import all_tenants, tenant

MIN_PASSWORD_LENGTH = 10
LOGIN_WINDOW = timedelta(minutes=15)
FAILURES_PER_ACCOUNT_AND_ADDRESS = 10  # in LOGIN_WINDOW, before that address waits for that account
FAILURES_PER_ADDRESS = 50  # in LOGIN_WINDOW, whichever accounts were tried, before the address waits

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class AccountError(ValueError):
    """A request about accounts that cannot be honoured; the message is for the user."""


class TooManyAttempts(AccountError):
    def __init__(self, retry_after: timedelta):
        minutes = max(1, round(retry_after.total_seconds() / 60))
        super().__init__(
            f"Too many failed sign-in attempts. Try again in {minutes} minute{'s' * (minutes != 1)}."
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class Workspace:
    """A tenant as seen by one of its members."""

    tenant: Tenant
    role: Role


@cache
def _dummy_hash() -> str:
    return _hasher.hash("not a password anyone has")


def normalise_email(raw: str) -> str:
    """Validate an address and return its canonical, lower-cased form."""
    try:
        checked = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise AccountError(str(exc)) from None
    return checked.normalized.lower()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"Passwords need at least {MIN_PASSWORD_LENGTH} characters.")
    return _hasher.hash(password)


@cache
def timezones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


def check_timezone(name: str) -> str:
    if name not in timezones():
        raise AccountError(f"Unknown time zone: {name!r}.")
    return name


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:60] or "workspace"


def _unique_slug(name: str) -> str:
    base = slugify(name)
    taken = set(db.session.scalars(select(Tenant.slug).where(Tenant.slug.like(f"{base}%"))))
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


def create_workspace(owner: User, name: str, timezone: str = "UTC") -> Tenant:
    """A new tenant with ``owner`` as its owner (not committed); the country of its national phone
    numbers is the time zone's (``America/Sao_Paulo`` → BR) when the zone has one."""
    name = name.strip()
    if not name:
        raise AccountError("Give the workspace a name.")
    new_tenant = Tenant(
        name=name[:120],
        slug=_unique_slug(name),
        timezone=check_timezone(timezone),
        default_country=country_for_timezone(timezone),  # national numbers read as the zone's country's
    )
    plan = default_plan()
    if plan is not None:
        assign_plan(new_tenant, plan)
    db.session.add(new_tenant)
    db.session.flush()
    with tenant(db.session, new_tenant.id):
        db.session.add(Membership(tenant_id=new_tenant.id, user=owner, role=Role.OWNER))
        db.session.flush()
    return new_tenant


def country_codes() -> list[tuple[str, str]]:
    """(ISO code, "BR (+55)") for every region phonenumbers knows, for the default-country choice."""
    return sorted(
        (region, f"{region} (+{phonenumbers.country_code_for_region(region)})")
        for region in phonenumbers.SUPPORTED_REGIONS
    )


def update_workspace(workspace: Tenant, name: str, timezone: str, default_country: str | None) -> None:
    """Rename the workspace and set its time zone and the country of national phone numbers."""
    if not name.strip():
        raise AccountError("Give the workspace a name.")
    if default_country and default_country not in phonenumbers.SUPPORTED_REGIONS:
        raise AccountError(f"Unknown country code: {default_country!r}.")
    before = {"name": workspace.name, "timezone": workspace.timezone, "country": workspace.default_country}
    workspace.name = name.strip()[:120]
    workspace.timezone = check_timezone(timezone)
    workspace.default_country = default_country or None
    after = {"name": workspace.name, "timezone": workspace.timezone, "country": workspace.default_country}
    changed = [key for key in before if before[key] != after[key]]
    if changed:
        audit.record(
            "workspace.settings_changed",
            tenant_id=workspace.id,
            target=f"workspace {workspace.name}",
            before={key: before[key] for key in changed},
            after={key: after[key] for key in changed},
        )


def create_account(email: str, password: str, *, verified: bool = False) -> User:
    """A new user without a workspace (not committed); ``verified`` when the address is proven."""
    email = normalise_email(email)
    if db.session.scalar(select(User.id).where(User.email == email)) is not None:
        raise AccountError("An account with this email already exists. Sign in instead.")
    user = User(
        email=email, password_hash=hash_password(password), email_verified_at=utcnow() if verified else None
    )
    db.session.add(user)
    return user


def sign_up(email: str, password: str, workspace_name: str, timezone: str = "UTC") -> tuple[User, Tenant]:
    """Create a user and their first workspace in one step, and commit."""
    user = create_account(email, password)
    new_tenant = create_workspace(user, workspace_name, timezone)
    db.session.commit()
    return user, new_tenant


def _failures(now: datetime, email: str, ip: str | None = None) -> tuple[int, datetime | None]:
    """Failed sign-ins in the window, for one address (``email`` None) or one account from one address."""
    where = [LoginFailure.at > now - LOGIN_WINDOW, LoginFailure.ip == ip]
    if email is not None:
        where.append(LoginFailure.email == email)
    count, oldest = db.session.execute(select(func.count(), func.min(LoginFailure.at)).where(*where)).one()
    return count, oldest


def _wait(now: datetime, email: str, ip: str, *, counting_this_one: bool = False) -> timedelta | None:
    """How long this (account, address) pair or this address must wait, or None to go on."""
    waits = []
    for key, limit in ((email, FAILURES_PER_ACCOUNT_AND_ADDRESS), (None, FAILURES_PER_ADDRESS)):
        count, oldest = _failures(now, key, ip)
        if count > limit or (count == limit and not counting_this_one):
            waits.append(oldest + LOGIN_WINDOW - now)
    return max(waits) if waits else None


def _checked_guess(email: str, password: str, ip: str) -> User:
    """The user whose password this is, or raise; the one throttle on guessing passwords.

    Guessing is slowed per (account, address) and per address, never per account alone: a flood of
    wrong passwords from one place does not lock the owner out from another. The attempt is written
    down as a failure (and committed) before the password is checked, then counted with every other
    attempt written so far; so parallel attempts cannot pass the limit together, and a success
    takes its own record back.
    """
    email_key, ip = email.strip().lower()[:254], ip[:64]
    now = utcnow()
    wait = _wait(now, email_key, ip)
    if wait:
        raise TooManyAttempts(wait)
    attempt = LoginFailure(email=email_key, ip=ip, at=now)
    db.session.add(attempt)
    db.session.commit()
    wait = _wait(now, email_key, ip, counting_this_one=True)
    if wait:
        db.session.delete(attempt)  # refused untried: it does not count as a guess
        db.session.commit()
        raise TooManyAttempts(wait)
    user = db.session.scalar(select(User).where(User.email == email_key))
    try:
        # An unknown address costs the same hash as a known one, so timing does not tell them apart.
        _hasher.verify(user.password_hash if user else _dummy_hash(), password)
        if user is None:
            raise VerificationError("no such user")
    except (VerificationError, InvalidHashError):
        db.session.execute(delete(LoginFailure).where(LoginFailure.at < now - timedelta(days=1)))
        db.session.commit()
        raise AccountError("Wrong email or password.") from None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    db.session.execute(delete(LoginFailure).where(LoginFailure.email == email_key, LoginFailure.ip == ip))
    return user


def authenticate(email: str, password: str, ip: str) -> User:
    """Return the user for these credentials, or raise (throttled: see :func:`_checked_guess`)."""
    user = _checked_guess(email, password, ip)
    user.last_login_at = utcnow()
    db.session.commit()
    return user


def end_sessions(user: User) -> None:
    """End every session the user has, in every browser (not committed): their cookies stop working."""
    user.session_version = (user.session_version or 1) + 1


def workspaces_of(user: User) -> list[Workspace]:
    """Every tenant the user belongs to, by name."""
    with all_tenants(db.session):
        rows = db.session.execute(
            select(Tenant, Membership.role)
            .join(Membership, Membership.tenant_id == Tenant.id)
            .where(Membership.user_id == user.id)
            .order_by(Tenant.name, Tenant.id)
        ).all()
    return [Workspace(t, role) for t, role in rows]


def workspace_for(user: User, tenant_id: int) -> Workspace | None:
    """The user's view of ``tenant_id``, or None when they are not a member of it."""
    with all_tenants(db.session):
        row = db.session.execute(
            select(Tenant, Membership.role)
            .join(Membership, Membership.tenant_id == Tenant.id)
            .where(Membership.user_id == user.id, Tenant.id == tenant_id)
        ).first()
    return Workspace(*row) if row else None


def check_owner_change(actor_role: Role, *roles: Role) -> None:
    """Only an owner makes, unmakes or adds an owner (an admin who could would take the workspace)."""
    if Role.OWNER in roles and actor_role is not Role.OWNER:
        raise AccountError("Only an owner can change who owns the workspace.")


def _owners_left_without(membership: Membership) -> int:
    return db.session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.role == Role.OWNER, Membership.id != membership.id)
    )


def change_role(actor_role: Role, membership: Membership, role: Role) -> None:
    """Give ``membership`` a new role; only owners make or unmake owners, and one owner always stays."""
    check_owner_change(actor_role, role, membership.role)
    if membership.role is Role.OWNER and role is not Role.OWNER and _owners_left_without(membership) == 0:
        raise AccountError("A workspace needs at least one owner.")
    if membership.role is not role:
        audit.record(
            "member.role_changed",
            tenant_id=membership.tenant_id,
            target=f"member {membership.user.email}",
            before={"role": membership.role.value},
            after={"role": role.value},
        )
    membership.role = role


def remove_member(actor_role: Role, membership: Membership) -> None:
    """Remove ``membership`` from its tenant, keeping at least one owner, and end the removed user's
    sessions (a saved cookie would otherwise still carry them into the workspace)."""
    if membership.role is Role.OWNER and actor_role is not Role.OWNER:
        raise AccountError("Only an owner can remove an owner.")
    if membership.role is Role.OWNER and _owners_left_without(membership) == 0:
        raise AccountError("A workspace needs at least one owner.")
    audit.record(
        "member.removed",
        tenant_id=membership.tenant_id,
        target=f"member {membership.user.email}",
        before={"role": membership.role.value},
    )
    end_sessions(membership.user)
    db.session.delete(membership)


def find_user(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == normalise_email(email)))


def make_platform_admin(email: str, password: str | None) -> tuple[User, bool]:
    """Promote (or create) a platform admin; returns the user and whether it was created."""
    email = normalise_email(email)
    user = find_user(email)
    created = user is None
    if user is None:
        if not password:
            raise AccountError("A new admin account needs a password.")
        # the operator who runs the CLI vouches for the address
        user = User(email=email, password_hash=hash_password(password), email_verified_at=utcnow())
        db.session.add(user)
    elif password:
        user.password_hash = hash_password(password)
    user.is_platform_admin = True
    db.session.commit()
    return user, created


def is_usable(workspace: Workspace | None) -> bool:
    return workspace is not None and workspace.tenant.status is TenantStatus.ACTIVE


# --------------------------------------------------------------------------- passwords and addresses

RESET_LINK_MAX_AGE = timedelta(minutes=30)
VERIFICATION_LINK_MAX_AGE = timedelta(days=3)
TEST_AUDIENCE = 10
"""Recipients a campaign may reach while no owner of its workspace has verified their address."""


def change_password(user: User, current: str, new: str, ip: str) -> None:
    """Set a new password after checking the current one (guesses throttled as sign-ins are), and end
    every session (not committed)."""
    try:
        _checked_guess(user.email, current, ip)
    except TooManyAttempts:
        raise
    except AccountError:
        raise AccountError("Your current password is not right.") from None
    set_password(user, new)


def set_password(user: User, new: str) -> None:
    """A new password; every session of the user ends and every reset link dies (not committed)."""
    user.password_hash = hash_password(new)
    end_sessions(user)


def _signer(purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=f"crier-{purpose}")


def _fingerprint(user: User) -> str:
    """Changes with the password hash (a new salt each time), so a used reset link is dead."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def _signed_user(token: str, purpose: str, max_age: timedelta) -> tuple[User, dict] | None:
    try:
        data = _signer(purpose).loads(token, max_age=int(max_age.total_seconds()))
    except BadData:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("user"), int):
        return None
    user = db.session.get(User, data["user"])
    return (user, data) if user is not None else None


def reset_token(user: User) -> str:
    """A signed link token for a password reset: 30 minutes, dead once the password changes."""
    return _signer("password-reset").dumps({"user": user.id, "fp": _fingerprint(user)})


def user_for_reset(token: str) -> User | None:
    """The user a reset token is for while it is fresh and unused, else None."""
    found = _signed_user(token, "password-reset", RESET_LINK_MAX_AGE)
    if found is None or not hmac.compare_digest(str(found[1].get("fp")), _fingerprint(found[0])):
        return None
    return found[0]


def verification_token(user: User) -> str:
    """A signed link token proving the user reads mail at their address (3 days)."""
    return _signer("email-verification").dumps({"user": user.id, "email": user.email})


def verify_email(token: str) -> User | None:
    """Mark the token's user verified (not committed); None for a stale or forged token."""
    found = _signed_user(token, "email-verification", VERIFICATION_LINK_MAX_AGE)
    if found is None or found[1].get("email") != found[0].email:
        return None
    mark_verified(found[0])
    return found[0]


def mark_verified(user: User) -> None:
    """The user has shown they read mail at their address (a link reached them); not committed."""
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()


def sends_beyond_tests(tenant_id: int) -> bool:
    """Whether the workspace may send to more than :data:`TEST_AUDIENCE` recipients: one of its
    owners has verified their address (a new sign-up cannot spam from an address not theirs)."""
    with all_tenants(db.session):
        return (
            db.session.scalar(
                select(Membership.id)
                .join(User, User.id == Membership.user_id)
                .where(
                    Membership.tenant_id == tenant_id,
                    Membership.role == Role.OWNER,
                    User.email_verified_at.is_not(None),
                )
                .limit(1)
            )
            is not None
        )
