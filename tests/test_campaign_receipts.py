"""Provider callbacks applied to a campaign: delivered, read, failed, replies and STOP, and the rates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from tasks.receipts import apply_receipts, process_webhook_event
from tenants import campaigns
from tenants.campaigns import Campaign, Delivery, DeliveryState, apply_campaign_form, count_audience, start
from tenants.contacts import Contact, ContactChannelId
from tenants.db import db, utcnow
from tenants.events import InboundMessage, Receipt, WebhookEvent
from tenants.models import Tenant
from tenants.pages import Page, ProviderKind, apply_form
from tenants.scoping import all_tenants, tenant
from tenants.usage import DailyActivity

PEOPLE = {
    "Ana": "+5511961000001",
    "Bruno": "+5511961000002",
    "Carla": "+5511961000003",
    "Dan": "+5511961000004",
}
PSIDS = {"Ana": "PSID-ANA", "Bruno": "PSID-BRUNO"}


def _page(kind: ProviderKind, name: str) -> Page:
    credentials = {
        ProviderKind.WHATSAPP: {
            "access_token": "wa-token-1234",
            "app_secret": "wa-s",
            "verify_token": "wa-v",
        },
        ProviderKind.MESSENGER: {
            "page_access_token": "fb-token-1234",
            "app_secret": "fb-s",
            "verify_token": "v",
        },
    }[kind]
    settings = {
        ProviderKind.WHATSAPP: {"phone_number_id": "1055"},
        ProviderKind.MESSENGER: {"page_id": "777"},
    }
    page = apply_form(
        Page(kind=kind),
        name=name,
        base_url="https://graph.example",
        send_rate=10,
        daily_cap=None,
        credentials=credentials,
        settings=settings[kind],
    )
    db.session.add(page)
    db.session.flush()
    return page


def _started(page: Page, name: str) -> Campaign:
    form = {"name": name, "page_id": page.id, "body": "Hi {{first_name}}", "audience_all": "1"}
    campaign = apply_campaign_form(Campaign(), form, db.session.get(Tenant, page.tenant_id))
    db.session.add(campaign)
    db.session.commit()
    assert start(campaign) is True
    return campaign


@dataclass
class Shop:
    """A tenant whose WhatsApp and Messenger campaigns were sent a minute ago to everyone."""

    tenant_id: int
    whatsapp: int
    messenger: int
    wa_campaign: int
    fb_campaign: int
    sent_at: datetime

    def delivery(self, name: str, campaign_id: int | None = None) -> Delivery:
        db.session.expire_all()
        return db.session.scalar(
            select(Delivery)
            .join(Contact, Contact.id == Delivery.contact_id)
            .where(Delivery.campaign_id == (campaign_id or self.wa_campaign), Contact.first_name == name)
        )

    def contact(self, name: str) -> Contact:
        db.session.expire_all()
        return db.session.scalar(select(Contact).where(Contact.first_name == name))

    def summary(self, campaign_id: int | None = None) -> dict:
        db.session.expire_all()
        return campaigns.summary(db.session.get(Campaign, campaign_id or self.wa_campaign))


def _make_shop(name: str = "Shop", slug: str = "shop") -> Shop:
    with all_tenants(db.session):
        row = Tenant(name=name, slug=slug)
        db.session.add(row)
        db.session.commit()
    with tenant(db.session, row.id):
        whatsapp = _page(ProviderKind.WHATSAPP, f"{name} WhatsApp")
        messenger = _page(ProviderKind.MESSENGER, f"{name} Messenger")
        for first_name, phone in PEOPLE.items():
            contact = Contact(first_name=first_name, phone=phone)
            if first_name in PSIDS:
                contact.channel_ids.append(
                    ContactChannelId(page_id=messenger.id, external_id=PSIDS[first_name])
                )
            db.session.add(contact)
        db.session.commit()
        wa_campaign, fb_campaign = _started(whatsapp, "Spring sale"), _started(messenger, "Spring chat")
        sent_at = utcnow().replace(microsecond=0) - timedelta(minutes=1)
        deliveries = db.session.scalars(select(Delivery).where(Delivery.tenant_id == row.id))
        for delivery in deliveries:  # what dispatch writes for an accepted send
            first_name = db.session.get(Contact, delivery.contact_id).first_name.lower()
            delivery.state = DeliveryState.SENT
            delivery.attempts = 1
            delivery.sent_at = sent_at
            prefix = "wamid" if delivery.campaign_id == wa_campaign.id else "m"
            delivery.provider_message_id = f"{prefix}.{slug}.{first_name}"
        db.session.commit()
        return Shop(row.id, whatsapp.id, messenger.id, wa_campaign.id, fb_campaign.id, sent_at)


@pytest.fixture
def shop(app):
    with app.app_context():
        made = _make_shop()
        with tenant(db.session, made.tenant_id):
            yield made


def callback(page_id: int, kind: ProviderKind, payload: dict) -> None:
    """A signed callback as the web endpoint stores it, then the worker's actor run on it."""
    event = WebhookEvent(page_id=page_id, kind=kind, body=json.dumps(payload))
    db.session.add(event)
    db.session.commit()
    process_webhook_event(event.id)


