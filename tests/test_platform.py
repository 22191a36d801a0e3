"""The console's cross-tenant queries: the tenant directory's search, filters, sorts and counts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, insert

from tenants.accounts import hash_password
from tenants.campaigns import Campaign, CampaignState
from tenants.db import db
from tenants.models import Membership, Role, Tenant, TenantStatus, User
from tenants.platform import NO_PLAN, DirectoryError, tenant_directory
from tenants.scoping import all_tenants, tenant
from tenants.usage import TENANT_SCOPE, DailyUsage, quota_day
from tests.factories import make_contact, make_page, make_plan


def add_tenants(count: int, prefix: str = "Tenant", **columns) -> list[int]:
    """``count`` tenants in one INSERT ("Tenant 00", slug "tenant-00", …, numbered with as many digits
    as the last needs, at least two, so names sort as numbers do); their ids in order."""
    width = max(2, len(str(count - 1)))
    rows = [
        {
            "name": f"{prefix} {n:0{width}d}",
            "slug": f"{prefix.lower()}-{n:0{width}d}",
            "timezone": "UTC",
            **columns,
        }
        for n in range(count)
    ]
    ids = db.session.scalars(insert(Tenant).returning(Tenant.id), rows).all()
    db.session.commit()
    return list(ids)


def add_usage(tenant_id: int, used: int, days_ago: int = 0) -> None:
    """What counted against ``tenant_id``'s quota on its local day ``days_ago`` days back."""
    tenant_row = db.session.get(Tenant, tenant_id)
    day = quota_day(tenant_row) - timedelta(days=days_ago)
    db.session.add(DailyUsage(tenant_id=tenant_id, scope=TENANT_SCOPE, day=day, used=used))
    db.session.commit()


@pytest.fixture
def console(app):
    with app.app_context(), all_tenants(db.session):
        yield


def names(page) -> list[str]:
    return [row.name for row in page.rows]


def test_sorting_by_todays_sends_counts_each_tenants_own_local_day(console):
    quiet, busy, busiest = add_tenants(3)
    kiritimati = add_tenants(1, "Islands", timezone="Pacific/Kiritimati")[0]  # UTC+14: its day is ahead
    add_usage(busy, 300)
    add_usage(busiest, 900)
    add_usage(quiet, 5000, days_ago=1)  # yesterday's sends are not today's
    add_usage(kiritimati, 600)

    page = tenant_directory(sort="today", descending=True)

    assert names(page)[:3] == ["Tenant 02", "Islands 00", "Tenant 01"]
    by_name = {row.name: row for row in page.rows}
    assert (by_name["Islands 00"].sent_today, by_name["Tenant 00"].sent_today) == (600, 0)
    assert names(tenant_directory(sort="today"))[-1] == "Tenant 02"


def test_sorting_by_30_day_sends_leaves_out_older_days(console):
    steady, old_news, new = add_tenants(3)
    for days_ago in (0, 5, 20):
        add_usage(steady, 100, days_ago)
    add_usage(old_news, 10_000, days_ago=45)
    add_usage(new, 250)

    page = tenant_directory(sort="30d", descending=True)

    assert [(row.name, row.sent_30_days) for row in page.rows] == [
        ("Tenant 00", 300),
        ("Tenant 02", 250),
        ("Tenant 01", 0),
    ]


def test_status_and_plan_filters(console):
    plan = make_plan("Pro")
    db.session.commit()
    add_tenants(3)
    add_tenants(2, "Paused", status=TenantStatus.SUSPENDED, suspended_reason="unpaid")
    add_tenants(4, "Pro", plan_id=plan.id)

    assert names(tenant_directory(status="suspended")) == ["Paused 00", "Paused 01"]
    on_pro = tenant_directory(plan_id=plan.id)
    assert on_pro.matching == 4 and all(row.plan_name == "Pro" for row in on_pro.rows)
    assert tenant_directory(plan_id=NO_PLAN).matching == 5
    assert tenant_directory(status=TenantStatus.ACTIVE, plan_id=NO_PLAN).matching == 3
    assert (on_pro.total, on_pro.suspended) == (9, 2)
    with pytest.raises(DirectoryError, match="Unknown status 'gone'"):
        tenant_directory(status="gone")
    with pytest.raises(DirectoryError, match="Unknown sort"):
        tenant_directory(sort="revenue")


