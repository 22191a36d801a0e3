"""Media messages: a template's media reaches each provider as media (or as a link), or is refused
with its reason at save and at campaign start; it is never dropped.

The adapters send to the real sandbox (``sandbox`` fixture), which validates media as the providers
do and lists each message's ``media_url`` and ``media_type`` in its ledger; the end-to-end test runs
campaigns through a real worker.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import replace
from html import unescape

import httpx
import pytest
from sqlalchemy import select

from tasks.providers.base import Outcome, OutgoingMessage
from tasks.providers.smtp import SmtpAdapter
from tasks.sandbox import SandboxProcess
from tenants.campaigns import Campaign, CampaignError, apply_campaign_form, start
from tenants.contacts import Contact, ContactChannelId, ContactListMember
from tenants.db import db
from tenants.models import Tenant
from tenants.pages import Page, ProviderKind, apply_form
from tenants.scoping import all_tenants, tenant
from tenants.templates import Template
from tests.engine import EngineRun
from tests.test_adapters_sandbox import (
    EVOLUTION,
    MESSENGER,
    SMTP,
    TOKEN,
    WEBHOOK,
    WHATSAPP,
    WHATSAPP_TEMPLATE,
    Provider,
    ledger,
    send_one,
)

PHOTO = "https://cdn.example.com/spring/menu.jpg"
LEAFLET = "https://cdn.example.com/files/Spring%20Menu.pdf"
CLIP = "https://cdn.example.com/clips/spring.mp4"
JINGLE = "https://cdn.example.com/sounds/jingle.ogg"


@pytest.fixture
def control(sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        yield client


def _with_media(provider: Provider, url: str, media_type: str | None, text: str) -> OutgoingMessage:
    return replace(provider.message("dlv-media", text=text), media_url=url, media_type=media_type)


# --------------------------------------------------------------------------- adapters, over the wire

SENT_AS_MEDIA = [
    # provider, media URL, media type given, text; then what the ledger records: body, media type
    pytest.param(
        WHATSAPP, PHOTO, "image", "Our spring menu", "Our spring menu", "image", id="whatsapp-image"
    ),
    pytest.param(WHATSAPP, LEAFLET, "document", "", "", "document", id="whatsapp-document-alone"),
    pytest.param(WHATSAPP, JINGLE, "audio", "", "", "audio", id="whatsapp-audio"),
    pytest.param(
        WHATSAPP_TEMPLATE,
        CLIP,
        "video",
        "",
        "[template order_update/pt_BR] Ana | #1042",
        "video",
        id="whatsapp-template-header",
    ),
    pytest.param(MESSENGER, PHOTO, "image", "", "", "image", id="messenger-image"),
    pytest.param(MESSENGER, LEAFLET, "document", "", "", "file", id="messenger-document-as-file"),
    pytest.param(EVOLUTION, CLIP, "video", "Watch this", "Watch this", "video", id="evolution-video"),
    pytest.param(EVOLUTION, JINGLE, "audio", "", "", "audio", id="evolution-audio-note"),
    pytest.param(WEBHOOK, LEAFLET, "document", "Spring menu", "Spring menu", "document", id="webhook"),
]


@pytest.mark.parametrize(("provider", "url", "given", "text", "body", "recorded"), SENT_AS_MEDIA)
def test_media_reaches_the_provider_as_media(sandbox, control, provider, url, given, text, body, recorded):
    result = send_one(provider.connection(sandbox), _with_media(provider, url, given, text))

    assert result.outcome is Outcome.SENT, result
    [entry] = ledger(control)
    assert (entry["kind"], entry["recipient"]) == (provider.kind.value, provider.ledger_recipient)
    assert (entry["body"], entry["media_url"], entry["media_type"]) == (body, url, recorded)


def test_a_campaign_started_before_media_types_were_recorded_tells_the_type_by_the_url(sandbox, control):
    result = send_one(WHATSAPP.connection(sandbox), _with_media(WHATSAPP, PHOTO, None, "Hi Ana"))

    assert result.outcome is Outcome.SENT, result
    [entry] = ledger(control)
    assert (entry["media_url"], entry["media_type"]) == (PHOTO, "image")


def test_an_email_carries_the_media_as_a_link_in_both_parts(sandbox, control):
    connection = SMTP.connection(sandbox)
    message = _with_media(SMTP, LEAFLET, "document", "Hi Ana,\nhere is our menu.")

    result = send_one(connection, message)

    assert result.outcome is Outcome.SENT, result
    [entry] = ledger(control)
    assert entry["body"] == f"Your order\nHi Ana,\nhere is our menu.\n\n{LEAFLET}"
    mail = email.message_from_bytes(
        SmtpAdapter(connection).build(message).as_bytes(), policy=email.policy.SMTP
    )
    html = mail.get_body(preferencelist=("html",)).get_content()
    assert f'<a href="{LEAFLET}">{LEAFLET}</a>' in html and "here is our menu." in html


@pytest.mark.parametrize(
    ("provider", "url", "given", "why"),
    [
        (MESSENGER, PHOTO, "image", "Messenger cannot send text with an attachment in one message"),
        (WHATSAPP, JINGLE, "audio", "WhatsApp sends audio without a caption"),
        (EVOLUTION, JINGLE, "audio", "WhatsApp sends audio without a caption"),
    ],
    ids=["messenger-text-and-image", "whatsapp-audio-with-text", "evolution-audio-with-text"],
)
def test_text_the_channel_cannot_carry_with_the_media_is_refused_not_dropped(
    sandbox, control, provider, url, given, why
):
    result = send_one(provider.connection(sandbox), _with_media(provider, url, given, "Hi Ana"))

    assert (result.outcome, result.code) == (Outcome.PERMANENT, "unsupported_media")
    assert why in (result.detail or "")
    assert ledger(control) == []


@pytest.mark.parametrize(
    ("path", "headers", "body", "refusal"),
    [
        (
            "/v21.0/106540352242922/messages",
            {"Authorization": f"Bearer {TOKEN}"},
            {"messaging_product": "whatsapp", "to": "5511961234567", "type": "image", "image": {}},
            "(#100) The parameter image['link'] or image['id'] is required.",
        ),
        (
            "/v21.0/106540352242922/messages",
            {"Authorization": f"Bearer {TOKEN}"},
            {
                "messaging_product": "whatsapp",
                "to": "5511961234567",
                "type": "audio",
                "audio": {"link": JINGLE, "caption": "Listen"},
            },
            "(#100) Param audio['caption'] is not supported for audio messages.",
        ),
        (
            "/v21.0/me/messages",
            {"Authorization": f"Bearer {TOKEN}"},
            {
                "recipient": {"id": "24021984"},
                "messaging_type": "UPDATE",
                "message": {"text": "Hi", "attachment": {"type": "image", "payload": {"url": PHOTO}}},
            },
            "(#100) Only one of message[text] or message[attachment] may be set",
        ),
        (
            "/message/sendMedia/acme",
            {"apikey": "evolution-key"},
            {"number": "5511961234567", "mediatype": "image", "media": "menu.jpg"},
            "Owned media must be a url or base64",
        ),
    ],
    ids=[
        "whatsapp-no-link",
        "whatsapp-audio-caption",
        "messenger-text-and-attachment",
        "evolution-not-a-url",
    ],
)
def test_the_sandbox_refuses_media_as_the_provider_does(sandbox, control, path, headers, body, refusal):
    answer = control.post(path, json=body, headers=headers)

    assert answer.status_code == 400
    assert refusal in answer.text
    assert ledger(control) == []


# --------------------------------------------------------------------------- the template editor


def _saved(app) -> Template | None:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(select(Template))


def test_the_template_form_saves_and_shows_the_media_type(app, auth, client):
    auth.signup()

    saved = auth.post(
        "/templates/new?channel=whatsapp",
        {
            "name": "Menu",
            "body": "Our menu, {{firstName}}",
            "media_url": LEAFLET.replace(".pdf", ""),
            "media_type": "document",
        },
    )

    assert saved.status_code == 302, saved.get_data(as_text=True)
    template = _saved(app)
    assert (template.media_url, template.media_type) == (LEAFLET.replace(".pdf", ""), "document")
    page = client.get(f"/templates/{template.id}").get_data(as_text=True)
    assert '<option value="document" selected>Document</option>' in page
    preview = auth.post(
        "/templates/preview",
        {"channel": "whatsapp", "body": "Our menu", "media_url": LEAFLET, "media_type": "document"},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    assert "<strong>Document:</strong>" in preview


def test_without_a_chosen_type_the_urls_extension_tells_it(app, auth):
    auth.signup()

    saved = auth.post("/templates/new?channel=messenger", {"name": "Photo", "body": "", "media_url": PHOTO})

    assert saved.status_code == 302, saved.get_data(as_text=True)
    template = _saved(app)
    assert (template.media_type, template.media_kind) == (None, "image")


REFUSED_AT_SAVE = [
    (
        "whatsapp",
        {"body": "Hi", "media_url": "http://cdn.example.com/a.jpg"},
        "must be a full https:// address",
    ),
    ("whatsapp", {"body": "Hi", "media_url": "https://cdn.example.com/menu"}, "Choose the media type"),
    ("messenger", {"body": "Hi {{firstName}}", "media_url": PHOTO}, "Messenger cannot send text with an"),
    ("whatsapp", {"body": "Listen", "media_url": JINGLE}, "WhatsApp sends audio without a caption"),
    ("evolution", {"body": "Listen", "media_url": JINGLE}, "WhatsApp (Evolution) sends audio without a"),
    (
        "whatsapp",
        {"whatsapp_template": "promo", "whatsapp_language": "en", "media_url": JINGLE},
        "header can be an image, a video or a document, not audio",
    ),
    ("webhook", {"body": "Hi", "media_url": PHOTO, "media_type": "sticker"}, "Choose the media type among"),
]


@pytest.mark.parametrize(("channel", "fields", "reason"), REFUSED_AT_SAVE)
def test_media_the_channel_cannot_send_is_refused_at_save_with_its_reason(app, auth, channel, fields, reason):
    auth.signup()

    response = auth.post(f"/templates/new?channel={channel}", {"name": "Refused", **fields})

    assert response.status_code == 400
    assert reason in unescape(response.get_data(as_text=True))
    assert _saved(app) is None


def test_a_caption_longer_than_whatsapp_allows_is_reported_in_the_preview(auth):
    auth.signup()

    html = auth.post(
        "/templates/preview",
        {"channel": "whatsapp", "body": "{{ 'x' * 1100 }}", "media_url": PHOTO},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)

    assert "WhatsApp allows 1,024 as the caption of a media." in html


# --------------------------------------------------------------------------- campaign start


def test_a_campaign_start_refuses_a_template_that_cannot_carry_its_media(app):
    """A template stored before media was checked (text and an image on Messenger) is not started."""
    with app.app_context():
        with all_tenants(db.session):
            shop = Tenant(name="Shop", slug="shop")
            db.session.add(shop)
            db.session.commit()
        with tenant(db.session, shop.id):
            page = apply_form(
                Page(kind=ProviderKind.MESSENGER),
                name="Shop Messenger",
                base_url="https://graph.example",
                send_rate=10,
                daily_cap=None,
                credentials={"page_access_token": "fb-token-1234", "app_secret": "s", "verify_token": "v"},
                settings={"page_id": "777"},
            )
            contact = Contact(first_name="Ana")
            template = Template(name="Legacy", channel=ProviderKind.MESSENGER, body="Hi", media_url=PHOTO)
            db.session.add_all([page, contact, template])
            db.session.flush()
            contact.channel_ids.append(ContactChannelId(page_id=page.id, external_id="PSID-ANA"))
            campaign = apply_campaign_form(
                Campaign(),
                {"name": "Sale", "page_id": page.id, "template_id": template.id, "audience_all": "1"},
                db.session.get(Tenant, shop.id),
            )
            db.session.add(campaign)
            db.session.commit()

            with pytest.raises(CampaignError, match="Messenger cannot send text with an attachment"):
                start(campaign)


# --------------------------------------------------------------------------- campaigns, end to end


def _page(kind: ProviderKind, sandbox: SandboxProcess) -> Page:
    """A page of ``kind`` on the sandbox."""
    base_url, credentials, settings = {
        ProviderKind.MESSENGER: (
            sandbox.url,
            {"page_access_token": "media-page-token", "app_secret": "s", "verify_token": "v"},
            {"page_id": "777"},
        ),
        ProviderKind.EVOLUTION: (
            sandbox.url,
            {"api_key": "media-evolution-key", "webhook_token": "t"},
            {"instance": "media"},
        ),
        ProviderKind.WEBHOOK: (f"{sandbox.url}/webhook/media", {"signing_secret": "media-secret"}, {}),
        ProviderKind.SMTP: (
            f"smtp://127.0.0.1:{sandbox.smtp_port}",
            {"username": "news@media.example", "password": "smtp-secret"},
            {"from_address": "news@media.example", "starttls": "false"},
        ),
    }[kind]
    page = apply_form(
        Page(kind=kind),
        name=f"Media {kind.value}",
        base_url=base_url,
        send_rate=100,
        daily_cap=None,
        credentials=credentials,
        settings=settings,
    )
    db.session.add(page)
    db.session.flush()
    return page


CAMPAIGN_MEDIA = {
    # kind: (template fields, the ledger's (body, media type) for Ana)
    ProviderKind.WHATSAPP: ({"body": "", "media_url": PHOTO}, ("", "image")),
    ProviderKind.EVOLUTION: ({"body": "A clip for {{first_name}}", "media_url": CLIP}, (None, "video")),
    ProviderKind.MESSENGER: ({"body": "", "media_url": LEAFLET}, ("", "file")),
    ProviderKind.WEBHOOK: ({"body": "Hi {{first_name}}", "media_url": JINGLE}, (None, "audio")),
    ProviderKind.SMTP: (
        {"subject": "Spring", "body": "Hi {{first_name}}", "media_url": LEAFLET},
        (None, None),
    ),
}


@pytest.fixture
def engine(sandbox) -> Iterator[EngineRun]:
    run = EngineRun(sandbox)
    run.configure(callbacks=False)
    yield run
    run.close()


def test_media_campaigns_put_their_media_in_the_ledger_on_every_channel(engine):
    tenant_id, whatsapp_id, list_id = engine.setup(contacts=3)
    with tenant(db.session, tenant_id):
        pages = {ProviderKind.WHATSAPP: db.session.get(Page, whatsapp_id)}
        for kind in (ProviderKind.EVOLUTION, ProviderKind.MESSENGER, ProviderKind.WEBHOOK, ProviderKind.SMTP):
            pages[kind] = _page(kind, engine.sandbox)
        members = db.session.scalars(
            select(Contact)
            .join(ContactListMember, ContactListMember.contact_id == Contact.id)
            .where(ContactListMember.list_id == list_id)
        ).all()
        for contact in members:
            contact.channel_ids.append(
                ContactChannelId(page_id=pages[ProviderKind.MESSENGER].id, external_id=f"PSID-{contact.id}")
            )
        campaign_ids = {}
        for kind, (fields, _) in CAMPAIGN_MEDIA.items():
            template = Template(name=f"Spring {kind.value}", channel=kind, whatsapp_parameters=[], **fields)
            db.session.add(template)
            db.session.flush()
            campaign = apply_campaign_form(
                Campaign(),
                {
                    "name": f"Spring {kind.value}",
                    "page_id": pages[kind].id,
                    "template_id": template.id,
                    "list_ids": [list_id],
                },
                db.session.get(Tenant, tenant_id),
            )
            db.session.add(campaign)
            db.session.flush()
            campaign_ids[kind] = campaign.id
        first_names = {contact.first_name for contact in members}
        db.session.commit()
    engine.worker()
    for campaign_id in campaign_ids.values():
        engine.start(tenant_id, campaign_id)

    for kind, campaign_id in campaign_ids.items():
        done = engine.wait(tenant_id, campaign_id)
        assert (kind, done["sent"], done["failed"]) == (kind, 3, 0)

    entries = engine.ledger()
    assert len(entries) == 15
    for kind, (fields, (body, media_type)) in CAMPAIGN_MEDIA.items():
        sent = [entry for entry in entries if entry["kind"] == kind.value]
        assert len(sent) == 3, kind
        for entry in sent:
            if kind is ProviderKind.SMTP:  # a link in the mail
                assert entry["body"].endswith(f"\n\n{LEAFLET}") and entry["body"].startswith("Spring\nHi ")
                continue
            assert (entry["media_url"], entry["media_type"]) == (fields["media_url"], media_type), kind
            if body is not None:
                assert entry["body"] == body, kind
            else:  # the text, rendered for each contact, as the caption or beside the media
                assert entry["body"].startswith(("A clip for ", "Hi ")), entry
                assert entry["body"].split()[-1] in first_names, entry
