"""What a tenant has used: today's quota and caps, and the daily activity behind charts and reports.

Two tables, both by day in the tenant's time zone:

* :class:`DailyUsage` — what counts against a daily limit (scope ``tenant``: the quota; scope
  ``page:<id>``: that page's cap). Dispatch reserves it before sending and gives back what was not
  spent; it is the quota's truth.
* :class:`DailyActivity` — events per campaign and day: messages the provider accepted, failures,
  delivery and read receipts, replies. Dispatch, receipts and replies add to it with
  :func:`count_activity` in the same transaction as the change they count, so the 30-day charts
  and the usage page read a few rows per day instead of millions of deliveries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, ForeignKey, Index, Integer, String, func, literal_column, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from tenants.campaigns import next_midnight, quota_day
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.pages import Page, ProviderKind

TENANT_SCOPE = "tenant"
QUOTA_ROWS = "scope = 'tenant'"  # the quota index's predicate, which queries state in the same words


def quota_rows() -> Any:
    """The tenant-quota rows of ``daily_usage`` (not the page caps'), spelled as the index's predicate so
    that PostgreSQL can use it whatever plan it caches."""
    return DailyUsage.scope == literal_column(f"'{TENANT_SCOPE}'")


ACTIVITY_COUNTS = ("sent", "delivered", "read", "failed", "replied")


def page_scope(page_id: int) -> str:
    return f"page:{page_id}"


class DailyUsage(db.Model):
    """Messages counted against a daily limit: the tenant's quota (scope ``tenant``) or a page's cap."""

    __tablename__ = "daily_usage"
    __table_args__ = (
        # the quota rows by day, for the console's sums over every tenant (without it a sort by 30-day
        # sends reads a year of every tenant's rows: docs/decisions.md). ``used`` is not in it, so
        # dispatch's updates of ``used`` stay in place (HOT) as before.
        Index(
            "ix_daily_usage_quota_days",
            "day",
            "tenant_id",
            postgresql_where=text(QUOTA_ROWS),
            sqlite_where=text(QUOTA_ROWS),
        ),
    )

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(40), primary_key=True)  # "tenant" or "page:<id>"
    day: Mapped[date] = mapped_column(Date, primary_key=True)  # in the tenant's timezone
    used: Mapped[int] = mapped_column(default=0)


def add_use(tenant_id: int, day: date, count: int, capped_page_id: int | None = None) -> None:
    """Add ``count`` messages (negative: give them back) to the tenant's quota use on ``day`` and, for
    a page with a daily cap, to that cap's use; never below zero. Dispatch reserves with it and gives
    back what was not spent; the sweeper gives back what a dead worker never sent."""
    if not count:
        return
    usage = DailyUsage.__table__
    scopes = [TENANT_SCOPE] + ([page_scope(capped_page_id)] if capped_page_id is not None else [])
    db.session.execute(
        update(usage)
        .where(usage.c.tenant_id == tenant_id, usage.c.scope.in_(scopes), usage.c.day == day)
        .values(
            used=func.max(usage.c.used + count, 0)
            if db.engine.dialect.name == "sqlite"
            else func.greatest(usage.c.used + count, 0)
        )
    )


class DailyActivity(db.Model):
    """What happened to one campaign's messages on one day (the tenant's), by event."""

    __tablename__ = "daily_activity"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # kept after the campaign goes
    page_id: Mapped[int | None] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(20))  # the page's kind when it was counted
    sent: Mapped[int] = mapped_column(default=0)  # accepted by the provider
    delivered: Mapped[int] = mapped_column(default=0)
    read: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    replied: Mapped[int] = mapped_column(default=0)


# --------------------------------------------------------------------------- counting


def count_activity(rows: Iterable[Mapping[str, Any]]) -> None:
    """Add counts to the day's activity rows (created as needed), in the caller's transaction.

    Each row names ``tenant_id``, ``day``, ``campaign_id``, ``page_id``, ``channel`` and some of
    ``sent``, ``delivered``, ``read``, ``failed``, ``replied``. Rows for one key are summed first.
    """
    merged: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["tenant_id"], row["day"], row["campaign_id"])
        into = merged.setdefault(
            key,
            {
                "tenant_id": key[0],
                "day": key[1],
                "campaign_id": key[2],
                "page_id": row.get("page_id"),
                "channel": str(row.get("channel") or ""),
                **dict.fromkeys(ACTIVITY_COUNTS, 0),
            },
        )
        for name in ACTIVITY_COUNTS:
            into[name] += int(row.get(name) or 0)
    values = [row for row in merged.values() if any(row[name] for name in ACTIVITY_COUNTS)]
    if not values:
        return
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(DailyActivity.__table__)
    table = DailyActivity.__table__
    statement = statement.on_conflict_do_update(
        index_elements=["tenant_id", "day", "campaign_id"],
        set_={name: table.c[name] + statement.excluded[name] for name in ACTIVITY_COUNTS},
    )
    db.session.connection().execute(statement, values)


# --------------------------------------------------------------------------- today


@dataclass(frozen=True)
class PageToday:
    page_id: int
    name: str
    kind: ProviderKind
    sent: int  # accepted by the provider today
    cap: int | None
    cap_used: int  # counted against the cap today

    @property
    def cap_left(self) -> int | None:
        return None if self.cap is None else max(0, self.cap - self.cap_used)


@dataclass(frozen=True)
class Today:
    day: date
    used: int  # counted against the quota today (sent, or being sent)
    quota: int
    resets_at: datetime
    pages: list[PageToday]

    @property
    def left(self) -> int:
        return max(0, self.quota - self.used)

    @property
    def percent(self) -> float:
        return min(100.0, 100.0 * self.used / self.quota) if self.quota else 100.0


def usage_on(tenant: Any, day: date) -> dict[str, int]:
    """Scope to messages counted on ``day``."""
    return dict(
        db.session.execute(
            select(DailyUsage.scope, DailyUsage.used).where(
                DailyUsage.tenant_id == tenant.id, DailyUsage.day == day
            )
        ).all()
    )


def today(tenant: Tenant, now: datetime | None = None) -> Today:
    """Today's quota use and each page's sends and cap (pages of the current tenant)."""
    now = now or utcnow()
    day = quota_day(tenant, now)
    used = usage_on(tenant, day)
    sent_by_page = dict(
        db.session.execute(
            select(DailyActivity.page_id, func.sum(DailyActivity.sent))
            .where(DailyActivity.tenant_id == tenant.id, DailyActivity.day == day)
            .group_by(DailyActivity.page_id)
        ).all()
    )
    pages = [
        PageToday(
            page.id,
            page.name,
            page.kind,
            int(sent_by_page.get(page.id) or 0),
            page.daily_cap,
            used.get(page_scope(page.id), 0),
        )
        for page in db.session.scalars(
            select(Page).where(Page.tenant_id == tenant.id).order_by(Page.name, Page.id)
        )
    ]
    return Today(
        day, used.get(TENANT_SCOPE, 0), tenant.daily_message_quota, next_midnight(tenant, now), pages
    )


@dataclass(frozen=True)
class Room:
    """What today's quota and the page's cap still let through: the one rule for "may it send today"
    (dispatch's pause, a resume, the forecast and the live ETA all read it)."""

    quota: int
    quota_used: int
    cap: int | None  # None: the page has no cap
    cap_used: int

    @property
    def quota_left(self) -> int:
        return max(0, self.quota - self.quota_used)

    @property
    def cap_left(self) -> int | None:
        return None if self.cap is None else max(0, self.cap - self.cap_used)

    @property
    def left(self) -> int:
        return self.quota_left if self.cap_left is None else min(self.quota_left, self.cap_left)

    @property
    def limited_by(self) -> str:
        """What holds messages back first: "quota" or "page cap"."""
        return "page cap" if self.cap_left is not None and self.cap_left < self.quota_left else "quota"

    @property
    def per_day(self) -> int:
        return self.quota if self.cap is None else min(self.quota, self.cap)


def room_today(tenant: Any, page: Any | None, now: datetime | None = None) -> Room:
    """Today's room for ``page``'s sends: ``tenant`` and ``page`` need only their ids and limits (the
    engine passes its own read-once facts)."""
    used = usage_on(tenant, quota_day(tenant, now or utcnow()))
    cap = page.daily_cap if page is not None else None
    cap_used = used.get(page_scope(page.id), 0) if cap is not None else 0
    return Room(tenant.daily_message_quota, used.get(TENANT_SCOPE, 0), cap, cap_used)


@dataclass(frozen=True)
class Forecast:
    """How many of ``recipients`` can go today, and how many days the rest takes at the daily limit."""

    recipients: int
    today: int
    later: int
    days: int  # days after today the rest needs (0 when all go today)
    limited_by: str | None  # "quota" or "page cap": what holds them back

    def warning(self) -> str | None:
        if not self.later:
            return None
        limit = "today's remaining quota" if self.limited_by == "quota" else "the page's daily cap"
        when = "tomorrow" if self.days == 1 else f"over the next {self.days} days"
        return f"Only {self.today:,} can go today ({limit}); about {self.later:,} will go {when}."


def forecast(tenant: Tenant, page: Page | None, recipients: int, now: datetime | None = None) -> Forecast:
    """Split ``recipients`` into what goes today and what waits for later days' quota and cap."""
    room = room_today(tenant, page, now)
    sent_today = min(recipients, room.left)
    later = recipients - sent_today
    days = (-(-later // room.per_day) if room.per_day > 0 else 1) if later else 0
    return Forecast(recipients, sent_today, later, days, room.limited_by if later else None)


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class ActivityDay:
    day: date
    channel: str
    sent: int
    delivered: int
    read: int
    failed: int
    replied: int


def activity_by_day(tenant: Tenant, days: int = 30, now: datetime | None = None) -> list[ActivityDay]:
    """Per day and channel over the last ``days`` days (today included), every day present."""
    last = quota_day(tenant, now or utcnow())
    first = last - timedelta(days=days - 1)
    a = DailyActivity
    rows = db.session.execute(
        select(a.day, a.channel, *(func.sum(getattr(a, name)) for name in ACTIVITY_COUNTS))
        .where(a.tenant_id == tenant.id, a.day >= first, a.day <= last)
        .group_by(a.day, a.channel)
    ).all()
    found = {(row[0], row[1]): row[2:] for row in rows}
    channels = sorted({channel for _, channel in found})
    return [
        ActivityDay(
            first + timedelta(days=n),
            channel,
            *(int(v or 0) for v in found.get((first + timedelta(days=n), channel), (0,) * 5)),
        )
        for n in range(days)
        for channel in channels
    ]


@dataclass(frozen=True)
class UsageDay:
    """One day on the usage page: quota use, and per page what was accepted, failed and its cap use."""

    day: date
    used: int
    quota: int | None  # today's quota for today; past days show no quota (it may have changed)
    pages: dict[int, dict[str, int]]  # page id -> sent, failed, cap_used


def usage_by_day(tenant: Tenant, days: int = 30, now: datetime | None = None) -> list[UsageDay]:
    """Newest first: the last ``days`` days of quota use and per-page activity."""
    last = quota_day(tenant, now or utcnow())
    return usage_between(tenant, last - timedelta(days=days - 1), last, now)


def usage_between(tenant: Tenant, first: date, last: date, now: datetime | None = None) -> list[UsageDay]:
    """Newest first: quota use and per-page activity on every day from ``first`` to ``last`` (the
    tenant's days, both included); only today's carries the quota."""
    today_day = quota_day(tenant, now or utcnow())
    used: dict[date, dict[str, int]] = defaultdict(dict)
    for day, scope, count in db.session.execute(
        select(DailyUsage.day, DailyUsage.scope, DailyUsage.used).where(
            DailyUsage.tenant_id == tenant.id, DailyUsage.day >= first, DailyUsage.day <= last
        )
    ):
        used[day][scope] = count
    pages: dict[date, dict[int, dict[str, int]]] = defaultdict(dict)
    a = DailyActivity
    for day, page_id, sent, failed in db.session.execute(
        select(a.day, a.page_id, func.sum(a.sent), func.sum(a.failed))
        .where(a.tenant_id == tenant.id, a.day >= first, a.day <= last)
        .group_by(a.day, a.page_id)
    ):
        if page_id is not None:
            pages[day][page_id] = {"sent": int(sent or 0), "failed": int(failed or 0)}
    for day, scopes in used.items():
        for scope, count in scopes.items():
            if scope.startswith("page:") and scope[5:].isdigit():
                pages[day].setdefault(int(scope[5:]), {"sent": 0, "failed": 0})["cap_used"] = count
    return [
        UsageDay(
            day,
            used.get(day, {}).get(TENANT_SCOPE, 0),
            tenant.daily_message_quota if day == today_day else None,
            pages.get(day, {}),
        )
        for day in (last - timedelta(days=n) for n in range((last - first).days + 1))
    ]


# --------------------------------------------------------------------------- across tenants (admin)


def quota_used_on_local_days() -> Any:
    """Per tenant, the quota used on its own today (a subquery: tenant_id, day, used). Every zone's today
    is one of three UTC dates, so only those days' rows are read, off the quota index."""
    utc_today = utcnow().date()
    return (
        select(DailyUsage.tenant_id, DailyUsage.day, DailyUsage.used)
        .where(quota_rows(), DailyUsage.day.in_([utc_today + timedelta(days=n) for n in (-1, 0, 1)]))
        .subquery("used_today")
    )


def local_date(timezone_column: Any) -> Any:
    """SQL for today's date in each row's time zone (PostgreSQL); UTC's date on SQLite, which has no
    time zones (the embedded default serves one machine)."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.cast(func.timezone(timezone_column, func.now()), Date)
    return func.date("now")


def sent_since_sql(days: int) -> Any:
    """Per tenant, what counted against its quota over the last ``days`` days (a subquery)."""
    since = utcnow().date() - timedelta(days=days)
    return (
        select(DailyUsage.tenant_id, func.sum(DailyUsage.used).label("used"))
        .where(quota_rows(), DailyUsage.day > since)
        .group_by(DailyUsage.tenant_id)
        .subquery(f"sent_{days}d")
    )


# --------------------------------------------------------------------------- the usage page


@dataclass(frozen=True)
class UsagePage:
    """A page as a column of the usage table (a deleted page keeps its counted days)."""

    page_id: int
    name: str
    channel: str
    deleted: bool = False


def pages_in_usage(tenant: Tenant, days: list[UsageDay]) -> list[UsagePage]:
    """The tenant's pages by name, then deleted pages that still have numbers in ``days``."""
    pages = [
        UsagePage(page_id, name, kind.value)
        for page_id, name, kind in db.session.execute(
            select(Page.id, Page.name, Page.kind)
            .where(Page.tenant_id == tenant.id)
            .order_by(Page.name, Page.id)
        )
    ]
    known = {page.page_id for page in pages}
    gone = sorted({page_id for day in days for page_id in day.pages} - known)
    if gone:
        channels = dict(
            db.session.execute(
                select(DailyActivity.page_id, func.max(DailyActivity.channel))
                .where(DailyActivity.tenant_id == tenant.id, DailyActivity.page_id.in_(gone))
                .group_by(DailyActivity.page_id)
            ).all()
        )
        pages += [
            UsagePage(page_id, f"Deleted page #{page_id}", channels.get(page_id, ""), True)
            for page_id in gone
        ]
    return pages


USAGE_CSV_HEADER = ("day", "page", "channel", "sent", "failed", "cap used", "quota used")


def usage_csv_rows(tenant: Tenant, days: int = 30, now: datetime | None = None) -> list[tuple]:
    """The usage page's numbers as spreadsheet rows, newest day first: one per page with numbers
    that day (the day's quota use repeated on each), or one without a page for a day without any."""
    history = usage_by_day(tenant, days, now)
    pages = pages_in_usage(tenant, history)
    rows: list[tuple] = []
    for day in history:
        shown = [page for page in pages if page.page_id in day.pages]
        for page in shown:
            counts = day.pages[page.page_id]
            rows.append(
                (
                    day.day.isoformat(),
                    page.name,
                    page.channel,
                    counts.get("sent", 0),
                    counts.get("failed", 0),
                    counts.get("cap_used", 0),
                    day.used,
                )
            )
        if not shown:
            rows.append((day.day.isoformat(), "", "", 0, 0, 0, day.used))
    return rows
