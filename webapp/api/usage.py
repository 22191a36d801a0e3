"""Usage over the API: today's sends against the daily quota, and the history per day (the usage page's
numbers, from ``tenants.usage``). Days are the workspace's, in its time zone."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from spectree import Response

from tenants.api_tokens import Scope
from tenants.campaigns import quota_day
from tenants.db import db
from tenants.models import Tenant
from tenants.pages import ProviderKind
from tenants.usage import pages_in_usage, today, usage_between
from webapp.api import bp, spec
from webapp.api.auth import current_token, requires
from webapp.api.common import ERRORS
from webapp.api.problems import ApiProblem, FieldError, Problem

DEFAULT_DAYS = 30
MAX_DAYS = 366
EARLIEST_DAY = date(2000, 1, 1)
LATEST_DAY = date(2999, 12, 31)
Day = Annotated[date, Field(ge=EARLIEST_DAY, le=LATEST_DAY)]


class PageTodayOut(BaseModel):
    page_id: int
    name: str
    kind: ProviderKind
    sent: int = Field(description="Accepted by the provider today")
    cap: int | None = Field(description="The page's daily cap; null: none")
    cap_used: int
    cap_left: int | None


class UsageToday(BaseModel):
    """Today's use of the daily quota, and each page's sends and cap."""

    day: date = Field(description="Today, in the workspace's time zone")
    used: int = Field(description="Counted against the quota today (sent, or being sent)")
    quota: int
    left: int
    percent: float
    resets_at: datetime = Field(description="When the quota day rolls over")
    pages: list[PageTodayOut]


class UsagePageOut(BaseModel):
    page_id: int
    name: str
    channel: str
    deleted: bool = Field(description="The page is gone; its counted days remain")


class PageDayOut(BaseModel):
    page_id: int
    sent: int
    failed: int
    cap_used: int


class UsageDayOut(BaseModel):
    day: date
    used: int = Field(description="Counted against the quota that day")
    quota: int | None = Field(description="Today's quota (past days: null, the quota may have changed)")
    pages: list[PageDayOut]


class UsageDays(BaseModel):
    """Per day, newest first: quota use and what each page sent and failed."""

    from_: date = Field(alias="from")
    to: date
    pages: list[UsagePageOut] = Field(description="The pages the days name")
    days: list[UsageDayOut]

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)


class UsageDaysQuery(BaseModel):
    """A span of days, both included (default: the last 30 days; at most 366)."""

    from_: Day | None = Field(default=None, alias="from", description="Default: 29 days before to")
    to: Day | None = Field(default=None, description="Default: today")


def _workspace() -> Tenant:
    return db.session.get(Tenant, current_token().tenant_id)


@bp.get("/usage/today")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=UsageToday, **ERRORS), tags=["usage"])
def usage_today():
    """Sent today against the daily quota, per page."""
    now = today(_workspace())
    return UsageToday(
        day=now.day,
        used=now.used,
        quota=now.quota,
        left=now.left,
        percent=round(now.percent, 1),
        resets_at=now.resets_at,
        pages=[
            PageTodayOut(
                page_id=page.page_id,
                name=page.name,
                kind=page.kind,
                sent=page.sent,
                cap=page.cap,
                cap_used=page.cap_used,
                cap_left=page.cap_left,
            )
            for page in now.pages
        ],
    )


@bp.get("/usage/days")
@requires(Scope.READ)
@spec.validate(
    query=UsageDaysQuery, resp=Response(HTTP_200=UsageDays, HTTP_422=Problem, **ERRORS), tags=["usage"]
)
def usage_days(query: UsageDaysQuery):
    """Quota use and per-page sends and failures on each day from ``from`` to ``to``."""
    tenant = _workspace()
    last = query.to or quota_day(tenant)
    first = query.from_ or max(EARLIEST_DAY, last - timedelta(days=DEFAULT_DAYS - 1))
    if first > last:
        raise ApiProblem(
            "invalid-request",
            "from is after to.",
            errors=[FieldError(field="from", message="must be on or before to")],
        )
    if (last - first).days >= MAX_DAYS:
        raise ApiProblem(
            "invalid-request",
            f"Ask for at most {MAX_DAYS} days at a time.",
            errors=[FieldError(field="from", message=f"at most {MAX_DAYS} days before to")],
        )
    history = usage_between(tenant, first, last)
    return UsageDays(
        from_=first,
        to=last,
        pages=[
            UsagePageOut(page_id=page.page_id, name=page.name, channel=page.channel, deleted=page.deleted)
            for page in pages_in_usage(tenant, history)
        ],
        days=[
            UsageDayOut(
                day=day.day,
                used=day.used,
                quota=day.quota,
                pages=[
                    PageDayOut(
                        page_id=page_id,
                        sent=counts.get("sent", 0),
                        failed=counts.get("failed", 0),
                        cap_used=counts.get("cap_used", 0),
                    )
                    for page_id, counts in sorted(day.pages.items())
                ],
            )
            for day in history
        ],
    )