def _epoch(at: datetime) -> str:
    return str(int(at.timestamp()))


def wa_status(delivery: Delivery, status: str, at: datetime, **extra) -> dict:
    return {
        "id": delivery.provider_message_id,
        "status": status,
        "timestamp": _epoch(at),
        "recipient_id": delivery.address.lstrip("+"),
        "biz_opaque_callback_data": str(delivery.id),
        **extra,
    }


def wa_message(name: str, text: str, at: datetime, mid: str) -> dict:
    return {
        "from": PEOPLE[name].lstrip("+"),
        "id": mid,
        "timestamp": _epoch(at),
        "type": "text",
        "text": {"body": text},
    }


def whatsapp(*, statuses: tuple = (), messages: tuple = ()) -> dict:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550100", "phone_number_id": "1055"},
    }
    if statuses:
        value["statuses"] = list(statuses)
    if messages:
        value["messages"] = list(messages)
        value["contacts"] = [{"profile": {"name": "Someone"}, "wa_id": m["from"]} for m in messages]
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "waba-1", "changes": [{"field": "messages", "value": value}]}],
    }


def messenger(*items: dict) -> dict:
    return {"object": "page", "entry": [{"id": "777", "time": 1717689100000, "messaging": list(items)}]}


def fb_item(psid: str, **body) -> dict:
    return {"sender": {"id": psid}, "recipient": {"id": "777"}, **body}


def millis(at: datetime) -> int:
    return int(at.timestamp() * 1000)


# --------------------------------------------------------------------------- delivered, read, failed


def activity(campaign_id: int) -> dict[str, int]:
    """The campaign's daily activity summed over days: what the charts and the usage page count."""
    names = ("sent", "delivered", "read", "failed", "replied")
    totals = db.session.execute(
        select(*(func.coalesce(func.sum(getattr(DailyActivity, n)), 0) for n in names)).where(
            DailyActivity.campaign_id == campaign_id
        )
    ).one()
    return dict(zip(names, totals, strict=True))


