"""The dashboard from real data: today's sends against the tenant's own quota and page caps, the
campaigns in motion, 30 days of activity per channel, recent failures and the first steps."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from tenants.accounts import sign_up
from tenants.campaigns import Campaign, CampaignState, Delivery, DeliveryState, quota_day
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.pages import Page
from tenants.scoping import all_tenants, tenant
from tenants.usage import TENANT_SCOPE, DailyActivity, DailyUsage, page_scope
from tests.conftest import PASSWORD, Auth
from tests.engine import EngineRun
from tests.factories import make_contact, make_page, make_template, tenant_named

HTMX = {"HX-Request": "true"}


def shown(html: str, testid: str) -> str:
    """The text of the element carrying ``data-testid=testid`` (elements holding plain text)."""
    found = re.search(rf'data-testid="{re.escape(testid)}"[^>]*>([^<]*)<', html)
    assert found, f"no {testid} on the page"
    return found.group(1).strip()


def chart_of(html: str, figure_id: str) -> tuple[dict[str, str], dict]:
    """A chart figure's data-total-* attributes and its JSON island."""
    figure = re.search(rf'<figure class="chart" id="{figure_id}"(.*?)>(.*?)</figure>', html, re.S)
    assert figure, f"no chart {figure_id}"
    totals = dict(re.findall(r'data-total-([a-z-]+)="(\d+)"', figure.group(1)))
    island = re.search(
        r'<script type="application/json" class="chart-data">(.*?)</script>', figure.group(2), re.S
    )
    return totals, json.loads(island.group(1))


def _tenant_id(app, name: str) -> int:
    with app.app_context(), all_tenants(db.session):
        return tenant_named(name).id


def _record_today(app, tenant_id: int, used: int, pages: dict[int, int] | None = None) -> None:
    """What dispatch writes: the quota's use today, and each page's cap use."""
    with app.app_context(), all_tenants(db.session):
        day = quota_day(db.session.get(Tenant, tenant_id))
        rows = [{"tenant_id": tenant_id, "scope": TENANT_SCOPE, "day": day, "used": used}]
        rows += [
            {"tenant_id": tenant_id, "scope": page_scope(page_id), "day": day, "used": n}
            for page_id, n in (pages or {}).items()
        ]
        db.session.execute(insert(DailyUsage), rows)
        db.session.commit()


def _add_page(app, tenant_id: int, name: str, daily_cap: int | None = None) -> int:
    with app.app_context(), tenant(db.session, tenant_id):
        page = make_page(db.session.get(Tenant, tenant_id), {})
        page.name, page.daily_cap = name, daily_cap
        db.session.commit()
        return page.id


def test_todays_count_and_quota_are_the_tenants_own(app, client, other_client):
    Auth(client).signup(email="a@acme.example", workspace="Acme")
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    acme, bravo = _tenant_id(app, "Acme"), _tenant_id(app, "Bravo")
    with app.app_context(), all_tenants(db.session):
        db.session.get(Tenant, acme).daily_message_quota = 25_000
        db.session.commit()
    capped = _add_page(app, acme, "Acme WhatsApp", daily_cap=2_000)
    uncapped = _add_page(app, acme, "Acme second line")
    hidden = _add_page(app, bravo, "Bravo secret line", daily_cap=900)
    _record_today(app, acme, 5_000, {capped: 1_200})
    _record_today(app, bravo, 4_321, {hidden: 321})

    page = client.get("/dashboard").get_data(as_text=True)
    assert shown(page, "quota-used") == "5,000"
    assert shown(page, "quota-limit") == "25,000"
    assert shown(page, "quota-left") == "20,000"
    assert "0 / 10,000" not in page
    assert shown(page, f"page-cap-{capped}") == "1,200 / 2,000"
    assert shown(page, f"page-cap-{uncapped}") == "no cap"
    assert "resets at midnight (UTC)" in page
    assert "4,321" not in page and "Bravo secret line" not in page and f"page-cap-{hidden}" not in page

    theirs = other_client.get("/dashboard").get_data(as_text=True)
    assert shown(theirs, "quota-used") == "4,321"
    assert shown(theirs, "quota-limit") == "10,000"
    assert "Acme WhatsApp" not in theirs


