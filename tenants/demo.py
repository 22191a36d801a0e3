"""The demo workspace `make run` creates: one page of every kind, all pointing at the local sandbox."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import delete, insert, select, text

from tenants.accounts import find_user, hash_password, sign_up
from tenants.campaigns import Campaign, apply_campaign_form
from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.pages import Page, PageState, ProviderKind, apply_form
from tenants.scoping import tenant
from tenants.templates import Template

DEMO_EMAIL = "demo@crier.example"
DEMO_WORKSPACE = "Crier Demo"
PROVIDER_DEMO_RATE = 50  # messages per second, well under every real provider's limit


def demo_pages(sandbox_url: str, smtp_port: int) -> list[tuple[ProviderKind, str, str, dict, dict]]:
    """(kind, name, base URL, credentials, settings) for each demo page."""
    sandbox = sandbox_url.rstrip("/")
    host = urlsplit(sandbox).hostname

    def secret() -> str:
        return secrets.token_urlsafe(24)

    return [
        (
            ProviderKind.WHATSAPP,
            "Demo WhatsApp",
            sandbox,
            {"access_token": secret(), "app_secret": secret(), "verify_token": secret()},
            {"phone_number_id": "100000000000001", "waba_id": "200000000000001"},
        ),
        (
            ProviderKind.MESSENGER,
            "Demo Messenger",
            sandbox,
            {"page_access_token": secret(), "app_secret": secret(), "verify_token": secret()},
            {"page_id": "300000000000001"},
        ),
        (
            ProviderKind.EVOLUTION,
            "Demo Evolution",
            sandbox,
            {"api_key": secret(), "webhook_token": secret()},
            {"instance": "demo"},
        ),
        (
            ProviderKind.SMTP,
            "Demo email",
            f"smtp://{host}:{smtp_port}",
            {"username": "demo", "password": secret()},
            {"from_address": "news@crier.example", "from_name": "Crier Demo", "starttls": "false"},
        ),
        (ProviderKind.WEBHOOK, "Demo webhook", f"{sandbox}/webhook/demo", {"signing_secret": secret()}, {}),
    ]


def ensure_demo(sandbox_url: str, smtp_port: int) -> tuple[Tenant, str | None]:
    """Create the demo workspace once; returns it and the owner's password when it was just created."""
    existing = find_user(DEMO_EMAIL)
    if existing is not None:
        return db.session.scalar(select(Tenant).where(Tenant.name == DEMO_WORKSPACE)), None
    password = secrets.token_urlsafe(12)
    owner, workspace = sign_up(DEMO_EMAIL, password, DEMO_WORKSPACE)
    owner.email_verified_at = utcnow()  # the demo sends to its whole list: its owner counts as verified
    with tenant(db.session, workspace.id):
        for kind, name, base_url, credentials, settings in demo_pages(sandbox_url, smtp_port):
            page = apply_form(
                Page(kind=kind),
                name=name,
                base_url=base_url,
                send_rate=PROVIDER_DEMO_RATE,
                daily_cap=None,
                credentials=credentials,
                settings=settings,
            )
            db.session.add(page)
        db.session.commit()
    return workspace, password


DEMO_LIST = "Demo contacts"
DEMO_CONTACTS = 1000  # what `make run` puts in the demo list
FIRST_NAMES = ("Ana", "Bruno", "Chidi", "Dana", "Emeka", "Fatima", "Giulia", "Hiro", "Ines", "Jonas")
CITIES = ("Lisbon", "Lagos", "Recife", "Osaka", "Berlin")


@dataclass(frozen=True)
class DemoSetup:
    tenant_id: int
    slug: str
    email: str
    password: str | None
    page_id: int
    list_id: int
    contacts: int


def demo_phone(number: int) -> str:
    """A distinct UK mobile number per contact, never ending in the sandbox's "refuse" suffix 0000."""
    return f"+447{number:08d}1"