def test_delivered_then_read_moves_the_delivery_forward(shop):
    ana = shop.delivery("Ana")
    delivered_at, read_at = shop.sent_at + timedelta(seconds=5), shop.sent_at + timedelta(seconds=30)

    callback(
        shop.whatsapp, ProviderKind.WHATSAPP, whatsapp(statuses=(wa_status(ana, "delivered", delivered_at),))
    )
    ana = shop.delivery("Ana")
    assert (ana.state, ana.delivered_at, ana.read_at) == (DeliveryState.DELIVERED, delivered_at, None)

    callback(shop.whatsapp, ProviderKind.WHATSAPP, whatsapp(statuses=(wa_status(ana, "read", read_at),)))
    ana = shop.delivery("Ana")
    assert (ana.state, ana.delivered_at, ana.read_at) == (DeliveryState.READ, delivered_at, read_at)
    assert db.session.scalar(select(func.count()).where(Receipt.applied_at.is_(None))) == 0
    summary = shop.summary()
    assert (summary["sent"], summary["delivered"], summary["read"]) == (4, 1, 1)
    assert activity(shop.wa_campaign) == {"sent": 0, "delivered": 1, "read": 1, "failed": 0, "replied": 0}


def test_a_read_that_arrives_first_implies_delivery(shop):
    bruno = shop.delivery("Bruno")
    delivered_at, read_at = shop.sent_at + timedelta(seconds=5), shop.sent_at + timedelta(seconds=30)

    callback(shop.whatsapp, ProviderKind.WHATSAPP, whatsapp(statuses=(wa_status(bruno, "read", read_at),)))
    bruno = shop.delivery("Bruno")
    assert (bruno.state, bruno.read_at) == (DeliveryState.READ, read_at)
    assert bruno.delivered_at is not None and bruno.delivered_at <= read_at

    callback(
        shop.whatsapp,
        ProviderKind.WHATSAPP,
        whatsapp(statuses=(wa_status(bruno, "delivered", delivered_at),)),
    )
    late = shop.delivery("Bruno")
    assert (late.state, late.read_at) == (DeliveryState.READ, read_at)  # a late "delivered" never goes back
    assert late.delivered_at is not None and late.delivered_at <= read_at
    assert shop.summary()["delivered"] == 1 and shop.summary()["read"] == 1
    # the read counted the delivery it implied, once; the late "delivered" counted nothing more
    assert activity(shop.wa_campaign) == {"sent": 0, "delivered": 1, "read": 1, "failed": 0, "replied": 0}


def test_a_receipt_for_an_unknown_delivery_counts_it_as_sent_and_delivered(shop):
    carla = shop.delivery("Carla")
    carla.state = DeliveryState.UNKNOWN
    db.session.commit()
    callback(
        shop.whatsapp,
        ProviderKind.WHATSAPP,
        whatsapp(statuses=(wa_status(carla, "delivered", shop.sent_at + timedelta(seconds=4)),)),
    )
    assert shop.delivery("Carla").state is DeliveryState.DELIVERED
    assert activity(shop.wa_campaign) == {"sent": 1, "delivered": 1, "read": 0, "failed": 0, "replied": 0}


def test_a_repeated_callback_changes_nothing_twice(shop):
    carla = shop.delivery("Carla")
    first = whatsapp(
        statuses=(
            wa_status(carla, "delivered", shop.sent_at + timedelta(seconds=5)),
            wa_status(carla, "read", shop.sent_at + timedelta(seconds=9)),
        )
    )
    callback(shop.whatsapp, ProviderKind.WHATSAPP, first)
    after_first = shop.delivery("Carla")
    seen = (after_first.state, after_first.delivered_at, after_first.read_at)

    callback(shop.whatsapp, ProviderKind.WHATSAPP, first)  # Meta retries a callback it thinks was lost
    later = whatsapp(  # the same statuses again, stamped later
        statuses=(
            wa_status(carla, "delivered", shop.sent_at + timedelta(seconds=50)),
            wa_status(carla, "read", shop.sent_at + timedelta(seconds=55)),
        )
    )
    callback(shop.whatsapp, ProviderKind.WHATSAPP, later)

    again = shop.delivery("Carla")
    assert (again.state, again.delivered_at, again.read_at) == seen
    assert seen[0] is DeliveryState.READ
    assert db.session.scalar(select(func.count()).select_from(Receipt)) == 2
    assert shop.summary()["read"] == 1


