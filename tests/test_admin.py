"""The platform admin's console: who may see it, the tenant list, a tenant's limits, plans and suspension."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tenants import audit
from tenants.accounts import hash_password, make_platform_admin
from tenants.campaigns import Campaign, apply_campaign_form, start
from tenants.db import db
from tenants.demo import _demo_list
from tenants.models import Membership, Role, Tenant, TenantStatus, User
from tenants.plans import Plan
from tenants.scoping import all_tenants, tenant
from tests.conftest import Auth, csrf_token
from tests.factories import make_page, make_plan, tenant_named
from tests.test_platform import add_tenants, add_usage

ADMIN_EMAIL, ADMIN_PASSWORD = "root@crier.example", "a long admin password"


class Console:
    """A signed-in platform admin's browser."""

    def __init__(self, client):
        self.client = client

    def get(self, path: str, **kw):
        return self.client.get(path, **kw)

    def post(self, path: str, data: dict | None = None, **kw):
        token = csrf_token(self.client.get("/admin").get_data(as_text=True))
        return self.client.post(path, data={"csrf_token": token, **(data or {})}, **kw)


@pytest.fixture
def console(app) -> Console:
    with app.app_context(), all_tenants(db.session):
        make_platform_admin(ADMIN_EMAIL, ADMIN_PASSWORD)
    browser = app.test_client()
    Auth(browser).login(ADMIN_EMAIL, ADMIN_PASSWORD)
    return Console(browser)


def tenant_id_of(app, name: str) -> int:
    with app.app_context(), all_tenants(db.session):
        return tenant_named(name).id


def tenant_row(app, name: str) -> Tenant:
    with app.app_context(), all_tenants(db.session):
        row = tenant_named(name)
        db.session.expunge(row)
        return row


def rows_of(html: str) -> list[str]:
    """The slugs of the directory's rows, in order."""
    return re.findall(r'data-testid="tenant-row" data-tenant-id="\d+" data-slug="([^"]+)"', html)


def running_campaign(app, tenant_id: int) -> int:
    """A running campaign of five recipients (no worker sends it)."""
    with app.app_context(), tenant(db.session, tenant_id):
        workspace = db.session.get(Tenant, tenant_id)
        page = make_page(workspace, {})
        db.session.flush()
        contacts = _demo_list(5)
        campaign = apply_campaign_form(
            Campaign(),
            {
                "name": "Spring sale",
                "page_id": page.id,
                "list_ids": [contacts.id],
                "body": "Hi {{first_name}}",
            },
            workspace,
        )
        db.session.add(campaign)
        db.session.commit()
        assert start(campaign)
        return campaign.id


def campaign_state(app, tenant_id: int, campaign_id: int) -> tuple[str, str | None]:
    with app.app_context(), tenant(db.session, tenant_id):
        campaign = db.session.get(Campaign, campaign_id)
        return campaign.state.value, campaign.paused_reason and campaign.paused_reason.value


# --------------------------------------------------------------------------- who gets in


CONSOLE_PAGES = ["/admin", "/admin/plans", "/admin/audit", "/admin/tenants/{tenant}", "/admin/plans/{plan}"]
CONSOLE_ACTIONS = [
    ("/admin/tenants/{tenant}/limits", {"daily_message_quota": "1"}),
    ("/admin/tenants/{tenant}/plan", {"plan_id": "{plan}"}),
    ("/admin/tenants/{tenant}/suspend", {"reason": "let me in"}),
    ("/admin/tenants/{tenant}/reactivate", {}),
    ("/admin/plans", {"name": "Sneaky", "daily_message_quota": "1"}),
    ("/admin/plans/{plan}", {"name": "Sneaky"}),
]


def test_the_console_is_404_for_anyone_but_a_platform_admin(app, client, auth, other_client):
    auth.signup()  # the owner of Acme
    acme = tenant_id_of(app, "Acme")
    with app.app_context(), tenant(db.session, acme):
        user = User(email="member@acme.example", password_hash=hash_password("a member password"))
        db.session.add(Membership(user=user, role=Role.MEMBER))
        plan = make_plan("Pro")
        db.session.commit()
        plan_id = plan.id
    member = app.test_client()
    Auth(member).login("member@acme.example", "a member password")
    anonymous = other_client
    ids = {"tenant": acme, "plan": plan_id}

    for who, browser, token_page in [
        ("anonymous", anonymous, "/login"),
        ("owner", client, "/dashboard"),
        ("member", member, "/dashboard"),
    ]:
        for path in CONSOLE_PAGES:
            assert browser.get(path.format(**ids)).status_code == 404, f"{who} GET {path}"
        token = csrf_token(browser.get(token_page).get_data(as_text=True))
        for path, data in CONSOLE_ACTIONS:
            form = {key: value.format(**ids) for key, value in data.items()}
            answer = browser.post(path.format(**ids), data={"csrf_token": token, **form})
            assert answer.status_code == 404, f"{who} POST {path}"

    with app.app_context(), all_tenants(db.session):
        acme_row = db.session.get(Tenant, acme)
        assert acme_row.is_active and acme_row.daily_message_quota != 1 and acme_row.plan_id != plan_id
        assert db.session.scalar(select(Plan.id).where(Plan.name == "Sneaky")) is None
        assert db.session.scalar(select(Plan.name).where(Plan.id == plan_id)) == "Pro"


