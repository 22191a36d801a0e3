"""Plans and each tenant's limits: what a platform admin sells and sets.

A :class:`Plan` is data: its daily quota, aggregate send rate, pages, recipients per campaign and
contacts. A tenant is on one plan and may have per-tenant overrides of any of those limits; the
tenant's own limit columns (``Tenant.daily_message_quota`` and the others) always hold the
*effective* value (the override, else the plan's), so the campaign engine reads one column and
never joins plans. Every change here goes through :func:`apply_limits`, which writes those columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from tenants.contacts import Contact
from tenants.db import TimestampMixin, db
from tenants.models import Tenant
from tenants.pages import Page


@dataclass(frozen=True)
class LimitSpec:
    key: str  # the column on plans and tenants
    label: str
    unit: str
    minimum: int
    maximum: int


LIMITS: tuple[LimitSpec, ...] = (
    LimitSpec("daily_message_quota", "Daily message quota", "messages a day", 0, 100_000_000),
    LimitSpec("max_send_rate", "Send rate", "messages per second, all pages together", 1, 100_000),
    LimitSpec("max_pages", "Pages", "sending channels", 0, 10_000),
    LimitSpec("max_recipients_per_campaign", "Recipients per campaign", "recipients", 1, 100_000_000),
    LimitSpec("max_contacts", "Contacts", "contacts", 0, 100_000_000),
)
LIMIT_KEYS = tuple(spec.key for spec in LIMITS)
LIMIT_SPECS = {spec.key: spec for spec in LIMITS}


class PlanError(ValueError):
    """A plan or limit change that cannot be made; the message is for the admin."""


class Plan(TimestampMixin, db.Model):
    """A named set of limits tenants are put on (platform-level: no tenant owns it)."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    is_default: Mapped[bool] = mapped_column(default=False)  # new workspaces start on it
    daily_message_quota: Mapped[int]
    max_send_rate: Mapped[int]
    max_pages: Mapped[int]
    max_recipients_per_campaign: Mapped[int]
    max_contacts: Mapped[int]

    def limits(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in LIMIT_KEYS}


def check_limit(key: str, raw: Any) -> int:
    """One limit typed by an admin, as a whole number within its bounds."""
    spec = LIMIT_SPECS.get(key)
    if spec is None:
        raise PlanError(f"Unknown limit {key!r}.")
    text = str(raw).strip().replace(",", "").replace("_", "")
    try:
        value = int(text)
    except ValueError:
        raise PlanError(f"{spec.label}: {str(raw)!r} is not a whole number.") from None
    if not spec.minimum <= value <= spec.maximum:
        raise PlanError(f"{spec.label} must be between {spec.minimum:,} and {spec.maximum:,}.")
    return value


def check_limits(values: Mapping[str, Any], *, every: bool = False) -> dict[str, int]:
    """The limits among ``values`` (blank ones left out), checked; ``every``: all must be given."""
    checked = {
        key: check_limit(key, value)
        for key, value in values.items()
        if key in LIMIT_SPECS and str(value if value is not None else "").strip()
    }
    missing = [LIMIT_SPECS[k].label for k in LIMIT_KEYS if k not in checked]
    if every and missing:
        raise PlanError("Missing: " + ", ".join(missing) + ".")
    unknown = sorted(set(values) - set(LIMIT_SPECS))
    if unknown:
        raise PlanError(f"Unknown limit {unknown[0]!r}.")
    return checked


def default_plan() -> Plan | None:
    return db.session.scalar(select(Plan).where(Plan.is_default.is_(True)).order_by(Plan.id).limit(1))


def plan_named(name: str) -> Plan | None:
    return db.session.scalar(select(Plan).where(Plan.name == name.strip()))