def test_a_receipt_for_a_delivery_still_in_flight_is_applied_once_it_is_sent(shop):
    dan = shop.delivery("Dan")
    dan.state, dan.provider_message_id, dan.sent_at = DeliveryState.IN_FLIGHT, None, None  # being sent
    db.session.commit()
    now = utcnow().replace(microsecond=0)
    status = {**wa_status(dan, "delivered", now), "id": "wamid.shop.dan-new"}

    callback(shop.whatsapp, ProviderKind.WHATSAPP, whatsapp(statuses=(status,)))

    waiting = db.session.scalar(select(Receipt).where(Receipt.provider_message_id == "wamid.shop.dan-new"))
    assert waiting is not None and waiting.applied_at is None
    assert shop.delivery("Dan").state is DeliveryState.IN_FLIGHT
    assert apply_receipts() == 0  # retried: still in flight

    dan = shop.delivery("Dan")  # the send's outcome is written
    dan.state, dan.provider_message_id, dan.sent_at = DeliveryState.SENT, "wamid.shop.dan-new", now
    db.session.commit()
    assert apply_receipts() == 1

    dan = shop.delivery("Dan")
    assert (dan.state, dan.delivered_at) == (DeliveryState.DELIVERED, now)
    assert apply_receipts() == 0


def test_a_messenger_receipt_before_the_message_id_is_written_waits_for_it(shop):
    ana = shop.delivery("Ana", shop.fb_campaign)
    ana.state, ana.provider_message_id, ana.sent_at = DeliveryState.IN_FLIGHT, None, None
    db.session.commit()
    now = utcnow().replace(microsecond=0)

    callback(
        shop.messenger,
        ProviderKind.MESSENGER,
        messenger(fb_item("PSID-ANA", delivery={"mids": ["m_ana_1"], "watermark": millis(now)})),
    )
    assert shop.delivery("Ana", shop.fb_campaign).state is DeliveryState.IN_FLIGHT

    ana = shop.delivery("Ana", shop.fb_campaign)
    ana.state, ana.provider_message_id, ana.sent_at = DeliveryState.SENT, "m_ana_1", now
    db.session.commit()
    assert apply_receipts() == 1
    assert shop.delivery("Ana", shop.fb_campaign).state is DeliveryState.DELIVERED


def test_a_failed_receipt_marks_the_delivery_failed_with_the_providers_code(shop):
    dan = shop.delivery("Dan")
    failed = wa_status(
        dan,
        "failed",
        shop.sent_at + timedelta(seconds=3),
        errors=[{"code": 131026, "title": "Message undeliverable"}],
    )

    callback(shop.whatsapp, ProviderKind.WHATSAPP, whatsapp(statuses=(failed,)))

    dan = shop.delivery("Dan")
    assert (dan.state, dan.error_code) == (DeliveryState.FAILED, "131026")
    assert dan.error_text == "the provider reported: Message undeliverable"
    assert dan.retryable is False  # 131026: undeliverable to this person, sending again cannot help
    summary = shop.summary()
    assert (summary["failed"], summary["sent"], summary["failure_rate"]) == (1, 3, 0.25)
    assert activity(shop.wa_campaign)["failed"] == 1


def test_a_failed_receipt_whose_code_says_try_later_is_worth_resending(shop):
    carla = shop.delivery("Carla")
    failed = wa_status(
        carla,
        "failed",
        shop.sent_at + timedelta(seconds=3),
        errors=[{"code": 131000, "title": "Something went wrong"}],
    )
    callback(shop.whatsapp, ProviderKind.WHATSAPP, whatsapp(statuses=(failed,)))
    carla = shop.delivery("Carla")
    assert (carla.state, carla.error_code, carla.retryable) == (DeliveryState.FAILED, "131000", True)


