"""Campaigns: who a start reaches and who it leaves out, the snapshot, scheduling, and the actions."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from flask_migrate import upgrade
from sqlalchemy import func, select

from tenants import campaigns
from tenants.campaigns import (
    Campaign,
    CampaignError,
    CampaignState,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    apply_campaign_form,
    count_audience,
    start,
)
from tenants.contacts import Contact, ContactChannelId, ContactList, ContactListMember, Segment
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.pages import Page, ProviderKind, apply_form, disable
from tenants.scoping import all_tenants, tenant
from tenants.templates import Template
from tests.conftest import built_app

PAGE_FORMS = {
    ProviderKind.WHATSAPP: (
        "https://graph.example",
        {"access_token": "wa-token-123456", "app_secret": "wa-secret", "verify_token": "wa-verify"},
        {"phone_number_id": "1055"},
    ),
    ProviderKind.MESSENGER: (
        "https://graph.example",
        {"page_access_token": "fb-token-123456", "app_secret": "fb-secret", "verify_token": "fb-verify"},
        {"page_id": "777"},
    ),
    ProviderKind.SMTP: (
        "smtp://mail.example:587",
        {"username": "news", "password": "mail-password"},
        {"from_address": "news@acme.example"},
    ),
}
NO_EXCLUSIONS = {"opted_out": 0, "no_address": 0, "missing_variable": 0, "duplicate": 0}


@dataclass
class Acme:
    """A tenant in São Paulo with helpers to build its pages, people, lists and campaigns."""

    id: int
    people: int = 0

    @property
    def row(self) -> Tenant:
        return db.session.get(Tenant, self.id)

    def page(self, kind: ProviderKind = ProviderKind.WHATSAPP, name: str | None = None) -> Page:
        base_url, credentials, settings = PAGE_FORMS[kind]
        page = apply_form(
            Page(kind=kind),
            name=name or f"Acme {kind.value}",
            base_url=base_url,
            send_rate=10,
            daily_cap=None,
            credentials=credentials,
            settings=settings,
        )
        db.session.add(page)
        db.session.flush()
        return page

    def person(self, first_name: str, *lists: ContactList, **fields) -> Contact:
        self.people += 1
        fields.setdefault("phone", f"+5511961{self.people:06d}")
        contact = Contact(first_name=first_name, **fields)
        db.session.add(contact)
        db.session.flush()
        for contact_list in lists:
            db.session.add(ContactListMember(list_id=contact_list.id, contact_id=contact.id))
        db.session.flush()
        return contact

    def contact_list(self, name: str) -> ContactList:
        row = ContactList(name=name)
        db.session.add(row)
        db.session.flush()
        return row

    def campaign(self, page: Page, *, body: str = "Hi {{first_name}}", **fields) -> Campaign:
        """A draft saved through the editor's validation, as a user would make it."""
        form = {"name": "Spring sale", "page_id": page.id, "body": body, "schedule": "manual", **fields}
        campaign = apply_campaign_form(Campaign(), form, self.row)
        db.session.add(campaign)
        db.session.commit()
        return campaign


@pytest.fixture
def acme(app):
    with app.app_context():
        with all_tenants(db.session):
            row = Tenant(name="Acme", slug="acme", timezone="America/Sao_Paulo")
            db.session.add(row)
            db.session.commit()
        with tenant(db.session, row.id):
            yield Acme(row.id)


def recipients(campaign: Campaign) -> dict[str, str]:
    """First name → address of every delivery the campaign has."""
    rows = db.session.execute(
        select(Contact.first_name, Delivery.address)
        .join(Contact, Contact.id == Delivery.contact_id)
        .where(Delivery.campaign_id == campaign.id)
    ).all()
    assert len(rows) == len({name for name, _ in rows}), rows
    return dict(rows)


def delivery_states(campaign: Campaign) -> dict[str, DeliveryState]:
    rows = db.session.execute(
        select(Contact.first_name, Delivery.state)
        .join(Contact, Contact.id == Delivery.contact_id)
        .where(Delivery.campaign_id == campaign.id)
    ).all()
    return dict(rows)


