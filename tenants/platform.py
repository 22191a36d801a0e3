"""The platform admin's view across tenants: the tenant directory, one tenant's facts, the plans.

Everything here spans tenants, so each function opts out of tenant scoping itself (``all_tenants``)
or turns to one tenant (``tenant``); callers need not. Changes go through ``tasks.lifecycle``:
this module only reads.

The directory stays fast at 10,000 tenants (``bench/operator_pages.py``): filters and the sort run in SQL
(today's and 30-day sends are joined only when they are the sort key), and the per-tenant counts
(today's and 30-day sends, pages, contacts, running campaigns) are grouped queries over the page
of tenants shown, never one query per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, select

from tenants.audit import AuditEntry, entries
from tenants.campaigns import Campaign, CampaignState
from tenants.contacts import Contact
from tenants.db import db
from tenants.models import Membership, Role, Tenant, TenantStatus, User
from tenants.pages import Page
from tenants.plans import LimitRow, Plan, limits_of
from tenants.scoping import all_tenants, tenant
from tenants.usage import (
    DailyUsage,
    Today,
    UsageDay,
    local_date,
    quota_rows,
    quota_used_on_local_days,
    sent_since_sql,
    today,
    usage_by_day,
)

TENANTS_PER_PAGE = 50
NO_PLAN = 0  # the plan filter for tenants on no plan ("custom" limits)
SORTS = {
    "name": "name",
    "created": "created",
    "today": "today's sends",
    "30d": "30-day sends",
}
RECENT_CAMPAIGNS = 10
RECENT_AUDIT_ENTRIES = 20


class DirectoryError(ValueError):
    """A directory request that makes no sense (an unknown sort or status); the message is for the admin."""


@dataclass(frozen=True)
class DirectoryRow:
    """One tenant as the directory lists it."""

    id: int
    name: str
    slug: str
    status: TenantStatus
    plan_name: str | None  # None: on no plan ("custom")
    overridden: tuple[str, ...]  # limits set for this tenant alone
    created_at: datetime
    timezone: str
    sent_today: int  # counted against the quota on the tenant's own local day
    daily_quota: int
    sent_30_days: int
    pages: int
    contacts: int
    running_campaigns: int

    @property
    def quota_percent(self) -> float:
        return min(100.0, 100.0 * self.sent_today / self.daily_quota) if self.daily_quota else 100.0


@dataclass(frozen=True)
class DirectoryPage:
    rows: list[DirectoryRow]
    page: int
    has_more: bool
    matching: int  # tenants the search and filters match
    total: int  # every tenant on the platform
    suspended: int  # every suspended tenant on the platform
    per_page: int = TENANTS_PER_PAGE

    @property
    def first(self) -> int:
        """The position of the first row shown, counting from 1."""
        return (self.page - 1) * self.per_page + 1


def _filtered(query: Select, search: str, status: TenantStatus | None, plan_id: int | None) -> Select:
    search = search.strip()
    if search:  # "%" and "_" are matched as typed, not as wildcards
        members = (
            select(Membership.tenant_id)
            .join(User, User.id == Membership.user_id)
            .where(User.email.icontains(search, autoescape=True))
        )
        query = query.where(
            Tenant.name.icontains(search, autoescape=True)
            | Tenant.slug.icontains(search, autoescape=True)
            | Tenant.id.in_(members)
        )
    if status is not None:
        query = query.where(Tenant.status == status)
    if plan_id == NO_PLAN:
        query = query.where(Tenant.plan_id.is_(None))
    elif plan_id is not None:
        query = query.where(Tenant.plan_id == plan_id)
    return query


def parse_status(raw: str | None) -> TenantStatus | None:
    """A status filter as typed (blank: any status)."""
    text = (raw or "").strip().lower()
    if not text:
        return None
    try:
        return TenantStatus(text)
    except ValueError:
        choices = ", ".join(s.value for s in TenantStatus)
        raise DirectoryError(f"Unknown status {raw!r}: choose {choices}.") from None


def _sent_today_by_tenant(tenant_ids: list[int]) -> dict[int, int]:
    return dict(
        db.session.execute(
            select(DailyUsage.tenant_id, DailyUsage.used)
            .join(Tenant, Tenant.id == DailyUsage.tenant_id)
            .where(
                DailyUsage.tenant_id.in_(tenant_ids),
                quota_rows(),
                DailyUsage.day == local_date(Tenant.timezone),
            )
        ).all()
    )


def _sent_30_days_by_tenant(tenant_ids: list[int]) -> dict[int, int]:
    sent = sent_since_sql(30)
    return {
        tenant_id: int(used or 0)
        for tenant_id, used in db.session.execute(
            select(sent.c.tenant_id, sent.c.used).where(sent.c.tenant_id.in_(tenant_ids))
        )
    }


def _count_by_tenant(model: Any, tenant_ids: list[int], *where: Any) -> dict[int, int]:
    return dict(
        db.session.execute(
            select(model.tenant_id, func.count())
            .where(model.tenant_id.in_(tenant_ids), *where)
            .group_by(model.tenant_id)
        ).all()
    )


def tenant_directory(
    search: str = "",
    status: TenantStatus | str | None = None,
    plan_id: int | None = None,
    sort: str = "name",
    descending: bool = False,
    page: int = 1,
    per_page: int = TENANTS_PER_PAGE,
) -> DirectoryPage:
    """One page of tenants matching ``search`` (name, slug or a member's email), ``status`` and
    ``plan_id`` (:data:`NO_PLAN`: on no plan), sorted by one of :data:`SORTS`."""
    if sort not in SORTS:
        raise DirectoryError(f"Unknown sort {sort!r}: choose {', '.join(SORTS)}.")
    if not isinstance(status, TenantStatus):
        status = parse_status(status)
    page = max(1, page)
    with all_tenants(db.session):
        query = _filtered(
            select(Tenant, Plan.name).outerjoin(Plan, Plan.id == Tenant.plan_id), search, status, plan_id
        )
        if sort == "name":
            key = Tenant.name
        elif sort == "created":
            key = Tenant.created_at
        elif sort == "today":
            used = quota_used_on_local_days()
            query = query.outerjoin(
                used, and_(used.c.tenant_id == Tenant.id, used.c.day == local_date(Tenant.timezone))
            )
            key = func.coalesce(used.c.used, 0)
        else:
            sent = sent_since_sql(30)
            query = query.outerjoin(sent, sent.c.tenant_id == Tenant.id)
            key = func.coalesce(sent.c.used, 0)
        order = (key.desc(), Tenant.id.desc()) if descending else (key.asc(), Tenant.id.asc())
        found = db.session.execute(
            query.order_by(*order).limit(per_page + 1).offset((page - 1) * per_page)
        ).all()
        shown = found[:per_page]
        ids = [row.id for row, _ in shown]
        sent_today = _sent_today_by_tenant(ids) if ids else {}
        sent_30_days = _sent_30_days_by_tenant(ids) if ids else {}
        pages = _count_by_tenant(Page, ids) if ids else {}
        contacts = _count_by_tenant(Contact, ids) if ids else {}
        running = _count_by_tenant(Campaign, ids, Campaign.state == CampaignState.RUNNING) if ids else {}
        matching = db.session.scalar(
            _filtered(select(func.count()).select_from(Tenant), search, status, plan_id)
        )
        total, suspended = db.session.execute(
            select(func.count(), func.count().filter(Tenant.status == TenantStatus.SUSPENDED)).select_from(
                Tenant
            )
        ).one()
    rows = [
        DirectoryRow(
            id=row.id,
            name=row.name,
            slug=row.slug,
            status=row.status,
            plan_name=plan_name,
            overridden=tuple(sorted(row.limit_overrides or {})),
            created_at=row.created_at,
            timezone=row.timezone,
            sent_today=int(sent_today.get(row.id, 0)),
            daily_quota=row.daily_message_quota,
            sent_30_days=sent_30_days.get(row.id, 0),
            pages=pages.get(row.id, 0),
            contacts=contacts.get(row.id, 0),
            running_campaigns=running.get(row.id, 0),
        )
        for row, plan_name in shown
    ]
    return DirectoryPage(rows, page, len(found) > per_page, matching, total, suspended, per_page)


# --------------------------------------------------------------------------- one tenant


def tenant_by_slug(slug: str) -> Tenant | None:
    with all_tenants(db.session):
        return db.session.scalar(select(Tenant).where(Tenant.slug == slug.strip().lower()))


@dataclass(frozen=True)
class TenantFacts:
    """Everything the console's tenant page shows."""

    tenant: Tenant
    plan: Plan | None
    limits: list[LimitRow]
    today: Today
    days: list[UsageDay]
    page_names: dict[int, str]
    members: list[tuple[str, Role]]
    campaigns: list[Campaign]
    audit: list[AuditEntry]

    @property
    def days_totals(self) -> dict[str, int]:
        """The last 30 days summed: counted against the quota, accepted by providers, failed."""
        return {
            "used": sum(day.used for day in self.days),
            "sent": sum(counts.get("sent", 0) for day in self.days for counts in day.pages.values()),
            "failed": sum(counts.get("failed", 0) for day in self.days for counts in day.pages.values()),
        }


def tenant_facts(tenant_id: int) -> TenantFacts | None:
    """The tenant's status, plan and limits, today's and the last 30 days' use, its members, recent
    campaigns and latest audit entries; None when there is no such tenant."""
    with all_tenants(db.session):
        tenant_row = db.session.get(Tenant, tenant_id)
        if tenant_row is None:
            return None
        plan, limits = limits_of(tenant_row)
        members = [
            (email, role)
            for email, role in db.session.execute(
                select(User.email, Membership.role)
                .join(User, User.id == Membership.user_id)
                .where(Membership.tenant_id == tenant_id)
                .order_by(User.email)
            )
        ]
        recent = list(
            db.session.scalars(
                select(Campaign)
                .where(Campaign.tenant_id == tenant_id)
                .order_by(Campaign.created_at.desc(), Campaign.id.desc())
                .limit(RECENT_CAMPAIGNS)
            )
        )
        audit_entries = entries(tenant_id, limit=RECENT_AUDIT_ENTRIES)
    with tenant(db.session, tenant_id):
        used_now = today(tenant_row)
        days = usage_by_day(tenant_row)
        page_names = dict(db.session.execute(select(Page.id, Page.name)).all())
    return TenantFacts(
        tenant_row,
        plan,
        limits,
        used_now,
        days,
        page_names,
        members,
        recent,
        audit_entries,
    )


def describe_changes(changes: dict[str, tuple[int, int]]) -> str:
    """Limits that changed, for a message: "daily message quota 10,000 → 50,000, pages 10 → 3"."""
    return ", ".join(f"{key.replace('_', ' ')} {a:,} → {b:,}" for key, (a, b) in changes.items())


# --------------------------------------------------------------------------- plans


def plans_with_tenant_counts() -> list[tuple[Plan, int]]:
    """Every plan, by name, with how many tenants are on it."""
    with all_tenants(db.session):
        on_plan = dict(
            db.session.execute(
                select(Tenant.plan_id, func.count())
                .where(Tenant.plan_id.is_not(None))
                .group_by(Tenant.plan_id)
            ).all()
        )
        plans = db.session.scalars(select(Plan).order_by(Plan.name)).all()
    return [(plan, on_plan.get(plan.id, 0)) for plan in plans]


def tenant_names(tenant_ids: set[int]) -> dict[int, str]:
    """Names of the given tenants (for an audit page's workspace column)."""
    if not tenant_ids:
        return {}
    with all_tenants(db.session):
        return dict(db.session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(tenant_ids))).all())