def test_messenger_delivery_and_read_watermarks(shop):
    delivered, read = shop.sent_at + timedelta(seconds=2), shop.sent_at + timedelta(seconds=20)
    callback(
        shop.messenger,
        ProviderKind.MESSENGER,
        messenger(
            fb_item("PSID-ANA", delivery={"mids": ["m.shop.ana"], "watermark": millis(delivered)}),
            fb_item("PSID-BRUNO", delivery={"mids": ["m.shop.bruno"], "watermark": millis(delivered)}),
            fb_item("PSID-ANA", read={"watermark": millis(read)}),
            fb_item("PSID-BRUNO", read={"watermark": millis(shop.sent_at - timedelta(seconds=1))}),
        ),
    )

    ana, bruno = shop.delivery("Ana", shop.fb_campaign), shop.delivery("Bruno", shop.fb_campaign)
    assert (ana.state, ana.delivered_at, ana.read_at) == (DeliveryState.READ, delivered, read)
    assert (bruno.state, bruno.read_at) == (DeliveryState.DELIVERED, None)  # read only what came before
    assert shop.delivery("Ana").state is DeliveryState.SENT  # the WhatsApp campaign is another page
    assert activity(shop.fb_campaign) == {"sent": 0, "delivered": 2, "read": 1, "failed": 0, "replied": 0}


def test_a_reference_is_only_taken_from_the_page_that_sent_it(shop):
    other = _page(ProviderKind.WHATSAPP, "Second number")
    db.session.commit()
    ana = shop.delivery("Ana")
    stray = {**wa_status(ana, "read", shop.sent_at + timedelta(seconds=5)), "id": "wamid.elsewhere"}

    callback(other.id, ProviderKind.WHATSAPP, whatsapp(statuses=(stray,)))

    assert shop.delivery("Ana").state is DeliveryState.SENT


def test_a_reference_that_is_not_a_delivery_id_does_not_block_the_others(shop):
    """A tenant's own server reporting on "²" (a digit to str.isdigit, not to int) or a 30-digit id."""
    hook = apply_form(
        Page(kind=ProviderKind.WEBHOOK),
        name="Shop server",
        base_url="https://hooks.example/crier",
        send_rate=10,
        daily_cap=None,
        credentials={"signing_secret": "hook-signing-secret"},
        settings={},
    )
    db.session.add(hook)
    db.session.commit()
    campaign = _started(hook, "Server sale")
    ana = shop.delivery("Ana", campaign.id)
    ana.state, ana.sent_at, ana.provider_message_id = DeliveryState.SENT, shop.sent_at, f"webhook-{ana.id}"
    db.session.commit()
    events = [
        {"delivery": "²", "status": "delivered"},
        {"delivery": "9" * 30, "status": "delivered"},
        {"delivery": str(ana.id), "status": "delivered"},
    ]

    callback(hook.id, ProviderKind.WEBHOOK, {"events": events})

    assert shop.delivery("Ana", campaign.id).state is DeliveryState.DELIVERED
    assert apply_receipts() == 0  # the two strays wait for their hour, harmlessly


# --------------------------------------------------------------------------- replies and STOP