def set_delivery(campaign: Campaign, first_name: str, **values) -> None:
    delivery = db.session.scalar(
        select(Delivery)
        .join(Contact, Contact.id == Delivery.contact_id)
        .where(Delivery.campaign_id == campaign.id, Contact.first_name == first_name)
    )
    for key, value in values.items():
        setattr(delivery, key, value)
    db.session.commit()


# --------------------------------------------------------------------------- who a start reaches


def test_lists_reach_each_person_once_and_count_who_is_left_out(acme):
    page = acme.page()
    vip, customers = acme.contact_list("VIP"), acme.contact_list("Customers")
    ana = acme.person("Ana", vip, customers, phone="+5511961000001")
    acme.person("Bruno", customers, phone="+5511961000002")
    acme.person("Carla", vip, phone="+5511961000003", opted_out=True)
    acme.person("Dan", vip, phone=None, email="dan@acme.example")
    acme.person("Eve", phone="+5511961000005")  # on no list
    campaign = acme.campaign(page, list_ids=[vip.id, customers.id])

    preview = count_audience(campaign)
    assert (preview.matched, preview.recipients) == (4, 2)
    assert start(campaign) is True

    assert campaign.state is CampaignState.RUNNING and campaign.started_at is not None
    assert recipients(campaign) == {"Ana": "+5511961000001", "Bruno": "+5511961000002"}
    assert set(delivery_states(campaign).values()) == {DeliveryState.PENDING}
    assert campaign.total == 2
    assert campaign.exclusions == {**NO_EXCLUSIONS, "opted_out": 1, "no_address": 1}
    assert preview.excluded == campaign.exclusions
    summary = campaigns.summary(campaign)
    assert (summary["total"], summary["pending"], summary["excluded"]["opted_out"]) == (2, 2, 1)
    assert db.session.scalar(select(Delivery.contact_id).where(Delivery.address == ana.phone)) == ana.id


def test_segments_and_all_contacts_stay_inside_the_tenant(acme):
    page = acme.page()
    acme.person("Ana", custom_fields={"city": "Berlin"})
    acme.person("Bruno", custom_fields={"city": "berlin"})
    acme.person("Carla", custom_fields={"city": "Lisbon"})
    berlin = Segment(name="Berlin", conditions=[{"field": "custom.city", "op": "equals", "value": "Berlin"}])
    db.session.add(berlin)
    db.session.commit()
    with all_tenants(db.session):
        other = Tenant(name="Other", slug="other")
        db.session.add(other)
        db.session.commit()
    with tenant(db.session, other.id):
        twin = Contact(first_name="Ana", phone="+5511961000099", custom_fields={"city": "Berlin"})
        db.session.add(twin)
        db.session.commit()

    by_segment = acme.campaign(page, segment_ids=[berlin.id])
    assert start(by_segment) is True
    assert sorted(recipients(by_segment)) == ["Ana", "Bruno"]

    everyone = acme.campaign(page, audience_all="1", name="Everyone")
    assert start(everyone) is True
    assert sorted(recipients(everyone)) == ["Ana", "Bruno", "Carla"]
    assert "+5511961000099" not in recipients(everyone).values()