def test_search_finds_name_slug_or_a_members_email_and_takes_wildcards_literally(console):
    add_tenants(3)
    odd = add_tenants(1, "100%_Real")[0]
    with tenant(db.session, odd):
        user = User(email="Carol@Bakery.example", password_hash=hash_password("a long password!"))
        db.session.add(Membership(user=user, role=Role.OWNER))
        db.session.commit()

    assert names(tenant_directory("TENANT 01")) == ["Tenant 01"]
    assert names(tenant_directory("tenant-02")) == ["Tenant 02"]
    assert names(tenant_directory("carol@bakery")) == ["100%_Real 00"]
    assert names(tenant_directory("0%_r")) == ["100%_Real 00"]
    assert names(tenant_directory("t_n")) == []  # "_" is not a wildcard
    assert tenant_directory("nobody").rows == []


def test_pages_of_fifty_say_whether_more_follow(console):
    add_tenants(120)

    first, last = tenant_directory(page=1), tenant_directory(page=3)

    assert (len(first.rows), first.has_more, first.matching) == (50, True, 120)
    assert names(first)[:2] == ["Tenant 000", "Tenant 001"]
    assert (len(last.rows), last.has_more, last.first) == (20, False, 101)
    assert names(tenant_directory(page=2, descending=True))[0] == "Tenant 069"
    assert tenant_directory(page=9).rows == []


def test_rows_count_pages_contacts_and_running_campaigns(console):
    busy, _ = add_tenants(2)
    with tenant(db.session, busy):
        tenant_row = db.session.get(Tenant, busy)
        page = make_page(tenant_row, {})
        make_contact(tenant_row, {})
        db.session.flush()
        for state in (CampaignState.RUNNING, CampaignState.RUNNING, CampaignState.COMPLETED):
            db.session.add(Campaign(name=f"{state} one", page_id=page.id, state=state))
        db.session.commit()

    counts = {row.name: (row.pages, row.contacts, row.running_campaigns) for row in tenant_directory().rows}

    assert counts == {"Tenant 00": (1, 1, 2), "Tenant 01": (0, 0, 0)}


def test_the_directory_asks_the_same_few_queries_however_many_tenants_it_shows(console):
    """No query per row: 50 tenants shown cost what 2 cost (10,000 tenants must stay under 200 ms)."""

    def queries_for_a_page() -> int:
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            for sort in ("name", "today", "30d"):
                tenant_directory(sort=sort)
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        return len(statements)

    ids = add_tenants(2, "Few")
    for tenant_id in ids:
        add_usage(tenant_id, 10)
    few = queries_for_a_page()
    for tenant_id in add_tenants(60):
        add_usage(tenant_id, 10)

    assert len(tenant_directory().rows) == 50
    assert queries_for_a_page() == few


def test_sums_over_every_tenant_read_only_the_recent_quota_rows_off_their_index(app):
    """Sorting by 30-day sends must not read every tenant's whole history: the quota rows' partial
    index applies because the query states its predicate in the same words (whatever plan is cached)."""
    from tenants.usage import quota_used_on_local_days, sent_since_sql

    with app.app_context(), all_tenants(db.session):
        ids = add_tenants(200)
        db.session.execute(  # 400 days of use, the tenant's and a page's, for each
            db.text(
                "INSERT INTO daily_usage (tenant_id, scope, day, used)"
                " SELECT t.id, s.scope, current_date - d, d FROM tenants t, generate_series(0, 399) d,"
                " (VALUES ('tenant'), ('page:1')) AS s(scope) WHERE t.id = ANY(:ids)"
            ),
            {"ids": ids},
        )
        db.session.execute(db.text("ANALYZE daily_usage"))
        seen = []

        def capture(conn, cursor, statement, parameters, context, executemany):
            seen.append((statement, parameters))

        event.listen(db.engine, "before_cursor_execute", capture)
        try:
            for subquery in (sent_since_sql(30), quota_used_on_local_days()):
                db.session.execute(db.select(subquery)).all()
        finally:
            event.remove(db.engine, "before_cursor_execute", capture)
        assert len(seen) == 2
        for statement, parameters in seen:
            plan = generic_plan(statement, parameters)
            assert "ix_daily_usage_quota_days" in plan, plan
        db.session.rollback()


def generic_plan(statement: str, parameters: dict) -> str:
    """EXPLAIN of ``statement`` prepared and planned once for any parameters, as psycopg's prepared
    statements end up being planned (a plan that cannot see the parameters' values)."""
    import re

    import psycopg

    positions: dict[str, int] = {}
    prepared = re.sub(
        r"%\((\w+)\)s", lambda m: f"${positions.setdefault(m[1], len(positions) + 1)}", statement
    )
    connection = db.session.connection().connection.driver_connection
    with psycopg.ClientCursor(connection) as cursor:  # EXECUTE's arguments written into its text
        cursor.execute(f"PREPARE probe AS {prepared}")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        arguments = [parameters[name] for name in positions]
        cursor.execute("EXPLAIN EXECUTE probe(" + ", ".join(["%s"] * len(arguments)) + ")", arguments)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE probe")
    return plan