def test_replies_count_and_stop_opts_the_person_out(shop):
    at = shop.sent_at + timedelta(seconds=40)
    statuses = tuple(wa_status(shop.delivery(name), "delivered", at) for name in PEOPLE)
    callback(shop.whatsapp, ProviderKind.WHATSAPP, whatsapp(statuses=statuses))

    callback(
        shop.whatsapp,
        ProviderKind.WHATSAPP,
        whatsapp(
            messages=(
                wa_message("Ana", "Thanks! See you Friday", at + timedelta(minutes=1), "wamid.in.1"),
                wa_message("Bruno", "Stop.", at + timedelta(minutes=2), "wamid.in.2"),
                wa_message("Carla", "unsubscribe", at + timedelta(minutes=3), "wamid.in.3"),
            )
        ),
    )

    assert shop.delivery("Ana").replied_at == at + timedelta(minutes=1)
    assert shop.delivery("Bruno").replied_at == at + timedelta(minutes=2)
    assert shop.delivery("Dan").replied_at is None
    ana, bruno, carla = shop.contact("Ana"), shop.contact("Bruno"), shop.contact("Carla")
    assert ana.opted_out is False
    assert (bruno.opted_out, bruno.opted_out_at) == (True, at + timedelta(minutes=2))
    assert bruno.opted_out_source == "replied 'Stop.' on Shop WhatsApp"
    assert carla.opted_out is True and "unsubscribe" in carla.opted_out_source
    summary = shop.summary()
    assert (summary["replied"], summary["delivered"], summary["reply_rate"]) == (3, 4, 0.75)
    assert activity(shop.wa_campaign)["replied"] == 3
    replies = db.session.scalars(select(InboundMessage).order_by(InboundMessage.received_at)).all()
    assert [(r.campaign_id, r.delivery_id) for r in replies] == [
        (shop.wa_campaign, shop.delivery(name).id) for name in ("Ana", "Bruno", "Carla")
    ]

    next_campaign = Campaign(
        name="Next",
        page_id=shop.whatsapp,
        body="Hi {{first_name}}",
        audience={"all": True, "lists": [], "segments": []},
    )
    assert count_audience(next_campaign).excluded["opted_out"] == 2  # Bruno and Carla get nothing more


def test_a_stop_sent_twice_or_from_a_stranger_changes_nothing_more(shop):
    first = shop.sent_at + timedelta(minutes=1)
    callback(
        shop.whatsapp,
        ProviderKind.WHATSAPP,
        whatsapp(messages=(wa_message("Dan", "STOP", first, "wamid.in.9"),)),
    )
    stamped = shop.contact("Dan").opted_out_at
    stranger = {**wa_message("Dan", "STOP", first, "wamid.in.10"), "from": "4915100000000"}
    callback(
        shop.whatsapp,
        ProviderKind.WHATSAPP,
        whatsapp(messages=(wa_message("Dan", "stop", first + timedelta(minutes=5), "wamid.in.11"), stranger)),
    )

    assert shop.contact("Dan").opted_out_at == stamped == first
    assert db.session.scalar(select(func.count()).where(Contact.opted_out.is_(True))) == 1
    assert db.session.scalar(select(func.count()).where(InboundMessage.applied_at.is_(None))) == 0


def test_a_messenger_stop_opts_out_the_contact_known_by_that_page(shop):
    callback(
        shop.messenger,
        ProviderKind.MESSENGER,
        messenger(
            fb_item(
                "PSID-ANA",
                timestamp=millis(shop.sent_at + timedelta(minutes=1)),
                message={"mid": "m_in_1", "text": "STOP"},
            )
        ),
    )

    ana = shop.contact("Ana")
    assert ana.opted_out is True and ana.opted_out_source == "replied 'STOP' on Shop Messenger"
    assert shop.delivery("Ana", shop.fb_campaign).replied_at is not None
    assert shop.delivery("Ana").replied_at is None  # the WhatsApp message was not the one answered


def test_a_reply_counts_on_the_message_it_answered_even_when_read_late(shop):
    """A reply read after a newer campaign went out (the callback waited) still counts on the older one."""
    reply_at = shop.sent_at + timedelta(minutes=1)
    event = WebhookEvent(
        page_id=shop.whatsapp,
        kind=ProviderKind.WHATSAPP,
        body=json.dumps(whatsapp(messages=(wa_message("Ana", "Yes please", reply_at, "wamid.in.5"),))),
    )
    db.session.add(event)
    newer = _started(db.session.get(Page, shop.whatsapp), "Summer sale")
    later = shop.delivery("Ana", newer.id)
    later.state, later.sent_at, later.provider_message_id = (
        DeliveryState.SENT,
        reply_at + timedelta(minutes=5),
        "w2",
    )
    db.session.commit()

    process_webhook_event(event.id)

    assert shop.delivery("Ana").replied_at == reply_at
    assert shop.delivery("Ana", newer.id).replied_at is None