@pytest.mark.parametrize(
    ("body", "receive", "missing"),
    [
        ("Hi {{first_name}}, news for {{company}}", {"Ana", "Blank"}, 3),
        (
            'Hi {{first_name}}, news for {{company|default("you")}}',
            {"Ana", "Bruno", "Carla", "Dan", "Blank"},
            0,
        ),
        ("Hi {{first_name}}, see you in {{city}}", {"Ana", "Dan"}, 3),
        ("Hi {{first_name}} from {{home_town}}", {"Carla"}, 4),  # the custom field "Home Town"
    ],
)
@pytest.mark.parametrize("suspects_rendered_as_they_are", [1_000, 0], ids=["rendered", "keys-read-first"])
def test_people_missing_a_variable_the_message_needs_are_left_out(
    acme, monkeypatch, body, receive, missing, suspects_rendered_as_they_are
):
    monkeypatch.setattr(campaigns, "RENDER_WITHOUT_KEYS", suspects_rendered_as_they_are)
    page = acme.page()
    everyone = acme.contact_list("Everyone")
    acme.person("Ana", everyone, company="Acme Ltd", custom_fields={"city": "Berlin"})
    acme.person("Bruno", everyone, company=None, custom_fields={"city": "  "})
    acme.person("Carla", everyone, company="  ", custom_fields={"Home Town": "Porto"})
    acme.person("Dan", everyone, company="\t\u00a0", custom_fields={"city": "Lagos"})
    acme.person("Blank", everyone, company="Blank Inc", custom_fields={"city": None, "home_town": ""})
    campaign = acme.campaign(page, body=body, list_ids=[everyone.id])

    preview = count_audience(campaign)
    start(campaign)

    assert set(recipients(campaign)) == receive
    assert campaign.exclusions == {**NO_EXCLUSIONS, "missing_variable": missing}
    assert (preview.recipients, preview.excluded) == (len(receive), campaign.exclusions)


def test_many_people_with_a_variable_under_an_alias_are_not_each_rendered(acme, monkeypatch):
    """{{home_town}} read from "Home Town": the SQL check learns the alias instead of rendering everyone."""
    rendered = []
    original = campaigns._truly_missing

    def counting(message, rows):
        rendered.append(len(db.session.execute(rows).all()))
        return original(message, rows)

    monkeypatch.setattr(campaigns, "_truly_missing", counting)
    monkeypatch.setattr(campaigns, "RENDER_WITHOUT_KEYS", 10)
    page = acme.page()
    everyone = acme.contact_list("Everyone")
    for n in range(30):
        acme.person(f"Person{n}", everyone, custom_fields={"Home Town": f"Town {n}"})
    acme.person("Ana", everyone, custom_fields={"Home Town": " "})
    acme.person("Bruno", everyone, custom_fields={"home_town": "Porto"})
    acme.person("Carla", everyone)
    campaign = acme.campaign(page, body="Hi {{first_name}} from {{home_town}}", list_ids=[everyone.id])

    start(campaign)

    assert len(recipients(campaign)) == 31 and "Bruno" in recipients(campaign)
    assert campaign.exclusions == {**NO_EXCLUSIONS, "missing_variable": 2}
    assert rendered == [2]  # Ana and Carla only, not the 30 with "Home Town"


def test_messenger_pages_address_people_by_their_id_on_that_page(acme):
    page = acme.page(ProviderKind.MESSENGER, "Shop Messenger")
    elsewhere = acme.page(ProviderKind.MESSENGER, "Other Messenger")
    everyone = acme.contact_list("Everyone")
    ana = acme.person("Ana", everyone)
    bruno = acme.person("Bruno", everyone)
    acme.person("Carla", everyone)  # a phone, but no id on Messenger
    db.session.add_all(
        [
            ContactChannelId(contact_id=ana.id, page_id=page.id, external_id="PSID-ANA"),
            ContactChannelId(contact_id=ana.id, page_id=elsewhere.id, external_id="PSID-ANA-ELSEWHERE"),
            ContactChannelId(contact_id=bruno.id, page_id=elsewhere.id, external_id="PSID-BRUNO-ELSEWHERE"),
        ]
    )
    campaign = acme.campaign(page, list_ids=[everyone.id])

    start(campaign)

    assert recipients(campaign) == {"Ana": "PSID-ANA"}
    assert campaign.exclusions == {**NO_EXCLUSIONS, "no_address": 2}


