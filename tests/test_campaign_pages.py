"""Campaign pages as a person uses them: write, count, start, act in each state, watch, test-send."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape

import httpx
import psycopg
import pytest
import socketio as socketio_client
from flask_socketio import SocketIO
from sqlalchemy import func, insert, select, update

from tasks.progress import campaign_room, socketio_channel
from tenants.accounts import hash_password
from tenants.campaigns import Campaign, CampaignState, Delivery, PauseReason, quota_day
from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db, utcnow
from tenants.events import InboundMessage
from tenants.models import Membership, Role, Tenant, User
from tenants.pages import Page, PageState
from tenants.scoping import all_tenants, tenant
from tenants.usage import TENANT_SCOPE, DailyUsage, page_scope
from tests.conftest import PASSWORD, REDIS_URL, Auth, csrf_token, invite_and_join
from tests.factories import sandbox_whatsapp_page, tenant_named
from tests.isolation import object_rules, objects_of

HTMX = {"HX-Request": "true"}
MESSAGE = "Hi {{firstName}}, news from {{company}}"


@dataclass
class Seeded:
    tenant_id: int
    page_id: int
    list_id: int


def _seed(app, workspace: str = "Acme") -> Seeded:
    """A sandbox WhatsApp page and a list "Customers" of 10 contacts, 6 of whom can receive MESSAGE:
    2 opted out, 1 has no phone, 1 has no company. Plus 3 contacts on no list."""
    tenant_id, page_id = sandbox_whatsapp_page(app, workspace)
    with app.app_context(), tenant(db.session, tenant_id):
        customers = ContactList(name="Customers")
        db.session.add(customers)
        people = [Contact(phone=f"+4915112{n:04d}5", first_name=f"P{n}", company="Acme") for n in range(6)]
        people += [
            Contact(phone=f"+4915113{n:04d}5", first_name=f"Out{n}", company="Acme", opted_out=True)
            for n in range(2)
        ]
        people.append(Contact(email="nophone@crier.example", first_name="Mail", company="Acme"))
        people.append(Contact(phone="+491511400015", first_name="Nocompany"))
        others = [Contact(phone=f"+4915115{n:04d}5", first_name=f"O{n}", company="Acme") for n in range(3)]
        db.session.add_all(people + others)
        db.session.flush()
        db.session.add_all(ContactListMember(list_id=customers.id, contact_id=p.id) for p in people)
        db.session.commit()
        return Seeded(tenant_id, page_id, customers.id)


def _form(seeded: Seeded, **changes) -> dict:
    return {
        "name": "Spring sale",
        "page_id": str(seeded.page_id),
        "template_id": "",
        "body": MESSAGE,
        "list_ids": str(seeded.list_id),
        "schedule": "manual",
        "scheduled_at": "",
        "send_rate": "",
        **changes,
    }


def _campaign(app, seeded: Seeded, campaign_id: int | None = None) -> Campaign:
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        query = select(Campaign).order_by(Campaign.id.desc())
        if campaign_id is not None:
            query = query.where(Campaign.id == campaign_id)
        campaign = db.session.scalar(query)
        db.session.expunge_all()
        return campaign


def _deliveries(app, seeded: Seeded, campaign_id: int) -> dict[str, int]:
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        rows = db.session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.campaign_id == campaign_id)
            .group_by(Delivery.state)
        ).all()
        return {state.value: count for state, count in rows}


def _create(auth: Auth, seeded: Seeded, **changes) -> int:
    response = auth.post("/campaigns/new", _form(seeded, **changes))
    assert response.status_code == 302, response.get_data(as_text=True)
    return int(re.search(r"/campaigns/(\d+)$", response.headers["Location"]).group(1))


def _text(response) -> str:
    return response.get_data(as_text=True)


def _testid(html: str, testid: str) -> str | None:
    """The text of the element with this data-testid (tags stripped, spaces collapsed)."""
    found = re.search(rf'<(\w+)[^>]*data-testid="{testid}"[^>]*>(.*?)</\1>', html, re.S)
    return unescape(" ".join(re.sub(r"<[^>]+>", "", found.group(2)).split())) if found else None


def _pause_banner(html: str) -> str | None:
    return _testid(html, "pause-reason")


def _metric(html: str, name: str) -> str:
    return re.search(rf'data-metric="{name}"[^>]*>([^<]*)<', html).group(1)


def _set_campaign(app, seeded: Seeded, campaign_id: int, **values) -> None:
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        db.session.execute(update(Campaign).where(Campaign.id == campaign_id).values(**values))
        db.session.commit()


def _set_deliveries(app, seeded: Seeded, campaign_id: int, **values) -> None:
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        table = Delivery.__table__
        db.session.execute(update(table).where(table.c.campaign_id == campaign_id).values(**values))
        db.session.commit()


def _use_quota(app, seeded: Seeded, used: int, scope: str = TENANT_SCOPE) -> None:
    """Count ``used`` messages against today's quota (or a page's cap) as dispatch would have."""
    with app.app_context(), all_tenants(db.session):
        tenant_row = db.session.get(Tenant, seeded.tenant_id)
        db.session.add(DailyUsage(tenant_id=tenant_row.id, scope=scope, day=quota_day(tenant_row), used=used))
        db.session.commit()


# --------------------------------------------------------------------------- writing


def test_create_a_draft_see_it_listed_and_edit_it(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    editor = _text(client.get("/campaigns/new"))
    assert "Support line (WhatsApp Cloud API)" in editor and "Customers" in editor
    assert "Send at (UTC time)" in editor

    campaign_id = _create(auth, seeded)
    shown = _text(client.get(f"/campaigns/{campaign_id}", follow_redirects=True))
    assert "Campaign Spring sale saved as a draft." in shown
    assert "<strong>6</strong> will receive it" in shown
    campaign = _campaign(app, seeded, campaign_id)
    assert (campaign.state, campaign.audience, campaign.body) == (
        CampaignState.DRAFT,
        {"all": False, "lists": [seeded.list_id], "segments": []},
        MESSAGE,
    )

    editor = _text(client.get(f"/campaigns/{campaign_id}/edit"))
    assert 'value="Spring sale"' in editor and "news from {{company}}" in editor
    edited = auth.post(f"/campaigns/{campaign_id}/edit", _form(seeded, name="Summer sale", send_rate="25"))
    assert edited.status_code == 302
    campaign = _campaign(app, seeded, campaign_id)
    assert (campaign.name, campaign.send_rate) == ("Summer sale", 25.0)

    listed = _text(client.get("/campaigns"))
    assert "Summer sale" in listed and "Support line" in listed and "draft" in listed


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "  "}, "Give the campaign a name."),
        ({"page_id": ""}, "Choose the page to send through."),
        ({"body": ""}, "Choose a template or write the message."),
        ({"list_ids": ""}, "Choose who receives it: all contacts, lists or segments."),
        ({"send_rate": "fast"}, "The rate must be a number of messages per second."),
        ({"send_rate": "-3"}, "The rate must be above 0 messages per second."),
        ({"schedule": "at", "scheduled_at": "next tuesday"}, "Give the date and time to send"),
        ({"schedule": "at", "scheduled_at": "2001-01-01T09:00"}, "That time has passed"),
        ({"schedule": "whenever"}, "Choose when to send: now, at a time, or manually."),
        ({"list_ids": "999999"}, "One of the lists does not exist."),
        ({"list_ids": "99999999999"}, "One of the lists does not exist."),
        ({"page_id": "99999999999"}, "Choose the page to send through."),
        ({"template_id": "99999999999"}, "That template does not exist."),
        ({"segment_ids": "²"}, "is not an id."),
    ],
)
def test_the_editor_says_what_is_wrong(app, auth, changes, message):
    auth.signup()
    seeded = _seed(app)
    response = auth.post("/campaigns/new", _form(seeded, **changes))
    assert response.status_code == 400
    assert message in _text(response)
    html = _text(response)
    assert 'value="Spring sale"' in html or changes.get("name")  # what was typed stays
    assert f'<option value="{seeded.list_id}" selected>' in html or "list_ids" in changes
    assert _campaign(app, seeded) is None


def test_live_audience_count_names_who_is_left_out_and_why(app, auth):
    auth.signup()
    seeded = _seed(app)
    counted = auth.post("/campaigns/audience", _form(seeded), headers=HTMX)
    html = _text(counted)
    assert "<html" not in html
    assert (
        "<strong>6</strong> will receive it; excluded: 2 opted out, 1 no address for this channel,"
        " 1 missing a variable the message uses, 0 same address as another recipient"
    ) in html
    everyone_form = _form(seeded, list_ids="", audience_all="1")
    everyone = _text(auth.post("/campaigns/audience", everyone_form, headers=HTMX))
    assert "<strong>9</strong> will receive it" in everyone
    with_default = _form(seeded, body="Hi {{firstName}} from {{company|default('us')}}")
    defaulted = _text(auth.post("/campaigns/audience", with_default, headers=HTMX))
    assert "<strong>7</strong> will receive it" in defaulted
    too_big = _text(auth.post("/campaigns/audience", _form(seeded, list_ids="99999999999"), headers=HTMX))
    assert "Choose who receives it" in too_big
    no_page = _text(auth.post("/campaigns/audience", _form(seeded, page_id=""), headers=HTMX))
    assert "Choose a page to see who the campaign reaches." in no_page
    nobody = _text(auth.post("/campaigns/audience", _form(seeded, list_ids=""), headers=HTMX))
    assert "Choose who receives it" in nobody


def test_the_live_audience_count_answers_a_plain_post_with_a_clear_400(app, auth):
    auth.signup()
    plain = auth.post("/campaigns/audience", _form(_seed(app)))  # no HX-Request: not the editor's own request
    assert plain.status_code == 400
    assert "only answers the live count of the campaign editor" in _text(plain)


def test_schedule_at_a_local_time_and_back_to_a_draft(app, auth, client):
    auth.signup(timezone="Europe/Lisbon")
    seeded = _seed(app)
    assert "Send at (Europe/Lisbon time)" in _text(client.get("/campaigns/new"))
    campaign_id = _create(auth, seeded, schedule="at", scheduled_at="2030-07-01T09:30")
    campaign = _campaign(app, seeded, campaign_id)
    assert campaign.state is CampaignState.SCHEDULED
    assert campaign.scheduled_at == datetime(2030, 7, 1, 8, 30, tzinfo=UTC)  # Lisbon is UTC+1 in summer
    shown = _text(client.get(f"/campaigns/{campaign_id}"))
    assert "Starts by itself at 2030-07-01 09:30 (Europe/Lisbon)." in shown
    assert 'value="2030-07-01T09:30"' in _text(client.get(f"/campaigns/{campaign_id}/edit"))

    auth.post(f"/campaigns/{campaign_id}/edit", _form(seeded, schedule="manual"))
    assert _campaign(app, seeded, campaign_id).state is CampaignState.DRAFT


def test_an_edit_does_not_overwrite_a_campaign_started_meanwhile(app, auth, monkeypatch):
    import tenants.campaigns

    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="at", scheduled_at="2030-07-01T09:30")
    apply_form_for_real = tenants.campaigns.apply_campaign_form

    def apply_while_the_sweeper_starts_it(campaign, fields, tenant_row):
        apply_form_for_real(campaign, fields, tenant_row)
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as other_process:
            other_process.execute("UPDATE campaigns SET state = 'running' WHERE id = %s", (campaign_id,))
        return campaign

    monkeypatch.setattr(tenants.campaigns, "apply_campaign_form", apply_while_the_sweeper_starts_it)
    refused = auth.post(f"/campaigns/{campaign_id}/edit", _form(seeded, name="Too late", schedule="manual"))
    assert refused.status_code == 409
    assert "The campaign started meanwhile; your changes were not saved." in _text(refused)
    campaign = _campaign(app, seeded, campaign_id)
    assert (campaign.name, campaign.state, campaign.schedule.value) == (
        "Spring sale",
        CampaignState.RUNNING,
        "at",
    )


# --------------------------------------------------------------------------- starting


def test_create_with_schedule_now_starts_it_at_once(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="now")
    shown = _text(client.get(f"/campaigns/{campaign_id}"))
    assert "Campaign Spring sale started: 6 recipients." in shown
    assert 'data-testid="campaign-state">running<' in shown
    assert "Left out at start: 2 opted out, 1 no address for this channel, 1 missing a variable" in shown
    assert _deliveries(app, seeded, campaign_id) == {"pending": 6}


def test_start_with_nobody_to_send_to_fails_and_says_why(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, body="Hi {{nickname}}")
    response = auth.post(f"/campaigns/{campaign_id}/start", follow_redirects=True)
    html = _text(response)
    assert "did not start" in html and "Nobody to send to: 2 opted out" in html
    assert _campaign(app, seeded, campaign_id).state is CampaignState.FAILED


def test_start_on_a_disabled_page_is_refused_with_the_reason(app, auth):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded)
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        page = db.session.get(Page, seeded.page_id)
        page.state, page.disabled_reason = PageState.DISABLED, "token revoked"
        db.session.commit()
    refused = auth.post(f"/campaigns/{campaign_id}/start", headers=HTMX)
    assert refused.status_code == 409
    assert "The page Support line is disabled: token revoked." in _text(refused)
    assert _campaign(app, seeded, campaign_id).state is CampaignState.DRAFT


def test_unreachable_workers_are_reported_and_the_campaign_still_starts(app, auth, client, monkeypatch):
    import tasks.lifecycle

    monkeypatch.setattr(
        tasks.lifecycle, "launch_dispatch", lambda campaign: "background workers unreachable: no broker"
    )
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded)
    html = _text(auth.post(f"/campaigns/{campaign_id}/start", follow_redirects=True))
    assert "Campaign started, but background workers unreachable: no broker." in html
    assert _campaign(app, seeded, campaign_id).state is CampaignState.RUNNING


# --------------------------------------------------------------------------- actions per state


def _buttons(html: str) -> set[str]:
    """The action buttons the campaign page offers (the test send form aside)."""
    actions = html.split('id="campaign-actions"', 1)[1].split("<details", 1)[0].split("</section>", 1)[0]
    found = {b.strip() for b in re.findall(r"<button type=\"submit\"[^>]*>([^<(]+)", actions)}
    if re.search(r'role="button"[^>]*href="/campaigns/\d+/edit"', actions):
        found.add("Edit")
    return found


def test_buttons_and_actions_follow_the_state(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded)
    url = f"/campaigns/{campaign_id}"
    assert _buttons(_text(client.get(url))) == {"Start now", "Duplicate", "Delete", "Edit"}

    refused = auth.post(f"{url}/pause", headers=HTMX)
    assert refused.status_code == 409
    assert "You cannot pause a draft campaign (only when running)." in _text(refused)
    assert "<html" not in _text(refused)
    refused = auth.post(f"{url}/resume")
    assert refused.status_code == 409 and "You cannot resume a draft campaign" in _text(refused)
    assert "<html" in _text(refused)

    started = auth.post(f"{url}/start", headers=HTMX)
    assert started.status_code == 200 and "started: 6 recipients" in _text(started)
    assert _buttons(_text(started)) == {"Pause", "Cancel campaign", "Duplicate"}

    for action, words in [
        ("start", "You cannot start a running campaign"),
        ("resume", "You cannot resume a running campaign"),
        ("resend", "You cannot resend a running campaign"),
        ("delete", "You cannot delete a running campaign"),
    ]:
        refused = auth.post(f"{url}/{action}", headers=HTMX)
        assert (refused.status_code, words in _text(refused)) == (409, True), action
    assert auth.post(f"{url}/edit", _form(seeded, name="Sneaky")).status_code == 409
    refused_edit = client.get(f"{url}/edit")
    assert refused_edit.status_code == 409 and "A running campaign cannot be edited" in _text(refused_edit)
    assert _campaign(app, seeded, campaign_id).name == "Spring sale"

    paused = _text(auth.post(f"{url}/pause", headers=HTMX))
    assert 'data-testid="campaign-state">paused<' in paused and "Paused by owner@acme.example on " in paused
    assert _buttons(paused) == {"Resume", "Cancel campaign", "Duplicate"}

    resumed = _text(auth.post(f"{url}/resume", headers=HTMX))
    assert 'data-testid="campaign-state">running<' in resumed

    cancelled = auth.post(f"{url}/cancel")
    assert cancelled.status_code == 302
    html = _text(client.get(url))
    assert "Campaign cancelled; 6 messages will not be sent." in html
    assert _buttons(html) == {"Duplicate", "Delete"}
    refused = auth.post(f"{url}/resend", headers=HTMX)
    assert refused.status_code == 409
    assert "No failed or unknown recipients to send to again." in _text(refused)

    deleted = auth.post(f"{url}/delete")
    assert deleted.status_code == 302 and deleted.headers["Location"].endswith("/campaigns")
    assert client.get(url).status_code == 404
    assert _deliveries(app, seeded, campaign_id) == {}


def test_a_quota_pause_says_when_it_resumes_on_the_page_and_in_the_list(app, auth, client):
    auth.signup(timezone="America/Sao_Paulo")
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="now")
    _use_quota(app, seeded, 10_000)  # really used up: the session worker's sweeper must not resume it
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        table = Delivery.__table__
        first_two = select(table.c.id).where(table.c.campaign_id == campaign_id).limit(2).scalar_subquery()
        db.session.execute(update(table).where(table.c.id.in_(first_two)).values(state="sent"))
        db.session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(
                state=CampaignState.PAUSED,
                paused_reason=PauseReason.QUOTA,
                resume_at=datetime(2030, 1, 2, 3, 0, tzinfo=UTC),
            )
        )
        db.session.commit()
    shown = _text(client.get(f"/campaigns/{campaign_id}"))
    assert _pause_banner(shown) == (
        "Paused: the workspace's daily quota of 10,000 messages is used up. "
        "It resumes by itself at midnight (America/Sao_Paulo)."
    )
    assert _buttons(shown) == {"Resume", "Cancel campaign", "Duplicate"}
    row = re.search(r'<tr data-campaign-row="\d+">.*?</tr>', _text(client.get("/campaigns")), re.S).group(0)
    assert "paused" in row and "the workspace&#39;s daily quota is used up" in row and "33.3%" in row


def test_problems_are_listed_and_only_what_can_succeed_is_sent_again(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="now")
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        ids = db.session.scalars(
            select(Delivery.id).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id)
        ).all()
        table = Delivery.__table__
        db.session.execute(
            update(table)
            .where(table.c.id.in_(ids[:2]))
            .values(state="failed", error_code="131026", error_text="<b>undeliverable</b>")
        )
        db.session.execute(
            update(table).where(table.c.id == ids[2]).values(state="unknown", error_code="lease_expired")
        )
        db.session.execute(
            update(table)
            .where(table.c.id == ids[3])
            .values(
                state="failed", error_code="131000", error_text="gave up after 3 attempts", retryable=True
            )
        )
        db.session.execute(update(table).where(table.c.id.in_(ids[4:])).values(state="sent"))
        db.session.execute(
            update(Campaign).where(Campaign.id == campaign_id).values(state=CampaignState.COMPLETED)
        )
        db.session.commit()
    html = _text(client.get(f"/campaigns/{campaign_id}"))
    problems = html.split('data-testid="latest-problems"')[1].split("</section>")[0]
    assert problems.count("131026") == 2 and "lease_expired" in problems
    assert "Message undeliverable to this recipient — &lt;b&gt;undeliverable&lt;/b&gt;" in problems
    assert "<b>undeliverable" not in html
    assert f'href="/campaigns/{campaign_id}/report?state=failed"' in problems
    assert "Resend 2 (1 unknown, 1 failed after retries)" in html
    assert "2 failed for good (such as invalid numbers) and will not be resent." in html
    assert _metric(html, "failure_rate") == "50.0%"  # 3 failed of the 6 done

    resent = _text(auth.post(f"/campaigns/{campaign_id}/resend", headers=HTMX))
    assert (
        "Sending 2 messages again: 1 that failed after their retries and 1 whose outcome was unknown. "
        "2 failed for good (such as invalid numbers) and are not resent."
    ) in resent
    assert _deliveries(app, seeded, campaign_id) == {"pending": 2, "sent": 2, "failed": 2}
    assert _campaign(app, seeded, campaign_id).state is CampaignState.RUNNING


def test_resend_is_hidden_when_every_failure_is_permanent(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="now")
    _set_deliveries(app, seeded, campaign_id, state="failed", error_code="131026")
    _set_campaign(app, seeded, campaign_id, state=CampaignState.COMPLETED)
    html = _text(client.get(f"/campaigns/{campaign_id}"))
    assert _buttons(html) == {"Duplicate", "Delete"}
    refused = auth.post(f"/campaigns/{campaign_id}/resend", headers=HTMX)
    assert refused.status_code == 409 and "every failure is permanent" in _text(refused)


def test_duplicate_makes_a_draft_copy(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="now", send_rate="12")
    response = auth.post(f"/campaigns/{campaign_id}/duplicate")
    assert response.status_code == 302
    copy = _campaign(app, seeded)
    assert response.headers["Location"].endswith(f"/campaigns/{copy.id}/edit")
    assert (copy.name, copy.state, copy.send_rate, copy.body) == (
        "Spring sale (copy)",
        CampaignState.DRAFT,
        12.0,
        MESSAGE,
    )
    editor = _text(client.get(response.headers["Location"]))
    assert "Campaign copied as Spring sale (copy), a draft." in editor


# --------------------------------------------------------------------------- honest numbers and words


PAUSED_AT = datetime(2030, 1, 2, 3, 0, tzinfo=UTC)  # 00:00 in São Paulo


def _paused(app, auth, reason: PauseReason, **values) -> tuple[Seeded, int]:
    """A campaign of 6 recipients, 2 sent, paused for ``reason`` (in a São Paulo workspace)."""
    auth.signup(timezone="America/Sao_Paulo")
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="now")
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        table = Delivery.__table__
        first_two = select(table.c.id).where(table.c.campaign_id == campaign_id).limit(2).scalar_subquery()
        db.session.execute(update(table).where(table.c.id.in_(first_two)).values(state="sent"))
        db.session.commit()
    _set_campaign(
        app,
        seeded,
        campaign_id,
        state=CampaignState.PAUSED,
        paused_reason=reason,
        paused_at=PAUSED_AT,
        **values,
    )
    return seeded, campaign_id


def test_the_pause_banner_names_who_paused_and_when(app, auth, client):
    seeded, campaign_id = _paused(app, auth, PauseReason.USER)
    with app.app_context(), all_tenants(db.session):
        owner_id = db.session.scalar(select(User.id).where(User.email == "owner@acme.example"))
    _set_campaign(app, seeded, campaign_id, paused_by_id=owner_id)
    banner = _pause_banner(_text(client.get(f"/campaigns/{campaign_id}")))
    assert banner == "Paused by owner@acme.example on 2030-01-02 00:00 (America/Sao_Paulo)."

    _set_campaign(app, seeded, campaign_id, paused_by_id=owner_id + 1000)  # a user deleted since
    banner = _pause_banner(_text(client.get(f"/campaigns/{campaign_id}")))
    assert banner == "Paused by a former member on 2030-01-02 00:00 (America/Sao_Paulo)."


@pytest.mark.parametrize(
    ("reason", "values", "words"),
    [
        (
            PauseReason.PAGE_CAP,
            {},
            "Paused: the page Support line reached its daily cap of 500 messages. "
            "It resumes by itself at midnight (America/Sao_Paulo).",
        ),
        (
            PauseReason.SUSPENDED,
            {"state_detail": "suspended: unpaid invoice"},
            "Paused: the workspace was suspended (unpaid invoice). "
            "It resumes when the workspace is reactivated.",
        ),
        (
            PauseReason.ERROR_THRESHOLD,
            {"state_detail": "60% of the last 50 sends failed"},
            "Paused: too many recent sends failed (60% of the last 50 sends failed). "
            "Check the failures in the recipients report, then resume.",
        ),
        (
            PauseReason.PAGE_THROTTLED,
            {"state_detail": "130429 rate limit hit", "resume_at": PAUSED_AT},
            "Paused: the provider is throttling the page Support line (130429 rate limit hit). "
            "It resumes by itself at 2030-01-02 00:00 (America/Sao_Paulo).",
        ),
    ],
)
def test_the_pause_banner_names_the_cause(app, auth, client, reason, values, words):
    seeded, campaign_id = _paused(app, auth, reason, **values)
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        db.session.get(Page, seeded.page_id).daily_cap = 500
        db.session.commit()
    assert _pause_banner(_text(client.get(f"/campaigns/{campaign_id}"))) == words


def test_resume_while_the_quota_is_used_up_says_why_and_is_refused(app, auth, client):
    seeded, campaign_id = _paused(app, auth, PauseReason.QUOTA)
    _use_quota(app, seeded, 10_000)
    reason = (
        "It cannot send now: the workspace's daily quota is used up (10,000 of 10,000 today). "
        "The quota resets at midnight (America/Sao_Paulo), and the campaign resumes by itself then."
    )
    html = _text(client.get(f"/campaigns/{campaign_id}"))
    assert _testid(html, "resume-blocked") == reason
    assert (
        _testid(html, "quota-forecast")
        == "Only 0 can go today (today's remaining quota); about 4 will go tomorrow."
    )
    assert (
        _testid(html, "eta")
        == "tomorrow: after midnight (America/Sao_Paulo) for the 4 the daily limit holds back"
    )
    refused = auth.post(f"/campaigns/{campaign_id}/resume", headers=HTMX)
    assert refused.status_code == 409 and _testid(_text(refused), "action-error") == reason
    assert _campaign(app, seeded, campaign_id).state is CampaignState.PAUSED


def test_resume_while_the_page_cap_is_reached_says_why(app, auth, client):
    seeded, campaign_id = _paused(app, auth, PauseReason.PAGE_CAP)
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        db.session.get(Page, seeded.page_id).daily_cap = 500
        db.session.commit()
    _use_quota(app, seeded, 500, page_scope(seeded.page_id))
    html = _text(client.get(f"/campaigns/{campaign_id}"))
    assert _testid(html, "resume-blocked").startswith(
        "It cannot send now: the page Support line has reached its daily cap of 500."
    )
    assert auth.post(f"/campaigns/{campaign_id}/resume", headers=HTMX).status_code == 409
    _set_campaign(app, seeded, campaign_id, paused_reason=PauseReason.USER)
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        db.session.get(Page, seeded.page_id).daily_cap = 1000
        db.session.commit()
    assert _testid(_text(client.get(f"/campaigns/{campaign_id}")), "resume-blocked") is None


def _big_list(app, seeded: Seeded, size: int) -> int:
    """A list of ``size`` contacts who can all receive MESSAGE."""
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        big = ContactList(name="Everyone")
        db.session.add(big)
        db.session.flush()
        db.session.execute(
            insert(Contact),
            [
                {
                    "tenant_id": seeded.tenant_id,
                    "phone": f"+4917{n:08d}",
                    "first_name": "P",
                    "company": "Acme",
                }
                for n in range(size)
            ],
        )
        ids = db.session.scalars(select(Contact.id).where(Contact.phone.like("+4917%"))).all()
        db.session.execute(
            insert(ContactListMember),
            [{"tenant_id": seeded.tenant_id, "list_id": big.id, "contact_id": i} for i in ids],
        )
        db.session.commit()
        return big.id


def test_the_editor_and_the_campaign_page_forecast_what_waits_for_tomorrow(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    big = _big_list(app, seeded, 10_000)
    _use_quota(app, seeded, 2_161)  # 7,839 of the 10,000 left today
    warning = "Only 7,839 can go today (today's remaining quota); about 2,161 will go tomorrow."
    counted = _text(auth.post("/campaigns/audience", _form(seeded, list_ids=str(big)), headers=HTMX))
    assert "<strong>10,000</strong> will receive it" in counted
    assert _testid(counted, "quota-forecast") == warning
    small = _text(auth.post("/campaigns/audience", _form(seeded), headers=HTMX))
    assert _testid(small, "quota-forecast") is None  # 6 recipients: all go today

    campaign_id = _create(auth, seeded, list_ids=str(big))
    assert _testid(_text(client.get(f"/campaigns/{campaign_id}")), "quota-forecast") == warning

    started = _text(auth.post(f"/campaigns/{campaign_id}/start", headers=HTMX))
    assert _testid(started, "quota-forecast") == warning  # for the 10,000 pending
    assert (
        _testid(started, "eta") == "tomorrow: after midnight (UTC) for the 2,161 the daily limit holds back"
    )
    assert 'data-live="eta"' not in started


def test_an_email_campaign_shows_no_delivery_or_read_rate(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="now")
    _set_deliveries(app, seeded, campaign_id, state="sent")
    _set_campaign(
        app,
        seeded,
        campaign_id,
        state=CampaignState.COMPLETED,
        message={"channel": "smtp", "subject": "News", "body": MESSAGE},
    )
    html = _text(client.get(f"/campaigns/{campaign_id}"))
    assert _testid(html, "delivery-rate-na") == "n/a this channel never reports deliveries"
    assert _testid(html, "read-rate-na") == "n/a this channel never reports reads"
    assert 'data-metric="delivery_rate"' not in html  # live updates cannot turn it into a dash
    assert _metric(html, "failure_rate") == "0.0%"


def test_replies_to_the_campaign_are_listed_on_its_page(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, schedule="now")
    other_id = _create(auth, seeded, name="Other", schedule="now")
    long_text = "<script>x</script> yes please, " + "tell me more " * 20
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        ana_id = db.session.scalar(select(Contact.id).where(Contact.first_name == "P0"))
        replies = [
            InboundMessage(
                page_id=seeded.page_id,
                sender=f"4915112{n:04d}5",
                text=f"reply {n}",
                received_at=PAUSED_AT + timedelta(minutes=n),
                campaign_id=campaign_id,
            )
            for n in range(24)
        ]
        replies.append(
            InboundMessage(
                page_id=seeded.page_id,
                sender="491511200005",
                sender_name="Ana",
                contact_id=ana_id,
                text=long_text,
                received_at=PAUSED_AT + timedelta(hours=1),
                campaign_id=campaign_id,
            )
        )
        replies.append(
            InboundMessage(
                page_id=seeded.page_id,
                sender="491511999995",
                text="to the other campaign",
                received_at=PAUSED_AT + timedelta(hours=2),
                campaign_id=other_id,
            )
        )
        db.session.add_all(replies)
        db.session.commit()
    html = _text(client.get(f"/campaigns/{campaign_id}"))
    shown = html.split('data-testid="replies"')[1].split("</section>")[0]
    assert _testid(html, "reply-count") == "25"
    rows = re.findall(r"<tr>.*?</tr>", shown, re.S)[1:]
    assert len(rows) == 20 and "reply 23" in shown and "reply 3" not in shown
    assert "to the other campaign" not in shown
    newest = rows[0]
    assert f'<a href="/contacts/{ana_id}">Ana</a>' in newest
    assert "&lt;script&gt;x&lt;/script&gt; yes please" in newest and "<script>x" not in html
    assert f'title="{long_text.replace("<", "&lt;").replace(">", "&gt;")}"' in newest  # the whole text
    cell = re.search(r'<td class="truncate" title="&lt;script[^>]*>(.*?)</td>', newest, re.S).group(1)
    assert len(unescape(cell)) <= 140 and cell.endswith("...")  # cut short in the cell


# --------------------------------------------------------------------------- who may do what


def test_members_see_campaigns_but_cannot_act(app, auth, client, other_client, mailbox):
    member = Auth(other_client)
    member.signup(email="m@crier.example", workspace="Mine")
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded)
    invite_and_join(auth, member, mailbox, "m@crier.example")  # and switches to Acme

    shown = other_client.get(f"/campaigns/{campaign_id}")
    assert shown.status_code == 200 and "Spring sale" in _text(shown)
    assert _buttons(_text(shown)) == set()
    assert "New campaign" not in _text(other_client.get("/campaigns"))
    for action in ("start", "delete", "duplicate", "test-send"):
        assert member.post(f"/campaigns/{campaign_id}/{action}").status_code == 403, action
    assert member.post("/campaigns/new", _form(seeded)).status_code == 403
    assert other_client.get(f"/campaigns/{campaign_id}/edit").status_code == 403
    assert _campaign(app, seeded, campaign_id).state is CampaignState.DRAFT


def test_campaign_names_are_escaped(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded, name="<script>alert('x')</script>")
    for url in ("/campaigns", f"/campaigns/{campaign_id}", f"/campaigns/{campaign_id}/edit"):
        html = _text(client.get(url))
        assert "<script>alert" not in html and "&lt;script&gt;alert" in html, url


def test_actions_need_the_csrf_token(app, auth, client):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded)
    refused = client.post(f"/campaigns/{campaign_id}/start")
    assert refused.status_code == 400 and "Your form expired" in _text(refused)
    assert client.post("/campaigns/new", data=_form(seeded)).status_code == 400
    assert _campaign(app, seeded, campaign_id).state is CampaignState.DRAFT


def test_another_tenants_campaigns_are_404(app, auth, client, other_client):
    auth.signup(email="a@acme.example", workspace="A")
    Auth(other_client).signup(email="b@bravo.example", workspace="B")
    with app.app_context(), all_tenants(db.session):
        a_values = objects_of(tenant_named("A"))
    endpoints = {rule.endpoint for rule in object_rules(app, set(a_values))}
    assert {
        "campaigns.show",
        "campaigns.edit",
        "campaigns.start_campaign",
        "campaigns.pause_campaign",
        "campaigns.cancel_campaign",
        "campaigns.delete_campaign",
        "campaigns.test_send",
    } <= endpoints  # the isolation walk (test_isolation.py) requests each of them as tenant B
    campaign_id = a_values["campaign_id"]
    assert other_client.get(f"/campaigns/{campaign_id}").status_code == 404
    assert "Spring sale" not in _text(other_client.get("/campaigns"))


class Watcher:
    """A signed-in browser of the live server with a Socket.IO connection, recording campaign events."""

    def __init__(self, base_url: str, email: str, workspace: str):
        self.http = httpx.Client(base_url=base_url, timeout=10)
        token = csrf_token(self.http.get("/signup").text)
        form = {"email": email, "workspace_name": workspace, "password": PASSWORD, "timezone": "UTC"}
        assert self.http.post("/signup", data={"csrf_token": token, **form}).status_code == 302
        self.events: list[dict] = []
        self.socket = socketio_client.Client(reconnection=False)
        self.socket.on("campaign:progress", self.events.append)
        cookie = "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())
        self.socket.connect(base_url, headers={"Cookie": cookie}, transports=["websocket"], wait_timeout=10)

    def watch(self, campaign_id) -> dict:
        return self.socket.call("campaign:watch", {"id": campaign_id}, timeout=10)

    def close(self) -> None:
        self.socket.disconnect()
        self.http.close()


def test_only_the_campaigns_tenant_can_watch_its_room(app, live_server):
    alice = Watcher(live_server, "alice@acme.example", "Acme")
    bob = Watcher(live_server, "bob@bravo.example", "Bravo")
    try:
        with app.app_context(), all_tenants(db.session):
            campaign_id = objects_of(tenant_named("Acme"))["campaign_id"]
        assert alice.watch(campaign_id) == {"watching": True}
        assert bob.watch(campaign_id) == {"watching": False}
        assert bob.watch("1 or 1=1") == {"watching": False}
        assert bob.watch(2**40) == {"watching": False}

        live_channel = socketio_channel({"REDIS_PREFIX": os.environ["REDIS_PREFIX"]})  # the live server's
        emitter = SocketIO(message_queue=REDIS_URL, channel=live_channel)
        emitter.emit("campaign:progress", {"id": campaign_id}, to=campaign_room(campaign_id))
        deadline = time.monotonic() + 10
        while not alice.events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alice.events == [{"id": campaign_id}], "the campaign's room did not reach its watcher"
        time.sleep(0.5)
        assert bob.events == [], "another tenant's browser joined the campaign's room"
    finally:
        alice.close()
        bob.close()


# --------------------------------------------------------------------------- test send


def test_test_send_renders_for_the_contact_and_reaches_the_provider(app, auth, sandbox):
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded)
    with app.app_context(), tenant(db.session, seeded.tenant_id):
        ana = db.session.scalar(select(Contact).where(Contact.first_name == "P0"))
        nocompany = db.session.scalar(select(Contact).where(Contact.first_name == "Nocompany"))
    sent = auth.post(f"/campaigns/{campaign_id}/test-send", {"contact_id": str(ana.id)}, headers=HTMX)
    assert sent.status_code == 200 and "Sent. The provider's message id is" in _text(sent)
    entries = httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=5).json()["entries"]
    assert [(e["recipient"], e["body"]) for e in entries] == [("491511200005", "Hi P0, news from Acme")]

    typed = auth.post(f"/campaigns/{campaign_id}/test-send", {"address": "+5511961234567"}, headers=HTMX)
    assert "Sent." in _text(typed)  # an address of no contact gets the sample contact's values
    missing = auth.post(
        f"/campaigns/{campaign_id}/test-send", {"contact_id": str(nocompany.id)}, headers=HTMX
    )
    assert missing.status_code == 400 and "This contact has no company." in _text(missing)
    nobody = auth.post(f"/campaigns/{campaign_id}/test-send", {"contact_id": "424242"}, headers=HTMX)
    assert nobody.status_code == 400 and "There is no contact 424242." in _text(nobody)
    empty = auth.post(f"/campaigns/{campaign_id}/test-send", {}, headers=HTMX)
    assert empty.status_code == 400 and "Type a contact id or a phone number." in _text(empty)
    assert len(httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=5).json()["entries"]) == 2


def _join(app, seeded: Seeded, role: Role, email: str) -> None:
    """Make ``email`` a ``role`` of the seeded workspace (its own account, signed in elsewhere)."""
    with app.app_context(), all_tenants(db.session):
        user = User(email=email, password_hash=hash_password(PASSWORD), email_verified_at=utcnow())
        db.session.add(Membership(tenant_id=seeded.tenant_id, user=user, role=role))
        db.session.commit()


@pytest.mark.parametrize(("role", "allowed"), [(Role.MEMBER, False), (Role.ADMIN, True)])
def test_test_sends_through_pages_and_campaigns_are_for_owners_and_admins(
    app, auth, other_client, sandbox, role, allowed
):
    """Sending text out through the workspace's channels is a manager's act, whichever form sends it
    (a member could send any text through a page's test send, but not a campaign's)."""
    auth.signup()
    seeded = _seed(app)
    campaign_id = _create(auth, seeded)
    _join(app, seeded, role, "colleague@crier.example")
    colleague = Auth(other_client)
    colleague.login("colleague@crier.example")

    by_page = colleague.post(
        f"/pages/{seeded.page_id}/test-send", {"address": "+5511961234567", "text": "anything"}, headers=HTMX
    )
    by_campaign = colleague.post(
        f"/campaigns/{campaign_id}/test-send", {"address": "+5511961234567"}, headers=HTMX
    )
    page_html = _text(other_client.get(f"/pages/{seeded.page_id}"))

    sent = httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=5).json()["entries"]
    if allowed:
        assert by_page.status_code == by_campaign.status_code == 200
        assert "Sent." in _text(by_page) and "Sent." in _text(by_campaign)
        assert len(sent) == 2 and "Send one message" in page_html
    else:
        assert by_page.status_code == by_campaign.status_code == 403
        assert sent == [] and "Send one message" not in page_html