# --------------------------------------------------------------------------- the rates


def test_summary_rates_follow_the_receipts(shop):
    at = shop.sent_at + timedelta(seconds=10)
    ana, bruno, _, dan = (shop.delivery(name) for name in PEOPLE)
    callback(
        shop.whatsapp,
        ProviderKind.WHATSAPP,
        whatsapp(
            statuses=(
                wa_status(ana, "delivered", at),
                wa_status(ana, "read", at + timedelta(seconds=5)),
                wa_status(bruno, "delivered", at),
                wa_status(
                    dan, "failed", at, errors=[{"code": 131049, "title": "Not delivered to maintain health"}]
                ),
            )
        ),
    )
    callback(
        shop.whatsapp,
        ProviderKind.WHATSAPP,
        whatsapp(
            messages=(
                wa_message("Bruno", "What sizes do you have?", at + timedelta(minutes=1), "wamid.in.7"),
            )
        ),
    )

    summary = shop.summary()
    assert {key: summary[key] for key in ("total", "sent", "delivered", "read", "replied", "failed")} == {
        "total": 4,
        "sent": 3,  # Ana, Bruno and Carla were accepted
        "delivered": 2,
        "read": 1,
        "replied": 1,
        "failed": 1,
    }
    assert summary["delivery_rate"] == round(2 / 3, 4)
    assert summary["read_rate"] == 0.5
    assert summary["reply_rate"] == 0.5
    assert summary["failure_rate"] == 0.25
    assert shop.delivery("Carla").state is DeliveryState.SENT


# --------------------------------------------------------------------------- tenants


def test_callbacks_the_sweeper_processes_stay_inside_their_tenant(app, shop):
    """The sweeper works inside all_tenants; a STOP it processes late must not reach another business."""
    other = _make_shop("Other", "other")  # the same four phone numbers, another business
    with tenant(db.session, other.tenant_id):
        db.session.add(Contact(first_name="Eve", phone="+5511961000005"))  # only Other knows Eve
        db.session.commit()
    stop_at = shop.sent_at + timedelta(minutes=1)
    eve = {**wa_message("Ana", "STOP", stop_at, "wamid.in.9"), "from": "5511961000005"}
    event = WebhookEvent(
        page_id=shop.whatsapp,
        kind=ProviderKind.WHATSAPP,
        body=json.dumps(whatsapp(messages=(wa_message("Ana", "STOP", stop_at, "wamid.in.8"), eve))),
        received_at=utcnow() - timedelta(minutes=5),  # the broker lost it: only the sweeper will see it
    )
    ana = shop.delivery("Ana")
    with tenant(db.session, other.tenant_id):
        other_ana = shop.delivery("Ana", other.wa_campaign)
    status = wa_status(other_ana, "read", stop_at)  # another business's delivery id, on this page
    receipt_event = WebhookEvent(
        page_id=shop.whatsapp,
        kind=ProviderKind.WHATSAPP,
        body=json.dumps(whatsapp(statuses=({**status, "id": "wamid.stray"},))),
        received_at=utcnow() - timedelta(minutes=5),
    )
    db.session.add_all([event, receipt_event])
    db.session.commit()

    from tasks.sweeper import sweep

    with tenant(db.session, None):
        done = sweep()

    assert done["callbacks"] == 2
    with all_tenants(db.session):
        db.session.expire_all()
        opted_out = db.session.execute(
            select(Tenant.name, Contact.first_name)
            .join(Tenant, Tenant.id == Contact.tenant_id)
            .where(Contact.opted_out.is_(True))
        ).all()
        assert opted_out == [("Shop", "Ana")]
        assert db.session.get(Delivery, other_ana.id).state is DeliveryState.SENT
        assert db.session.get(Delivery, ana.id).replied_at == stop_at