def test_email_pages_address_people_by_email(acme):
    page = acme.page(ProviderKind.SMTP)
    template = Template(
        name="News", channel=ProviderKind.SMTP, subject="News for {{first_name}}", body="Hello {{first_name}}"
    )
    db.session.add(template)
    db.session.flush()
    everyone = acme.contact_list("Everyone")
    acme.person("Ana", everyone, email="ana@acme.example")
    acme.person("Bruno", everyone, email=None)
    campaign = acme.campaign(page, body="", template_id=template.id, list_ids=[everyone.id])

    start(campaign)

    assert recipients(campaign) == {"Ana": "ana@acme.example"}
    assert campaign.exclusions == {**NO_EXCLUSIONS, "no_address": 1}


def test_a_template_for_another_channel_is_refused(acme):
    page = acme.page()
    template = Template(name="News", channel=ProviderKind.SMTP, subject="News", body="Hello")
    db.session.add(template)
    db.session.flush()
    acme.person("Ana", email="ana@acme.example")
    campaign = acme.campaign(page, body="Hi", audience_all="1")
    with pytest.raises(CampaignError, match="The template News is for smtp; the page sends whatsapp"):
        acme.campaign(page, body="", template_id=template.id, audience_all="1")

    campaign.template_id = template.id  # a draft whose template changed channel after it was saved
    db.session.commit()
    with pytest.raises(CampaignError, match="The template is for smtp but the page is whatsapp"):
        start(campaign)
    db.session.rollback()
    assert db.session.get(Campaign, campaign.id).state is CampaignState.DRAFT


def test_the_message_is_snapshotted_at_start(acme):
    page = acme.page()
    template = Template(name="Welcome", channel=ProviderKind.WHATSAPP, body="Hi {{first_name}}, welcome!")
    db.session.add(template)
    db.session.flush()
    acme.person("Ana")
    campaign = acme.campaign(page, body="", template_id=template.id, audience_all="1")
    start(campaign)

    template.body = "Hi {{first_name}}, this text came later"
    db.session.commit()

    assert db.session.get(Campaign, campaign.id).message["body"] == "Hi {{first_name}}, welcome!"
    assert campaigns.message_of(campaign)["body"] == "Hi {{first_name}}, welcome!"


def test_a_time_is_read_in_the_tenants_timezone_and_schedules_the_campaign(acme):
    page = acme.page()
    acme.person("Ana")
    day = (utcnow() + timedelta(days=30)).date()  # a form refuses a time that has passed
    campaign = acme.campaign(page, audience_all="1", schedule="at", scheduled_at=f"{day}T09:30")
    due = datetime(day.year, day.month, day.day, 12, 30, tzinfo=UTC)
    assert campaign.scheduled_at == due  # São Paulo is UTC-3 all year

    assert start(campaign, now=due - timedelta(minutes=1)) is False
    assert campaign.state is CampaignState.SCHEDULED and campaign.message is None
    assert recipients(campaign) == {}

    with all_tenants(db.session):
        other = Tenant(name="Other", slug="other")
        db.session.add(other)
        db.session.commit()
        with tenant(db.session, other.id):
            db.session.add(Contact(first_name="Zoe", phone="+5511961999999"))
            db.session.commit()
        # when due, the sweeper starts it, working inside all_tenants
        assert start(campaign, now=due) is True
        assert list(recipients(campaign)) == ["Ana"]  # every tenant's deliveries: Zoe has none
    assert campaign.state is CampaignState.RUNNING and campaign.total == 1


def test_a_time_that_is_not_a_time_is_refused(acme):
    page = acme.page()
    with pytest.raises(CampaignError, match="Give the date and time to send"):
        acme.campaign(page, audience_all="1", schedule="at", scheduled_at="next tuesday")


# --------------------------------------------------------------------------- actions and their states

# The lifecycle as the user is told it: which states each action may be taken from.
ALLOWED = {
    "edit": {"draft", "scheduled"},
    "start": {"draft", "scheduled"},
    "pause": {"running"},
    "resume": {"paused"},
    "cancel": {"scheduled", "running", "paused"},
    "resend": {"completed", "paused", "cancelled"},
}
REFUSED = [
    (action, state) for action in ALLOWED for state in CampaignState if state.value not in ALLOWED[action]
]