def test_a_platform_admin_without_a_workspace_who_opens_the_dashboard_lands_on_the_console(console):
    answer = console.get("/dashboard")
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin")
    page = console.get("/admin", follow_redirects=True).get_data(as_text=True)
    assert "<h1>Tenants</h1>" in page


# --------------------------------------------------------------------------- the tenant list


def test_the_list_shows_every_tenant_with_totals_plan_and_todays_sends(app, console, auth, other_client):
    auth.signup(workspace="Acme")
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    with app.app_context(), all_tenants(db.session):
        add_usage(tenant_named("Acme").id, 1234)
        bravo = tenant_named("Bravo")
        bravo.status, bravo.suspended_reason = TenantStatus.SUSPENDED, "unpaid"
        db.session.commit()

    page = console.get("/admin").get_data(as_text=True)

    assert rows_of(page) == ["acme", "bravo"]
    assert re.search(r"<strong>2</strong> workspaces · <strong>1</strong> suspended", page)
    acme_row = page.split('data-slug="acme"')[1].split("</tr>")[0]
    assert re.search(r'data-testid="tenant-quota"[^>]*>1,234 / [\d,]+<', acme_row)
    assert ">suspended<" in page.split('data-slug="bravo"')[1].split("</tr>")[0]


def test_search_filter_sort_and_paging(app, console):
    with app.app_context(), all_tenants(db.session):
        pro = make_plan("Pro")
        db.session.commit()
        ids = add_tenants(60)
        add_tenants(3, "Paused", status=TenantStatus.SUSPENDED)
        add_tenants(2, "Pro", plan_id=pro.id)
        add_usage(ids[17], 900)
        add_usage(ids[42], 400)
        pro_id = pro.id

    first = console.get("/admin").get_data(as_text=True)
    assert len(rows_of(first)) == 50 and rows_of(first)[:2] == ["paused-00", "paused-01"]
    assert 'data-testid="tenant-next"' in first and "65 matches" in first
    second = console.get("/admin?page=2").get_data(as_text=True)
    assert rows_of(second)[-1] == "tenant-59" and len(rows_of(second)) == 15
    assert 'data-testid="tenant-next"' not in second

    assert rows_of(console.get("/admin?q=TENANT-05").get_data(as_text=True)) == ["tenant-05"]
    assert rows_of(console.get("/admin?status=suspended").get_data(as_text=True)) == [
        "paused-00",
        "paused-01",
        "paused-02",
    ]
    assert rows_of(console.get(f"/admin?plan={pro_id}").get_data(as_text=True)) == ["pro-00", "pro-01"]
    busiest = rows_of(console.get("/admin?sort=today&dir=desc").get_data(as_text=True))
    assert busiest[:2] == ["tenant-17", "tenant-42"]
    assert rows_of(console.get("/admin?sort=name&dir=desc").get_data(as_text=True))[0] == "tenant-59"

    fragment = console.get("/admin?q=tenant-1", headers={"HX-Request": "true"})
    assert "<html" not in fragment.get_data(as_text=True) and "HX-Request" in fragment.headers["Vary"]
    assert len(rows_of(fragment.get_data(as_text=True))) == 10


@pytest.mark.parametrize(
    ("query", "message"),
    [("sort=revenue", "Unknown sort"), ("status=gone", "Unknown status"), ("page=x", "page number")],
)
def test_a_nonsense_list_request_is_400_with_the_reason(console, query, message):
    answer = console.get(f"/admin?{query}")
    assert answer.status_code == 400 and message in answer.get_data(as_text=True)


# --------------------------------------------------------------------------- a tenant's limits