def test_the_today_panel_comes_alone_for_htmx_and_varies_on_it(app, client, auth):
    auth.signup()
    _record_today(app, _tenant_id(app, "Acme"), 42)

    panel = client.get("/dashboard?block=today", headers=HTMX)
    body = panel.get_data(as_text=True)
    assert panel.status_code == 200 and "HX-Request" in panel.headers["Vary"]
    assert body.lstrip().startswith('<section id="today"') and "<html" not in body
    assert shown(body, "quota-used") == "42"
    full = client.get("/dashboard?block=today")
    assert "<html" in full.get_data(as_text=True) and "HX-Request" in full.headers["Vary"]


def test_first_steps_show_until_all_four_are_done(app, client, auth):
    auth.signup()
    acme = _tenant_id(app, "Acme")
    page = client.get("/dashboard").get_data(as_text=True)
    assert 'data-testid="first-steps"' in page
    assert page.count('data-done="no"') == 4
    assert "No campaigns yet." in page

    with app.app_context(), tenant(db.session, acme):
        workspace = db.session.get(Tenant, acme)
        made = {Page: make_page(workspace, {})}
        db.session.flush()
        make_contact(workspace, made)
        db.session.commit()
    page = client.get("/dashboard").get_data(as_text=True)
    assert page.count('data-done="yes"') == 2 and page.count('data-done="no"') == 2

    with app.app_context(), tenant(db.session, acme):
        workspace = db.session.get(Tenant, acme)
        make_template(workspace, {})
        page_id = db.session.scalar(select(Page.id))
        db.session.add(Campaign(name="Draft only", page_id=page_id, state=CampaignState.DRAFT))
        db.session.commit()
    page = client.get("/dashboard").get_data(as_text=True)
    assert page.count('data-done="yes"') == 3, "a draft is not a campaign sent"
    assert "No campaign is running, scheduled or finished yet." in page

    with app.app_context(), tenant(db.session, acme):
        campaign = db.session.scalar(select(Campaign))
        campaign.state, campaign.started_at, campaign.finished_at = (
            CampaignState.COMPLETED,
            utcnow(),
            utcnow(),
        )
        db.session.commit()
    page = client.get("/dashboard").get_data(as_text=True)
    assert 'data-testid="first-steps"' not in page
    assert 'data-campaign-row="' in page and "Draft only" in page


def test_the_chart_of_each_channel_holds_its_activity_rows(app, client, auth):
    auth.signup()
    acme = _tenant_id(app, "Acme")
    other = sign_up_other(app)
    with app.app_context(), all_tenants(db.session):
        today = quota_day(db.session.get(Tenant, acme))
        columns = ("tenant_id", "day", "campaign_id", "channel", "sent", "delivered", "read", "failed")
        rows = [
            (acme, today, 1, "whatsapp", 120, 100, 60, 5),
            (acme, today, 2, "whatsapp", 30, 20, 10, 1),
            (acme, today - timedelta(days=3), 1, "whatsapp", 50, 45, 40, 2),
            (acme, today - timedelta(days=1), 3, "smtp", 7, 0, 0, 1),
            (acme, today - timedelta(days=45), 4, "whatsapp", 999, 0, 0, 0),  # outside the 30 days
            (other, today, 9, "whatsapp", 5_555, 0, 0, 0),
        ]
        db.session.execute(
            insert(DailyActivity),
            [dict(zip(columns, row, strict=True)) for row in rows],
        )
        db.session.commit()

    page = client.get("/dashboard").get_data(as_text=True)
    totals, data = chart_of(page, "activity-whatsapp")
    assert totals == {"sent": "200", "delivered": "165", "read": "110", "failed": "8"}
    assert data["kind"] == "days" and len(data["x"]) == 30 and data["x"][-1] == today.isoformat()
    sent = next(s["values"] for s in data["series"] if s["label"] == "sent")
    assert sent[-1] == 150 and sent[-4] == 50 and sum(sent) == 200
    table = re.search(r'id="activity-whatsapp".*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    assert re.search(
        rf"<td>{today.isoformat()}</td>\s*<td>150</td>\s*<td>120</td>\s*<td>70</td>\s*<td>6</td>", table
    )
    assert chart_of(page, "activity-smtp")[0]["sent"] == "7"
    assert "5,555" not in page

    panel = client.get("/dashboard?block=activity", headers=HTMX).get_data(as_text=True)
    assert (
        panel.lstrip().startswith('<section id="activity"')
        and chart_of(panel, "activity-whatsapp")[0] == totals
    )


