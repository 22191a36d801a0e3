"""One row of every tenant-owned model, for tests that need "an object of tenant A".

The isolation walk requires a factory here for every model that mixes in
``TenantScoped``: a new model without one fails that test with a message naming it.
Factories run inside the tenant's scope, in the order below (later ones may use
earlier rows through ``made``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from tenants.accounts import hash_password
from tenants.api_tokens import ApiToken, issue
from tenants.campaigns import Campaign, Delivery, DeliveryAttempt, DeliveryState
from tenants.contacts import (
    Contact,
    ContactChannelId,
    ContactImport,
    ContactList,
    ContactListMember,
    ImportRejection,
    Segment,
)
from tenants.crypto import seal
from tenants.db import db, utcnow
from tenants.event_hooks import DeliveryStatus, EventDelivery, EventSubscription
from tenants.events import InboundMessage, Receipt, ReceiptStatus, WebhookEvent
from tenants.models import Invitation, Membership, Role, Tenant, User
from tenants.pages import Page, ProviderKind, apply_form
from tenants.plans import Plan
from tenants.scoping import all_tenants, tenant
from tenants.templates import Template

Factory = Callable[[Tenant, dict], object]


def make_membership(tenant: Tenant, made: dict) -> Membership:
    user = User(
        email=f"member-{tenant.id}@crier.example",
        password_hash=hash_password("a member password"),
        email_verified_at=utcnow(),
    )
    membership = Membership(tenant_id=tenant.id, user=user, role=Role.MEMBER)
    db.session.add(membership)
    return membership


def make_invitation(tenant: Tenant, made: dict) -> Invitation:
    row = Invitation(
        email=f"invited-{tenant.id}@crier.example",
        role=Role.MEMBER,
        token_digest=hashlib.sha256(f"token of {tenant.slug}".encode()).hexdigest(),
        expires_at=utcnow() + timedelta(days=7),
    )
    db.session.add(row)
    return row


def make_page(tenant: Tenant, made: dict, kind: ProviderKind = ProviderKind.WHATSAPP, **settings) -> Page:
    page = apply_form(
        Page(kind=kind),
        name=f"{tenant.name} WhatsApp",
        base_url="http://127.0.0.1:9/",
        send_rate=80,
        daily_cap=None,
        credentials={
            "access_token": f"token-of-{tenant.slug}-1234",
            "app_secret": f"secret-of-{tenant.slug}",
            "verify_token": f"verify-{tenant.slug}",
        },
        settings={"phone_number_id": f"1000{tenant.id}", **settings},
    )
    db.session.add(page)
    return page


def make_contact(tenant: Tenant, made: dict) -> Contact:
    contact = Contact(
        phone=f"+55119612{tenant.id:05d}", email=f"person-{tenant.id}@crier.example", first_name="Ana"
    )
    db.session.add(contact)
    return contact


def make_channel_id(tenant: Tenant, made: dict) -> ContactChannelId:
    row = ContactChannelId(
        contact_id=made[Contact].id, page_id=made[Page].id, external_id=f"psid-{tenant.id}"
    )
    db.session.add(row)
    return row


def make_webhook_event(tenant: Tenant, made: dict) -> WebhookEvent:
    event = WebhookEvent(page_id=made[Page].id, kind=ProviderKind.WHATSAPP, body="{}")
    db.session.add(event)
    return event


def make_receipt(tenant: Tenant, made: dict) -> Receipt:
    receipt = Receipt(
        page_id=made[Page].id,
        status=ReceiptStatus.DELIVERED,
        provider_message_id=f"wamid.{tenant.id}",
        occurred_at=utcnow(),
    )
    db.session.add(receipt)
    return receipt


def make_inbound_message(tenant: Tenant, made: dict) -> InboundMessage:
    message = InboundMessage(page_id=made[Page].id, sender="5511961200000", text="hi", received_at=utcnow())
    db.session.add(message)
    return message


def make_contact_list(tenant: Tenant, made: dict) -> ContactList:
    row = ContactList(name="Customers")
    db.session.add(row)
    return row


def make_list_member(tenant: Tenant, made: dict) -> ContactListMember:
    row = ContactListMember(list_id=made[ContactList].id, contact_id=made[Contact].id)
    db.session.add(row)
    return row


def make_segment(tenant: Tenant, made: dict) -> Segment:
    row = Segment(name="Berlin", conditions=[{"field": "custom.city", "op": "equals", "value": "Berlin"}])
    db.session.add(row)
    return row


def make_import(tenant: Tenant, made: dict) -> ContactImport:
    row = ContactImport(
        filename="people.csv", stored_path="/nonexistent/people.csv", list_id=made[ContactList].id
    )
    db.session.add(row)
    return row


def make_rejection(tenant: Tenant, made: dict) -> ImportRejection:
    row = ImportRejection(import_id=made[ContactImport].id, line=4, reason="phone: too short", raw="12,Bad")
    db.session.add(row)
    return row


def make_template(tenant: Tenant, made: dict) -> Template:
    row = Template(name="Welcome", channel=ProviderKind.WHATSAPP, body="Hi {{firstName}}")
    db.session.add(row)
    return row


def make_campaign(tenant: Tenant, made: dict) -> Campaign:
    row = Campaign(
        name="Spring sale",
        page_id=made[Page].id,
        template_id=made[Template].id,
        audience={"all": False, "lists": [made[ContactList].id], "segments": []},
    )
    db.session.add(row)
    return row


def make_delivery_attempt(tenant: Tenant, made: dict) -> DeliveryAttempt:
    row = DeliveryAttempt(
        campaign_id=made[Campaign].id,
        delivery_id=made[Delivery].id,
        state=DeliveryState.UNKNOWN,
        attempts=1,
        error_code="lease_expired",
    )
    db.session.add(row)
    return row


def make_delivery(tenant: Tenant, made: dict) -> Delivery:
    row = Delivery(
        campaign_id=made[Campaign].id,
        contact_id=made[Contact].id,
        address=made[Contact].phone,
        state=DeliveryState.FAILED,
        error_code="131026",
        error_text="message undeliverable",
    )
    db.session.add(row)
    return row


def make_api_token(tenant: Tenant, made: dict) -> ApiToken:
    token, _secret = issue(Role.OWNER, None, f"CRM of {tenant.name}", ["read"])
    return token


def make_event_subscription(tenant: Tenant, made: dict) -> EventSubscription:
    row = EventSubscription(
        url=f"https://crm.{tenant.slug}.example/crier-events",
        events=["campaign.completed", "delivery.failed"],
        secret_sealed=seal({"signing_secret": f"whsec_of_{tenant.slug}"}),
    )
    db.session.add(row)
    return row


def make_event_delivery(tenant: Tenant, made: dict) -> EventDelivery:
    row = EventDelivery(
        subscription_id=made[EventSubscription].id,
        event_type="delivery.failed",
        event_id=f"evt_of_{tenant.slug}",
        payload={"delivery": {"id": made[Delivery].id}},
        status=DeliveryStatus.FAILED,
        attempts=6,
        last_status=500,
        last_error="gave up after 6 attempts: HTTP 500",
    )
    db.session.add(row)
    return row


FACTORIES: dict[type, Factory] = {
    Membership: make_membership,
    ApiToken: make_api_token,
    Invitation: make_invitation,
    Page: make_page,
    Contact: make_contact,
    ContactChannelId: make_channel_id,
    WebhookEvent: make_webhook_event,
    Receipt: make_receipt,
    InboundMessage: make_inbound_message,
    ContactList: make_contact_list,
    ContactListMember: make_list_member,
    Segment: make_segment,
    ContactImport: make_import,
    ImportRejection: make_rejection,
    Template: make_template,
    Campaign: make_campaign,
    Delivery: make_delivery,
    DeliveryAttempt: make_delivery_attempt,
    EventSubscription: make_event_subscription,
    EventDelivery: make_event_delivery,
}


def make_plan(name: str = "Pro") -> Plan:
    """A platform-level object (no tenant owns it): only platform admins reach its URLs."""
    plan = Plan(
        name=name,
        daily_message_quota=50_000,
        max_send_rate=200,
        max_pages=20,
        max_recipients_per_campaign=200_000,
        max_contacts=200_000,
    )
    db.session.add(plan)
    return plan


def tenant_named(name: str) -> Tenant:
    return db.session.scalar(select(Tenant).where(Tenant.name == name))


def sandbox_whatsapp_page(app, workspace: str, phone_number_id: str = "109876543210001") -> tuple[int, int]:
    """A WhatsApp page on the sandbox in the workspace named ``workspace`` (committed): (tenant, page)."""
    with app.app_context(), all_tenants(db.session):
        tenant_id = tenant_named(workspace).id
    with app.app_context(), tenant(db.session, tenant_id):
        page = apply_form(
            Page(kind=ProviderKind.WHATSAPP),
            name="Support line",
            base_url=app.config["SANDBOX_URL"],
            send_rate=80,
            daily_cap=None,
            credentials={"access_token": "token-123456", "app_secret": "secret", "verify_token": "verify"},
            settings={"phone_number_id": phone_number_id},
        )
        db.session.add(page)
        db.session.commit()
        return tenant_id, page.id


def api_token_for(app, tenant_id: int, scopes: tuple[str, ...] = ("admin",), name: str = "CRM") -> str:
    """A new API token of the tenant (committed); returns its secret."""
    with app.app_context(), tenant(db.session, tenant_id):
        _token, secret = issue(Role.OWNER, None, name, scopes)
        db.session.commit()
        return secret