def test_changing_the_quota_changes_the_limit_and_is_audited(app, console, auth):
    auth.signup()
    acme = tenant_id_of(app, "Acme")
    before = tenant_row(app, "Acme").daily_message_quota

    answer = console.post(f"/admin/tenants/{acme}/limits", {"daily_message_quota": "50,000"})

    assert answer.status_code == 302
    page = console.get(f"/admin/tenants/{acme}").get_data(as_text=True)
    assert "Limits of Acme saved: daily message quota" in page
    assert tenant_row(app, "Acme").daily_message_quota == 50_000
    quota_row = page.split('data-limit="daily_message_quota"')[1].split("</tr>")[0]
    assert "<strong>50,000</strong>" in quota_row and 'data-testid="limit-override">50,000<' in quota_row
    with app.app_context(), all_tenants(db.session):
        (entry,) = audit.entries(acme, action="tenant.limits_changed")
        assert entry.actor == ADMIN_EMAIL and entry.ip
        assert (entry.before, entry.after) == (
            {"daily_message_quota": before},
            {"daily_message_quota": 50_000},
        )
    assert f"daily message quota: {before:,} → 50,000" in page

    htmx = console.post(
        f"/admin/tenants/{acme}/limits",
        {"daily_message_quota": "50000", "max_pages": "3"},
        headers={"HX-Request": "true"},
    )
    fragment = htmx.get_data(as_text=True)
    assert htmx.status_code == 200 and "<html" not in fragment and 'id="tenant"' in fragment
    assert tenant_row(app, "Acme").max_pages == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [("lots", "is not a whole number"), ("-5", "Daily message quota must be between 0 and 100,000,000")],
)
def test_a_bad_number_is_400_with_the_message_and_changes_nothing(app, console, auth, value, message):
    auth.signup()
    acme = tenant_id_of(app, "Acme")
    before = tenant_row(app, "Acme").daily_message_quota

    answer = console.post(f"/admin/tenants/{acme}/limits", {"daily_message_quota": value, "max_pages": "2"})

    page = answer.get_data(as_text=True)
    assert answer.status_code == 400 and message in page and 'data-testid="console-error"' in page
    assert f'value="{value}"' in page  # what was typed stays, to be corrected
    assert tenant_row(app, "Acme").daily_message_quota == before
    assert tenant_row(app, "Acme").max_pages != 2


def test_assigning_a_plan_applies_its_limits_and_an_unknown_plan_is_400(app, console, auth):
    auth.signup()
    acme = tenant_id_of(app, "Acme")
    with app.app_context(), all_tenants(db.session):
        pro = make_plan("Pro")
        db.session.commit()
        pro_id = pro.id

    assert console.post(f"/admin/tenants/{acme}/plan", {"plan_id": str(pro_id)}).status_code == 302

    assert (tenant_row(app, "Acme").plan_id, tenant_row(app, "Acme").daily_message_quota) == (pro_id, 50_000)
    assert "Acme is on Pro now" in console.get(f"/admin/tenants/{acme}").get_data(as_text=True)
    refused = console.post(f"/admin/tenants/{acme}/plan", {"plan_id": "99999"})
    assert refused.status_code == 400 and "Choose one of the plans." in refused.get_data(as_text=True)


# --------------------------------------------------------------------------- plans


def test_editing_a_plan_changes_its_tenants_except_overridden_limits(app, console, auth, other_client):
    auth.signup(workspace="Acme")
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    limits = {
        "daily_message_quota": "20000",
        "max_send_rate": "50",
        "max_pages": "5",
        "max_recipients_per_campaign": "20000",
        "max_contacts": "40000",
    }
    assert console.post("/admin/plans", {"name": "Growth", **limits}).status_code == 302
    with app.app_context(), all_tenants(db.session):
        growth = db.session.scalar(select(Plan.id).where(Plan.name == "Growth"))
    acme, bravo = tenant_id_of(app, "Acme"), tenant_id_of(app, "Bravo")
    for tenant_id in (acme, bravo):
        console.post(f"/admin/tenants/{tenant_id}/plan", {"plan_id": str(growth)})
    console.post(f"/admin/tenants/{bravo}/limits", {"daily_message_quota": "7000"})

    answer = console.post(
        f"/admin/plans/{growth}",
        {"name": "Growth", **limits, "daily_message_quota": "80000", "max_send_rate": "300"},
    )

    assert answer.status_code == 302
    assert "Plan Growth saved; limits changed for 2 workspaces." in console.get(
        answer.headers["Location"]
    ).get_data(as_text=True)
    acme_row, bravo_row = tenant_row(app, "Acme"), tenant_row(app, "Bravo")
    assert (acme_row.daily_message_quota, acme_row.max_send_rate) == (80_000, 300)
    assert (bravo_row.daily_message_quota, bravo_row.max_send_rate) == (7_000, 300)  # its override stays
    plans_page = console.get("/admin/plans").get_data(as_text=True)
    growth_row = plans_page.split(f'data-plan-id="{growth}"')[1].split("</tr>")[0]
    assert "80,000" in growth_row and re.search(r'data-testid="plan-tenants"><a [^>]*>2<', growth_row)
    with app.app_context(), all_tenants(db.session):
        (changed,) = audit.entries(action="plan.changed")
        assert (
            changed.before["daily_message_quota"] == 20_000 and changed.after["daily_message_quota"] == 80_000
        )