def _act(action: str, campaign: Campaign, acme: Acme):
    if action == "edit":
        return apply_campaign_form(campaign, {"name": "Renamed", "page_id": campaign.page_id}, acme.row)
    return getattr(campaigns, action)(campaign)


@pytest.mark.parametrize(("action", "state"), REFUSED, ids=[f"{a}-from-{s.value}" for a, s in REFUSED])
def test_actions_are_refused_from_states_that_do_not_allow_them(acme, action, state):
    page = acme.page()
    acme.person("Ana")
    campaign = acme.campaign(page, audience_all="1")
    campaign.state = state
    db.session.commit()

    with pytest.raises(CampaignError) as refused:
        _act(action, campaign, acme)

    if action == "edit":
        assert str(refused.value) == f"A {state.value} campaign cannot be edited."
    else:
        assert str(refused.value).startswith(f"You cannot {action} a {state.value} campaign (only when ")
    db.session.rollback()
    unchanged = db.session.get(Campaign, campaign.id)
    assert (unchanged.state, unchanged.name) == (state, "Spring sale")
    assert recipients(unchanged) == {}


def test_the_action_table_matches_the_lifecycle():
    assert {action: {s.value for s in campaigns.ACTIONS[action]} for action in ALLOWED} == ALLOWED
    assert set(campaigns.ACTIONS["duplicate"]) == set(CampaignState)