def refresh_demo(
    sandbox_url: str,
    smtp_port: int,
    contacts: int,
    kind: ProviderKind = ProviderKind.WHATSAPP,
    page_url: str | None = None,
    rate: float | None = None,
    new_password: bool = True,
) -> DemoSetup:
    """Make the demo tenant ready to send: its login, one page of ``kind`` at the sandbox (or
    ``page_url``) sending at ``rate``, and a list of ``contacts`` generated contacts."""
    workspace, password = ensure_demo(sandbox_url, smtp_port)
    user = find_user(DEMO_EMAIL)
    if password is None and new_password:
        password = secrets.token_urlsafe(12)
        user.password_hash = hash_password(password)
    workspace.max_recipients_per_campaign = max(workspace.max_recipients_per_campaign, contacts)
    workspace.daily_message_quota = max(workspace.daily_message_quota, 10 * contacts, 1_000_000)
    if rate:
        workspace.max_send_rate = max(workspace.max_send_rate, int(rate))
    db.session.commit()
    with tenant(db.session, workspace.id):
        spec = next(p for p in demo_pages(sandbox_url, smtp_port) if p[0] is kind)
        page = db.session.scalar(select(Page).where(Page.kind == kind, Page.name == spec[1]))
        if page is None:
            page = Page(kind=kind)
            db.session.add(page)
        apply_form(
            page,
            name=spec[1],
            base_url=page_url or spec[2],
            send_rate=rate or page.send_rate or PROVIDER_DEMO_RATE,
            daily_cap=None,
            credentials=spec[3] if page.id is None else {},
            settings=spec[4],
        )
        page.state, page.disabled_reason, page.throttled_until = PageState.ACTIVE, None, None
        db.session.commit()
        contact_list = _demo_list(contacts)
        setup = DemoSetup(
            workspace.id, workspace.slug, DEMO_EMAIL, password, page.id, contact_list.id, contacts
        )
        db.session.commit()
    return setup


def _demo_list(count: int) -> ContactList:
    """The demo list holding exactly ``count`` generated contacts (regenerated when the size changes)."""
    contact_list = db.session.scalar(select(ContactList).where(ContactList.name == DEMO_LIST))
    if contact_list is None:
        contact_list = ContactList(name=DEMO_LIST)
        db.session.add(contact_list)
        db.session.flush()
    members = db.session.scalars(
        select(ContactListMember.contact_id).where(ContactListMember.list_id == contact_list.id)
    ).all()
    if len(members) == count:
        return contact_list
    tenant_id = contact_list.tenant_id
    db.session.execute(delete(Contact).where(Contact.email.like("demo-%@example.com")))
    for start in range(0, count, 5000):
        rows = [
            {
                "tenant_id": tenant_id,
                "phone": demo_phone(n),
                "email": f"demo-{n}@example.com",
                "first_name": FIRST_NAMES[n % len(FIRST_NAMES)],
                "last_name": f"Demo{n}",
                "custom_fields": {"city": CITIES[n % len(CITIES)]},
                "opted_out": False,
            }
            for n in range(start, min(count, start + 5000))
        ]
        ids = db.session.scalars(insert(Contact).returning(Contact.id), rows).all()
        db.session.execute(
            insert(ContactListMember),
            [{"tenant_id": tenant_id, "list_id": contact_list.id, "contact_id": i} for i in ids],
        )
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ANALYZE contacts, contact_list_members"))  # fresh rows, fresh plans
    return contact_list


FIRST_CAMPAIGN = "Welcome to the demo"
FIRST_CAMPAIGN_LIST = "First campaign"
FIRST_CAMPAIGN_RECIPIENTS = 200
WELCOME_TEMPLATE = "Welcome"
WELCOME_TEXT = "Hi {{first_name}}, welcome to the Crier demo! Greetings from {{city}}. Reply STOP to opt out."


def first_campaign_draft(page: Page) -> Campaign | None:
    """The demo's first campaign, a draft through ``page`` with the "Welcome" template to the first
    recipients of the demo list; None once the workspace has any campaign (made once)."""
    if db.session.scalar(select(Campaign.id).limit(1)) is not None:
        return None
    template = db.session.scalar(select(Template).where(Template.name == WELCOME_TEMPLATE))
    if template is None:
        template = Template(name=WELCOME_TEMPLATE, channel=page.kind, body=WELCOME_TEXT)
        db.session.add(template)
    first = db.session.scalar(select(ContactList).where(ContactList.name == FIRST_CAMPAIGN_LIST))
    if first is None:
        first = ContactList(name=FIRST_CAMPAIGN_LIST)
        db.session.add(first)
        db.session.flush()
        demo = db.session.scalar(select(ContactList.id).where(ContactList.name == DEMO_LIST))
        chosen = db.session.scalars(
            select(ContactListMember.contact_id)
            .where(ContactListMember.list_id == demo)
            .order_by(ContactListMember.contact_id)
            .limit(FIRST_CAMPAIGN_RECIPIENTS)
        ).all()
        db.session.execute(
            insert(ContactListMember),
            [{"tenant_id": first.tenant_id, "list_id": first.id, "contact_id": i} for i in chosen],
        )
    db.session.flush()
    campaign = apply_campaign_form(
        Campaign(),
        {
            "name": FIRST_CAMPAIGN,
            "page_id": page.id,
            "template_id": template.id,
            "list_ids": [first.id],
            "schedule": "manual",
        },
        db.session.get(Tenant, page.tenant_id),
    )
    db.session.add(campaign)
    db.session.commit()
    return campaign