def save_plan(plan: Plan, name: str, values: Mapping[str, Any], is_default: bool = False) -> list[int]:
    """Create or change a plan (not committed); tenants on it get its new limits where they have no
    override. Returns the ids of the tenants whose effective limits changed."""
    name = name.strip()
    if not name:
        raise PlanError("Give the plan a name.")
    if len(name) > 80:
        raise PlanError("Plan names have at most 80 characters.")
    clash = db.session.scalar(select(Plan.id).where(Plan.name == name, Plan.id != plan.id))
    if clash is not None:
        raise PlanError(f"There is already a plan called {name}.")
    limits = check_limits(values, every=True)
    plan.name = name
    for key, value in limits.items():
        setattr(plan, key, value)
    if is_default:
        for other in db.session.scalars(select(Plan).where(Plan.is_default.is_(True), Plan.id != plan.id)):
            other.is_default = False
    plan.is_default = is_default or bool(plan.is_default)
    db.session.add(plan)
    db.session.flush()
    changed = []
    for tenant in db.session.scalars(select(Tenant).where(Tenant.plan_id == plan.id)):
        if apply_limits(tenant, plan):
            changed.append(tenant.id)
    return changed


def effective_limits(plan: Plan | None, overrides: Mapping[str, int]) -> dict[str, int]:
    """The override where there is one, else the plan's limit (no plan: the overrides only)."""
    base = plan.limits() if plan is not None else {}
    return {
        key: int(overrides[key]) if key in overrides else base[key]
        for key in LIMIT_KEYS
        if key in base or key in overrides
    }


@dataclass(frozen=True)
class LimitRow:
    """One limit of a tenant: what applies, what its plan says, its own override, and how much of it is
    taken (pages and contacts are a stock; the other limits are not)."""

    key: str
    label: str
    unit: str
    effective: int
    plan_value: int | None
    override: int | None
    in_use: int | None

    @property
    def overridden(self) -> bool:
        return self.override is not None


def limits_of(tenant: Tenant) -> tuple[Plan | None, list[LimitRow]]:
    """The tenant's plan and its five limits as the usage page and the console show them."""
    plan = db.session.get(Plan, tenant.plan_id) if tenant.plan_id else None
    overrides = tenant.limit_overrides or {}
    in_use = {
        "max_pages": db.session.scalar(
            select(func.count()).select_from(Page).where(Page.tenant_id == tenant.id)
        ),
        "max_contacts": db.session.scalar(
            select(func.count()).select_from(Contact).where(Contact.tenant_id == tenant.id)
        ),
    }
    return plan, [
        LimitRow(
            spec.key,
            spec.label,
            spec.unit,
            getattr(tenant, spec.key),
            getattr(plan, spec.key) if plan is not None else None,
            int(overrides[spec.key]) if spec.key in overrides else None,
            in_use.get(spec.key),
        )
        for spec in LIMITS
    ]


def apply_limits(tenant: Tenant, plan: Plan | None = None) -> dict[str, tuple[int, int]]:
    """Write the tenant's effective limits from its plan and overrides; returns what changed
    (limit to (before, after))."""
    if plan is None and tenant.plan_id is not None:
        plan = db.session.get(Plan, tenant.plan_id)
    changes = {}
    for key, value in effective_limits(plan, tenant.limit_overrides or {}).items():
        before = getattr(tenant, key)
        if before != value:
            changes[key] = (before, value)
            setattr(tenant, key, value)
    return changes


def assign_plan(tenant: Tenant, plan: Plan, keep_overrides: bool = True) -> dict[str, tuple[int, int]]:
    """Put the tenant on ``plan`` (not committed); returns the limits that changed."""
    tenant.plan_id = plan.id
    if not keep_overrides:
        tenant.limit_overrides = {}
    return apply_limits(tenant, plan)


def set_overrides(tenant: Tenant, values: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Override some of the tenant's limits (not committed). A blank or ``"plan"`` value drops the
    override, going back to the plan's limit. Returns the limits that changed."""
    overrides = dict(tenant.limit_overrides or {})
    for key, raw in values.items():
        if key not in LIMIT_SPECS:
            raise PlanError(f"Unknown limit {key!r}.")
        text = str(raw if raw is not None else "").strip()
        if text == "" or text.lower() == "plan":
            if tenant.plan_id is None and key in overrides:
                raise PlanError("A tenant without a plan keeps its own limits: give a number.")
            overrides.pop(key, None)
        else:
            overrides[key] = check_limit(key, text)
    tenant.limit_overrides = overrides
    return apply_limits(tenant)


def limits_form_values(tenant: Tenant) -> dict[str, str]:
    """The override form's fields: the overridden value, or blank for "the plan's"."""
    overrides = tenant.limit_overrides or {}
    return {key: str(overrides[key]) if key in overrides else "" for key in LIMIT_KEYS}