def test_two_simultaneous_starts_make_one_run(app, acme):
    page = acme.page()
    everyone = acme.contact_list("Everyone")
    for n in range(300):
        acme.person(f"Person{n}", everyone, phone=f"+55119620{n:05d}")
    db.session.commit()
    campaign_id = acme.campaign(page, list_ids=[everyone.id]).id
    barrier, results = threading.Barrier(2), []

    def start_in_its_own_session() -> None:
        with app.app_context(), tenant(db.session, acme.id):
            campaign = db.session.get(Campaign, campaign_id)
            barrier.wait()
            try:
                results.append(start(campaign))
            except CampaignError as exc:
                results.append(str(exc))

    threads = [threading.Thread(target=start_in_its_own_session) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert results.count(True) == 1 and len(results) == 2
    refusal = next(r for r in results if r is not True)
    assert refusal in (
        "The campaign was started or changed meanwhile; reload the page.",  # both read it as a draft
        "You cannot start a running campaign (only when draft, scheduled).",  # one read it running
    )
    db.session.expire_all()
    campaign = db.session.get(Campaign, campaign_id)
    assert campaign.state is CampaignState.RUNNING and campaign.total == 300
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 300

    with pytest.raises(CampaignError, match="You cannot start a running campaign"):
        start(campaign)
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 300


def test_cancel_cancels_every_delivery_not_yet_sent(acme):
    page = acme.page()
    for name in ("Ana", "Bruno", "Carla", "Dan"):
        acme.person(name)
    campaign = acme.campaign(page, audience_all="1")
    start(campaign)
    set_delivery(campaign, "Ana", state=DeliveryState.SENT, provider_message_id="wamid.ana")
    set_delivery(campaign, "Bruno", state=DeliveryState.IN_FLIGHT)

    assert campaigns.cancel(campaign) == 2

    assert campaign.state is CampaignState.CANCELLED and campaign.finished_at is not None
    assert delivery_states(campaign) == {
        "Ana": DeliveryState.SENT,
        "Bruno": DeliveryState.IN_FLIGHT,  # being sent right now: its outcome is still written
        "Carla": DeliveryState.CANCELLED,
        "Dan": DeliveryState.CANCELLED,
    }
    assert campaigns.summary(campaign)["cancelled"] == 2


def test_resend_sends_again_only_unknown_and_retryable_failures_and_keeps_their_history(acme):
    page = acme.page()
    for name in ("Ana", "Bruno", "Carla", "Dora"):
        acme.person(name)
    campaign = acme.campaign(page, audience_all="1")
    start(campaign)
    generation = campaign.dispatch_generation
    set_delivery(campaign, "Ana", state=DeliveryState.SENT, provider_message_id="wamid.ana")
    set_delivery(campaign, "Bruno", state=DeliveryState.FAILED, attempts=1, error_code="131026")
    set_delivery(campaign, "Carla", state=DeliveryState.UNKNOWN, attempts=1, error_code="lease_expired")
    set_delivery(
        campaign,
        "Dora",
        state=DeliveryState.FAILED,
        attempts=3,
        error_code="503",
        retryable=True,
        error_text="gave up after 3 attempts: HTTP 503",
    )
    campaign.state = CampaignState.COMPLETED
    db.session.commit()

    resent = campaigns.resend(campaign)

    assert (resent.unknown, resent.failed, resent.left_alone) == (1, 1, 1)
    assert resent.text() == (
        "Sending 2 messages again: 1 that failed after their retries and 1 whose outcome was unknown. "
        "1 failed for good (such as invalid numbers) and are not resent."
    )
    assert campaign.state is CampaignState.RUNNING and campaign.dispatch_generation == generation + 1
    assert delivery_states(campaign) == {
        "Ana": DeliveryState.SENT,
        "Bruno": DeliveryState.FAILED,
        "Carla": DeliveryState.PENDING,
        "Dora": DeliveryState.PENDING,
    }
    dora = db.session.scalar(
        select(Delivery).join(Contact, Contact.id == Delivery.contact_id).where(Contact.first_name == "Dora")
    )
    assert (dora.state, dora.retryable) == (DeliveryState.PENDING, False)
    history = {
        (a.state, a.attempts, a.error_code, a.error_text)
        for a in db.session.scalars(select(DeliveryAttempt).where(DeliveryAttempt.campaign_id == campaign.id))
    }
    assert history == {
        (DeliveryState.UNKNOWN, 1, "lease_expired", None),
        (DeliveryState.FAILED, 3, "503", "gave up after 3 attempts: HTTP 503"),
    }

    campaign.state = CampaignState.COMPLETED
    set_delivery(campaign, "Carla", state=DeliveryState.SENT)
    set_delivery(campaign, "Dora", state=DeliveryState.SENT)
    with pytest.raises(CampaignError, match="every failure is permanent"):
        campaigns.resend(campaign)
    assert db.session.get(Campaign, campaign.id).state is CampaignState.COMPLETED


def test_duplicate_makes_a_draft_copy(acme):
    page = acme.page()
    acme.person("Ana")
    campaign = acme.campaign(page, audience_all="1", send_rate="5")
    start(campaign)

    copy = campaigns.duplicate(campaign)

    assert copy.id != campaign.id and copy.name == "Spring sale (copy)"
    assert copy.state is CampaignState.DRAFT and copy.message is None and copy.total == 0
    assert (copy.page_id, copy.body, copy.audience, copy.send_rate) == (
        campaign.page_id,
        campaign.body,
        campaign.audience,
        5.0,
    )
    assert recipients(copy) == {} and campaign.state is CampaignState.RUNNING
    assert start(copy) is True and list(recipients(copy)) == ["Ana"]


def test_pause_and_resume(acme):
    page = acme.page()
    acme.person("Ana")
    campaign = acme.campaign(page, audience_all="1")
    start(campaign)

    campaigns.pause(campaign)
    assert campaign.state is CampaignState.PAUSED and campaign.pause_text == "paused by a user"
    campaigns.resume(campaign)
    assert campaign.state is CampaignState.RUNNING and campaign.paused_reason is None


# --------------------------------------------------------------------------- starts that cannot happen


def test_the_plan_limit_refuses_a_bigger_audience(acme):
    page = acme.page()
    for name in ("Ana", "Bruno", "Carla"):
        acme.person(name)
    acme.person("Dan", opted_out=True)  # left out, so not counted against the plan
    acme.row.max_recipients_per_campaign = 2
    campaign = acme.campaign(page, audience_all="1")

    with pytest.raises(CampaignError) as refused:
        start(campaign)

    assert str(refused.value) == "The audience has 3 recipients; your plan allows 2 per campaign."
    campaign = db.session.get(Campaign, campaign.id)
    assert campaign.state is CampaignState.DRAFT and recipients(campaign) == {}
    acme.row.max_recipients_per_campaign = 3
    assert start(campaign) is True and campaign.total == 3


def test_a_disabled_page_is_refused(acme):
    page = acme.page(name="Shop WhatsApp")
    acme.person("Ana")
    campaign = acme.campaign(page, audience_all="1")
    disable(page, "the access token expired")
    db.session.commit()

    with pytest.raises(CampaignError) as refused:
        start(campaign)
    assert str(refused.value) == "The page Shop WhatsApp is disabled: the access token expired."
    db.session.rollback()
    assert db.session.get(Campaign, campaign.id).state is CampaignState.DRAFT


def test_nobody_to_send_to_fails_the_campaign_and_says_why(acme):
    page = acme.page()
    everyone = acme.contact_list("Everyone")
    acme.person("Ana", everyone, opted_out=True)
    acme.person("Bruno", everyone, phone=None, email="bruno@acme.example")
    acme.person("Carla", everyone, phone=None)
    campaign = acme.campaign(page, list_ids=[everyone.id])

    assert start(campaign) is False

    assert campaign.state is CampaignState.FAILED and campaign.finished_at is not None
    assert campaign.state_detail == "Nobody to send to: 1 opted out, 2 no address for this channel"
    assert recipients(campaign) == {}

    empty = acme.contact_list("Empty")
    nobody = acme.campaign(page, list_ids=[empty.id], name="Nobody")
    assert start(nobody) is False
    assert nobody.state_detail == "Nobody to send to: the audience is empty"


@pytest.mark.parametrize("suspects_rendered_as_they_are", [1_000, 0], ids=["rendered", "keys-read-first"])
def test_start_works_the_same_on_sqlite(tmp_path, monkeypatch, suspects_rendered_as_they_are):
    """The embedded default: the same exclusions and recipients from the same set-based statements."""
    monkeypatch.setattr(campaigns, "RENDER_WITHOUT_KEYS", suspects_rendered_as_they_are)
    with built_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'crier.db'}") as app, app.app_context():
        upgrade()
        with all_tenants(db.session):
            row = Tenant(name="Acme", slug="acme")
            db.session.add(row)
            db.session.commit()
        with tenant(db.session, row.id):
            acme = Acme(row.id)
            page = acme.page()
            everyone = acme.contact_list("Everyone")
            acme.person("Ana", everyone, custom_fields={"city": "Berlin"})
            acme.person("Bruno", everyone, custom_fields={"city": "\t"})
            acme.person("Carla", everyone, custom_fields={"Home Town": "Porto", "city": "Porto"})
            acme.person("Dan", everyone, opted_out=True, custom_fields={"city": "Lagos"})
            acme.person("Eve", everyone, phone=None, custom_fields={"city": "Osaka"})
            acme.person("Fay", everyone, custom_fields={"Home Town": "Recife"})
            campaign = acme.campaign(
                page, body="Hi {{first_name}} from {{city}} ({{home_town}})", list_ids=[everyone.id]
            )
            assert count_audience(campaign).recipients == 1
            assert start(campaign) is True
            assert sorted(recipients(campaign)) == ["Carla"]
            assert campaign.exclusions == {
                "opted_out": 1,
                "no_address": 1,
                "missing_variable": 3,
                "duplicate": 0,
            }
            due = db.session.scalar(select(Delivery.due_at).limit(1))
            assert due.tzinfo is not None and abs(due - datetime.now(UTC)) < timedelta(minutes=5)