def test_a_plan_with_a_missing_limit_or_a_taken_name_is_400(app, console):
    with app.app_context(), all_tenants(db.session):
        make_plan("Pro")
        db.session.commit()

    missing = console.post("/admin/plans", {"name": "Tiny", "daily_message_quota": "100"})
    assert missing.status_code == 400 and "Missing: Send rate, Pages" in missing.get_data(as_text=True)
    limits = dict.fromkeys(
        ("daily_message_quota", "max_send_rate", "max_pages", "max_recipients_per_campaign", "max_contacts"),
        "5",
    )
    taken = console.post("/admin/plans", {"name": "Pro", **limits})
    assert taken.status_code == 400 and "There is already a plan called Pro." in taken.get_data(as_text=True)
    with app.app_context(), all_tenants(db.session):
        names = db.session.scalars(select(Plan.name)).all()
        assert "Tiny" not in names and names.count("Pro") == 1


# --------------------------------------------------------------------------- suspension


def test_suspending_pauses_the_running_campaign_and_members_see_why_then_reactivating_resumes_it(
    app, console, auth, client
):
    auth.signup()
    acme = tenant_id_of(app, "Acme")
    campaign_id = running_campaign(app, acme)

    refused = console.post(f"/admin/tenants/{acme}/suspend", {"reason": "  "})
    assert refused.status_code == 400 and "Say why the workspace is suspended" in refused.get_data(
        as_text=True
    )
    answer = console.post(f"/admin/tenants/{acme}/suspend", {"reason": "Unpaid invoice #42"})

    assert answer.status_code == 302
    assert campaign_state(app, acme, campaign_id) == ("paused", "suspended")
    page = console.get(f"/admin/tenants/{acme}").get_data(as_text=True)
    assert "Acme is suspended; 1 running campaign paused." in page and "Unpaid invoice #42" in page
    assert "Reactivate workspace" in page and "Suspend workspace" not in page
    sent_away = client.get("/dashboard")
    assert sent_away.headers["Location"].endswith("/workspaces/suspended")
    notice = client.get("/workspaces/suspended").get_data(as_text=True)
    assert 'data-testid="suspension-reason">Unpaid invoice #42<' in notice

    assert console.post(f"/admin/tenants/{acme}/reactivate").status_code == 302

    assert campaign_state(app, acme, campaign_id) == ("running", None)
    assert client.get("/dashboard").status_code == 200
    with app.app_context(), all_tenants(db.session):
        actions = [entry.action for entry in audit.entries(acme)]
        assert actions[:2] == ["tenant.reactivated", "tenant.suspended"]


# --------------------------------------------------------------------------- the platform audit log


def test_the_platform_audit_log_filters_by_action_and_tenant_and_pages_back(app, console, auth, other_client):
    auth.signup(workspace="Acme")
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    acme, bravo = tenant_id_of(app, "Acme"), tenant_id_of(app, "Bravo")
    with app.app_context(), all_tenants(db.session), audit.acting_as(audit.Actor(None, "cli")):
        for n in range(55):
            audit.record(
                "tenant.limits_changed",
                tenant_id=acme,
                target="workspace Acme",
                before={"max_pages": n},
                after={"max_pages": n + 1},
            )
        audit.record("tenant.suspended", tenant_id=bravo, target="workspace Bravo", after={"reason": "spam"})
        db.session.commit()

    newest = console.get("/admin/audit").get_data(as_text=True)
    assert newest.count('data-testid="audit-entry"') == 50
    table = newest.split('data-testid="audit-log"')[1]
    assert table.index("suspended the workspace") < table.index("changed limits")
    assert "max pages: 54 → 55" in newest and ">Bravo</a>" in newest and "UTC" in newest
    older_url = re.search(r'href="([^"]+)" data-testid="audit-older"', newest).group(1).replace("&amp;", "&")
    older = console.get(older_url).get_data(as_text=True)
    assert older.count('data-testid="audit-entry"') == 6 and "max pages: 0 → 1" in older
    assert 'data-testid="audit-older"' not in older

    suspended = console.get("/admin/audit?action=tenant.suspended").get_data(as_text=True)
    assert suspended.count('data-testid="audit-entry"') == 1 and "reason: — → spam" in suspended
    by_slug = console.get("/admin/audit?tenant=bravo").get_data(as_text=True)
    assert by_slug.count('data-testid="audit-entry"') == 1
    unknown = console.get("/admin/audit?tenant=nobody")
    assert unknown.status_code == 400 and "no workspace with the slug" in unknown.get_data(as_text=True)
    assert console.get("/admin/audit?action=drop.tables").status_code == 400