def sign_up_other(app) -> int:
    with app.app_context():
        _, workspace = sign_up("b@bravo.example", PASSWORD, "Bravo")
        db.session.commit()
        return workspace.id


@pytest.fixture
def engine(sandbox):
    run = EngineRun(sandbox)
    yield run
    run.close()


def test_a_campaign_sent_by_the_worker_shows_its_sends_failures_and_progress(engine):
    """36 of 40 recipients accept, 4 fail permanently: the dashboard counts them where they belong."""
    engine.configure(permanent_suffixes=["31"])  # demo phones +447<n:08d>1: every n ending in 3
    tenant_id, page_id, list_id = engine.setup(40)
    campaign_id = engine.campaign(tenant_id, page_id, list_id, name="Spring news")
    engine.worker()
    engine.start(tenant_id, campaign_id)
    engine.wait(tenant_id, campaign_id)

    with all_tenants(db.session):
        bravo = sign_up("b@bravo.example", PASSWORD, "Bravo")[1]
        db.session.flush()
        with tenant(db.session, bravo.id):
            made = {Page: make_page(bravo, {})}
            db.session.flush()
            theirs = Campaign(
                name="Bravo launch", page_id=made[Page].id, state=CampaignState.COMPLETED, started_at=utcnow()
            )
            db.session.add(theirs)
            db.session.flush()
            db.session.add(
                Delivery(
                    campaign_id=theirs.id,
                    address="+15550009999",
                    state=DeliveryState.FAILED,
                    error_code="bravo-code",
                    error_text="not for Acme's eyes",
                )
            )
            db.session.commit()

    client = engine.app.test_client()
    Auth(client).login("owner@engine.example")
    page = client.get("/dashboard").get_data(as_text=True)

    assert shown(page, "quota-used") == "36"
    assert shown(page, f"page-cap-{page_id}") == "no cap"
    totals, _ = chart_of(page, "activity-whatsapp")
    assert totals["sent"] == "36" and totals["failed"] == "4"
    with tenant(db.session, tenant_id):
        counted = db.session.execute(select(DailyActivity.sent, DailyActivity.failed)).all()
    assert [tuple(row) for row in counted] == [(36, 4)]

    failures = re.search(r'data-testid="recent-failures">(.*?)</table>', page, re.S).group(1)
    failed_addresses = {f"+447{n:08d}1" for n in range(40) if n % 10 == 3}
    assert set(re.findall(r"\+447\d{8}1", failures)) == failed_addresses
    assert failures.count("<code>131026</code>") == 4 and "Spring news" in failures
    assert "+15550009999" not in page and "not for Acme" not in page and "Bravo launch" not in page

    row = re.search(rf'<tr data-campaign-row="{campaign_id}">(.*?)</tr>', page, re.S).group(1)
    assert ">completed<" in row and "100.0%" in row and 'value="40" max="40"' in row
