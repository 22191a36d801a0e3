"""The usage page: the plan's limits, today's sends, 30 days per page, and the same as a CSV."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

from sqlalchemy import insert, select

from tenants.accounts import hash_password
from tenants.campaigns import quota_day
from tenants.db import db
from tenants.models import Membership, Role, Tenant, User
from tenants.plans import assign_plan, set_overrides
from tenants.scoping import all_tenants, tenant
from tenants.usage import TENANT_SCOPE, DailyActivity, DailyUsage, page_scope
from tests.conftest import PASSWORD, Auth
from tests.factories import make_contact, make_page, make_plan, tenant_named


def shown(html: str, testid: str) -> str:
    found = re.search(rf'data-testid="{re.escape(testid)}"[^>]*>(.*?)</', html, re.S)
    assert found, f"no {testid} on the page"
    return " ".join(re.sub(r"<[^>]+>", " ", found.group(1)).split())


def _seed(app, workspace: str, page_name: str, days: dict[int, tuple[int, int, int, int]]) -> tuple[int, int]:
    """A page and, ``days`` ago: (quota used, page sent, page failed, page cap used)."""
    with app.app_context(), all_tenants(db.session):
        owner = tenant_named(workspace)
        today = quota_day(owner)
    with app.app_context(), tenant(db.session, owner.id):
        page = make_page(owner, {})
        page.name, page.daily_cap = page_name, 5_000
        db.session.flush()
        for ago, (used, sent, failed, cap_used) in days.items():
            day = today - timedelta(days=ago)
            db.session.execute(
                insert(DailyUsage),
                [
                    {"tenant_id": owner.id, "scope": TENANT_SCOPE, "day": day, "used": used},
                    {"tenant_id": owner.id, "scope": page_scope(page.id), "day": day, "used": cap_used},
                ],
            )
            db.session.execute(
                insert(DailyActivity),
                {
                    "tenant_id": owner.id,
                    "day": day,
                    "campaign_id": 100 + ago,
                    "page_id": page.id,
                    "channel": "whatsapp",
                    "sent": sent,
                    "failed": failed,
                },
            )
        db.session.commit()
        return owner.id, page.id


def test_the_usage_page_shows_the_plan_limits_today_and_each_day(app, client, auth, other_client):
    auth.signup()
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    acme, page_id = _seed(
        app, "Acme", "Acme WhatsApp", {0: (1_500, 1_400, 60, 1_460), 2: (800, 790, 10, 800)}
    )
    _seed(app, "Bravo", "Bravo secret line", {0: (6_543, 6_500, 43, 6_543)})
    with app.app_context(), all_tenants(db.session):
        workspace = db.session.get(Tenant, acme)
        plan = make_plan("Growth")
        db.session.flush()
        assign_plan(workspace, plan)
        set_overrides(workspace, {"max_contacts": "1234"})
        db.session.commit()
    with app.app_context(), tenant(db.session, acme):
        make_contact(db.session.get(Tenant, acme), {})
        db.session.commit()
        today = quota_day(db.session.get(Tenant, acme))

    page = client.get("/usage").get_data(as_text=True)
    assert shown(page, "plan-name") == "Growth"
    assert shown(page, "limit-daily_message_quota").startswith("50,000 messages a day")
    assert shown(page, "limit-max_pages").startswith("1 / 20")
    assert shown(page, "limit-max_contacts") == "1 / 1,234 contacts · set for this workspace"
    assert shown(page, "limit-max_send_rate").startswith("200 ")
    assert shown(page, "quota-used") == "1,500" and shown(page, "quota-limit") == "50,000"
    assert shown(page, f"page-cap-{page_id}") == "1,460 / 5,000"

    days = re.findall(r'<tr data-day="([0-9-]+)">', page)
    assert len(days) == 30 and days[0] == today.isoformat() and days == sorted(days, reverse=True)
    two_days_ago = re.search(rf'<tr data-day="{today - timedelta(days=2)}">(.*?)</tr>', page, re.S).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)", two_days_ago) == ["800", "790", "10", "800"]
    yesterday = re.search(rf'<tr data-day="{today - timedelta(days=1)}">(.*?)</tr>', page, re.S).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)", yesterday) == ["0", "0", "0", "0"]
    assert "Bravo secret line" not in page and "6,543" not in page and "6,500" not in page


def test_any_member_sees_usage_and_the_nav_links_what_each_role_may_open(app, client, auth, other_client):
    auth.signup()
    with app.app_context(), all_tenants(db.session):
        user = User(email="member@acme.example", password_hash=hash_password(PASSWORD))
        db.session.add(Membership(tenant_id=tenant_named("Acme").id, user=user, role=Role.MEMBER))
        db.session.commit()
    member = Auth(other_client)
    member.login("member@acme.example")
    page = other_client.get("/usage")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'href="/usage" aria-current="page">Usage</a>' in html
    assert ">Audit</a>" not in html and ">Admin</a>" not in html
    owner_page = client.get("/dashboard").get_data(as_text=True)
    assert ">Usage</a>" in owner_page and ">Audit</a>" in owner_page and ">Admin</a>" not in owner_page
    with app.app_context(), all_tenants(db.session):
        db.session.scalar(select(User).where(User.email == "owner@acme.example")).is_platform_admin = True
        db.session.commit()
    assert re.search(r'href="/admin"[^>]*>Admin</a>', client.get("/usage").get_data(as_text=True))


def test_the_csv_has_each_day_and_page_neutralised_and_uncached(app, client, auth, other_client):
    auth.signup()
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    _seed(app, "Acme", '=HYPERLINK("http://evil.example","x")', {0: (1_500, 1_400, 60, 1_460)})
    _seed(app, "Bravo", "Bravo secret line", {0: (6_543, 6_500, 43, 6_543), 1: (7, 7, 0, 7)})
    with app.app_context(), all_tenants(db.session):
        today = quota_day(tenant_named("Acme"))

    response = client.get("/usage.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == ["day", "page", "channel", "sent", "failed", "cap used", "quota used"]
    assert rows[1] == [
        today.isoformat(),
        '\'=HYPERLINK("http://evil.example","x")',
        "whatsapp",
        "1400",
        "60",
        "1460",
        "1500",
    ]
    assert len(rows) == 31, "one row for each of the 30 days (a day with nothing still has its row)"
    assert rows[2] == [(today - timedelta(days=1)).isoformat(), "", "", "0", "0", "0", "0"]
    body = response.get_data(as_text=True)
    assert "Bravo" not in body and "6500" not in body and "6543" not in body
