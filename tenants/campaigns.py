"""Campaigns and their deliveries: the states, the actions allowed in each, and the set-based start.

A campaign moves through ``draft`` → (``scheduled``) → ``running`` ⇄ ``paused`` → ``completed``,
or ``cancelled``/``failed``. Each action names the states it is valid from; anything else is
refused with :class:`CampaignError` whose text is shown to the user. Sending itself lives in
``tasks.dispatch``; this module only changes rows.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    distinct,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from tenants.contacts import Contact, ContactChannelId, ContactList, ContactListMember, Segment
from tenants.db import JSONDocument, TimestampMixin, db, str_enum, utcnow
from tenants.models import Tenant
from tenants.pages import Page, PageState, ProviderKind, has_receipts
from tenants.scoping import TenantScoped, current_tenant_id
from tenants.segments import segment_filter
from tenants.templates import Template
from tenants.templating import (
    BUILTIN_VARIABLES,
    CONTACT_FIELDS,
    compile_template,
    contact_variables,
    variables_used,
    variables_with_default,
)

ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite only autoincrements INTEGER PRIMARY KEY


RENDER_COLUMNS = (
    Contact.id,
    Contact.first_name,
    Contact.last_name,
    Contact.phone,
    Contact.email,
    Contact.company,
    Contact.custom_fields,
)
"""The contact columns a message is rendered from (``contact_variables``)."""


class CampaignState(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class PauseReason(enum.StrEnum):
    USER = "user"
    QUOTA = "quota"  # the tenant's daily quota is used up
    PAGE_CAP = "page_cap"  # the page's own daily cap is reached
    PAGE_THROTTLED = "page_throttled"
    PAGE_FAILING = "page_failing"
    ERROR_THRESHOLD = "error_threshold"
    SUSPENDED = "suspended"  # the platform suspended the workspace


PAUSE_REASON_TEXT = {
    PauseReason.USER: "paused by a user",
    PauseReason.QUOTA: "the workspace's daily quota is used up",
    PauseReason.PAGE_CAP: "the page's daily cap is reached",
    PauseReason.PAGE_THROTTLED: "the provider is throttling the page",
    PauseReason.PAGE_FAILING: "the page is failing",
    PauseReason.ERROR_THRESHOLD: "too many recent sends failed",
    PauseReason.SUSPENDED: "the workspace is suspended",
}
NOT_STARTED = (CampaignState.DRAFT, CampaignState.SCHEDULED)  # editable; nothing sent yet
DAILY_LIMIT_PAUSES = (PauseReason.QUOTA, PauseReason.PAGE_CAP)
"""Pauses that end by themselves when the quota day rolls over (or the limit is raised)."""


class Schedule(enum.StrEnum):
    NOW = "now"
    AT = "at"
    MANUAL = "manual"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the worker stopped while sending: it may or may not have arrived
    CANCELLED = "cancelled"


ACCEPTED_STATES = (DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.READ)
EXCLUSION_TEXT = {
    "opted_out": "opted out",
    "no_address": "no address for this channel",
    "missing_variable": "missing a variable the message uses",
    "duplicate": "same address as another recipient",
}


class Campaign(TenantScoped, TimestampMixin, db.Model):
    """One message sent to an audience through one page."""

    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_state", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    page_id: Mapped[int | None] = mapped_column(ForeignKey("pages.id", ondelete="SET NULL"), index=True)
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id", ondelete="SET NULL"))
    subject: Mapped[str | None] = mapped_column(String(300))  # used when there is no template
    body: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)  # the snapshot taken at start
    audience: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)  # all / lists / segments
    schedule: Mapped[Schedule] = mapped_column(
        str_enum(Schedule, "campaign_schedule"), default=Schedule.MANUAL
    )
    scheduled_at: Mapped[datetime | None]
    send_rate: Mapped[float | None] = mapped_column(Float)  # messages/s, below the page's
    max_attempts: Mapped[int] = mapped_column(default=3)
    error_threshold: Mapped[float] = mapped_column(Float, default=0.5)  # recent failure share that pauses
    state: Mapped[CampaignState] = mapped_column(
        str_enum(CampaignState, "campaign_state"), default=CampaignState.DRAFT
    )
    paused_reason: Mapped[PauseReason | None] = mapped_column(str_enum(PauseReason, "pause_reason"))
    state_detail: Mapped[str | None] = mapped_column(String(500))
    paused_at: Mapped[datetime | None]
    paused_by_id: Mapped[int | None]  # the user who paused it (no key: see migration 0007)
    resume_at: Mapped[datetime | None]  # a quota or throttle pause ends by itself then
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    total: Mapped[int] = mapped_column(default=0)  # deliveries created
    exclusions: Mapped[dict[str, int]] = mapped_column(JSONDocument, default=dict)
    dispatch_generation: Mapped[int] = mapped_column(default=0)
    heartbeat_at: Mapped[datetime | None]  # last time a dispatch slice ran

    @property
    def pause_text(self) -> str:
        return PAUSE_REASON_TEXT.get(self.paused_reason, "") if self.paused_reason else ""


PAST_SENDING = "state NOT IN ('pending', 'in_flight')"
"""Deliveries that have left the queue (sent, failed, unknown, cancelled…): the predicate of the contact
index, which a query must state in these very words (``past_sending()``) for PostgreSQL to use it."""


def past_sending() -> Any:
    """:data:`PAST_SENDING` as a condition on the deliveries table (spelled out for the planner)."""
    return text(f"deliveries.{PAST_SENDING}")


class Delivery(TenantScoped, db.Model):
    """One recipient of one campaign and what became of their message.

    The busiest table, written set-based at start (one row per recipient) and twice per send, so
    it carries only the indexes dispatch, the sweeper and receipts read, and no per-row foreign
    keys: on PostgreSQL a foreign key costs a lookup per inserted row (docs/decisions.md).
    Instead, triggers of migration 0006 check once per statement that the rows'
    ``(tenant_id, campaign_id)`` is a campaign of that tenant, refuse moving a delivery to another
    campaign, and delete a campaign's deliveries with it (so with its tenant too). ``contact_id``
    is what the row was made for; a deleted contact's id reads as no contact (as NULL did).
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        # in claim order (due_at, then id): a claim reads its batch off the index instead of sorting
        # every pending row of the campaign (docs/decisions.md)
        Index("ix_deliveries_due", "campaign_id", "state", "due_at", "id"),
        # only the few rows in flight: the sweeper's expired leases, a tenant's sends under way
        Index(
            "ix_deliveries_in_flight",
            "lease_until",
            postgresql_where=text("state = 'in_flight'"),
            sqlite_where=text("state = 'in_flight'"),
        ),
        Index(
            "ix_deliveries_provider_message",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
            sqlite_where=text("provider_message_id IS NOT NULL"),
        ),
        # a contact's message history: only rows past sending, so a start's INSERT (all pending) adds
        # nothing to it (docs/decisions.md)
        Index(
            "ix_deliveries_contact",
            "contact_id",
            postgresql_where=text(PAST_SENDING),
            sqlite_where=text(PAST_SENDING),
        ),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer, nullable=False)  # not TenantScoped's indexed key
    campaign_id: Mapped[int] = mapped_column(Integer)
    contact_id: Mapped[int | None] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(254))
    state: Mapped[DeliveryState] = mapped_column(
        str_enum(DeliveryState, "delivery_state"), default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    due_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_text: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    replied_at: Mapped[datetime | None]
    retryable: Mapped[bool] = mapped_column(default=False)  # a failure worth resending (retries ran out)


class DeliveryAttempt(TenantScoped, db.Model):
    """An earlier round of a delivery, kept when it is resent: what became of it then."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (Index("ix_delivery_attempts_delivery", "delivery_id"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    delivery_id: Mapped[int] = mapped_column(ID)  # goes with its campaign (deliveries have no keys)
    state: Mapped[DeliveryState] = mapped_column(str_enum(DeliveryState, "delivery_state"))
    attempts: Mapped[int]
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_text: Mapped[str | None] = mapped_column(String(500))
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    sent_at: Mapped[datetime | None]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)  # when it was resent


class CampaignError(ValueError):
    """An action or change that cannot be made now; the message is for the user."""


# --------------------------------------------------------------------------- editing


def tenant_zone(tenant: Tenant) -> ZoneInfo:
    try:
        return ZoneInfo(tenant.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _ids(values: Any) -> list[int]:
    if isinstance(values, str | int):
        values = [values]
    found = []
    for value in values or []:
        if isinstance(value, str) and not value.strip():
            continue
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise CampaignError(f"{value!r} is not an id.") from None
        found.append(number if 0 < number < 2**31 else 0)  # 0 is nobody's id: "does not exist"
    return sorted(set(found))


def apply_campaign_form(campaign: Campaign, fields: Mapping[str, Any], tenant: Tenant) -> Campaign:
    """Validate the editor's fields and apply them to a draft or scheduled campaign."""
    if campaign.state is None:
        campaign.state = CampaignState.DRAFT
    if campaign.state not in NOT_STARTED:
        raise CampaignError(f"A {campaign.state.value} campaign cannot be edited.")
    name = str(fields.get("name") or "").strip()
    if not name:
        raise CampaignError("Give the campaign a name.")
    page_ids = _ids(fields.get("page_id"))
    if not page_ids or db.session.get(Page, page_ids[0]) is None:
        raise CampaignError("Choose the page to send through.")
    template_ids = _ids(fields.get("template_id") or [])
    template = db.session.get(Template, template_ids[0]) if template_ids else None
    if template_ids and template is None:
        raise CampaignError("That template does not exist.")
    page = db.session.get(Page, page_ids[0])
    if template is not None and template.channel is not page.kind:
        raise CampaignError(
            f"The template {template.name} is for {template.channel.value}; the page sends {page.kind.value}."
        )
    body = str(fields.get("body") or "")
    if not template_ids and not body.strip():
        raise CampaignError("Choose a template or write the message.")
    audience = {
        "all": str(fields.get("audience_all") or "") in ("1", "on", "true", "yes"),
        "lists": _ids(fields.get("list_ids")),
        "segments": _ids(fields.get("segment_ids")),
    }
    if audience["lists"] and len(
        db.session.scalars(select(ContactList.id).where(ContactList.id.in_(audience["lists"]))).all()
    ) != len(audience["lists"]):
        raise CampaignError("One of the lists does not exist.")
    if audience["segments"] and len(
        db.session.scalars(select(Segment.id).where(Segment.id.in_(audience["segments"]))).all()
    ) != len(audience["segments"]):
        raise CampaignError("One of the segments does not exist.")
    if not (audience["all"] or audience["lists"] or audience["segments"]):
        raise CampaignError("Choose who receives it: all contacts, lists or segments.")
    try:
        schedule = Schedule(str(fields.get("schedule") or Schedule.MANUAL.value))
    except ValueError:
        raise CampaignError("Choose when to send: now, at a time, or manually.") from None
    scheduled_at = None
    if schedule is Schedule.AT:
        scheduled_at = parse_local_time(str(fields.get("scheduled_at") or ""), tenant)
        if scheduled_at < utcnow() - timedelta(minutes=1):
            raise CampaignError("That time has passed: choose a later one, or send now.")
    rate = str(fields.get("send_rate") or "").strip()
    send_rate = None
    if rate:
        try:
            send_rate = float(rate)
        except ValueError:
            raise CampaignError("The rate must be a number of messages per second.") from None
        if not 0 < send_rate <= 100_000:
            raise CampaignError("The rate must be above 0 messages per second.")
    campaign.name = name[:200]
    campaign.page_id = page_ids[0]
    campaign.template_id = template_ids[0] if template_ids else None
    campaign.body = body
    campaign.subject = str(fields.get("subject") or "").strip()[:300] or None
    campaign.audience = audience
    campaign.schedule = schedule
    campaign.scheduled_at = scheduled_at
    campaign.send_rate = send_rate
    if campaign.state is CampaignState.SCHEDULED and schedule is not Schedule.AT:
        campaign.state = CampaignState.DRAFT  # no longer waiting for a time
    return campaign


class CampaignChangedMeanwhile(CampaignError):
    """An edit refused because the campaign started since it was read (nothing was written)."""


def still_editable(campaign_id: int) -> bool:
    """Lock the campaign's row until commit and say whether it is still a draft or scheduled (a start
    that happened since it was read wins, and an edit is not written over it)."""
    with db.session.no_autoflush:  # the edit must not be written before the row is locked and checked
        state = db.session.scalar(select(Campaign.state).where(Campaign.id == campaign_id).with_for_update())
    return state in NOT_STARTED


def save_campaign(campaign: Campaign, fields: Mapping[str, Any], tenant: Tenant, *, creating: bool) -> bool:
    """The editor's save, for the browser and the API alike: apply ``fields`` (see
    :func:`apply_campaign_form`), refuse a time already passed, and commit the new campaign or the edit
    of one not started yet. True when it is to start now (sent "now", or "at a time" and not yet
    scheduled): the caller starts it through ``tasks.lifecycle.start_campaign``.

    Rolls back and raises :class:`CampaignChangedMeanwhile` when the campaign started since it was
    read, :class:`CampaignError` for what the user must fix.
    """
    try:
        apply_campaign_form(campaign, fields, tenant)
        if campaign.schedule is Schedule.AT and campaign.scheduled_at and campaign.scheduled_at <= utcnow():
            raise CampaignError("That time has passed: choose a later one, or send now.")
        if creating:
            db.session.add(campaign)
        elif not still_editable(campaign.id):
            raise CampaignChangedMeanwhile("The campaign started meanwhile; your changes were not saved.")
    except CampaignError:
        db.session.rollback()
        raise
    if campaign.state is CampaignState.SCHEDULED and campaign.schedule is Schedule.MANUAL:
        campaign.state = CampaignState.DRAFT  # no time any more: it waits for someone to start it
    db.session.commit()
    return campaign.schedule is not Schedule.MANUAL and campaign.state is CampaignState.DRAFT


def parse_local_time(value: str, tenant: Tenant) -> datetime:
    """A ``YYYY-MM-DDTHH:MM`` wall-clock time in the tenant's timezone, as UTC."""
    try:
        local = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CampaignError("Give the date and time to send, like 2026-12-01 09:30.") from None
    if local.tzinfo is None:
        local = local.replace(tzinfo=tenant_zone(tenant))
    return local.astimezone(ZoneInfo("UTC"))


# --------------------------------------------------------------------------- the message


def message_of(campaign: Campaign) -> dict[str, Any]:
    """What the campaign says: its snapshot once started, else its template or its own text."""
    if campaign.message is not None:
        return campaign.message
    template = db.session.get(Template, campaign.template_id) if campaign.template_id else None
    if template is not None:
        return {
            "channel": template.channel.value,
            "subject": template.subject,
            "body": template.body,
            "html_body": template.html_body,
            "media_url": template.media_url,
            "media_type": template.media_kind,
            "whatsapp_template": template.whatsapp_template,
            "whatsapp_language": template.whatsapp_language,
            "whatsapp_parameters": list(template.whatsapp_parameters or []),
        }
    return {"channel": None, "subject": campaign.subject, "body": campaign.body or ""}


@dataclass(frozen=True)
class MessageSource:
    """A snapshot dict seen as a template (for ``tenants.templating``)."""

    channel: ProviderKind | None
    subject: str | None
    body: str
    html_body: str | None
    media_url: str | None
    media_type: str | None  # image, document, video or audio (as sent: chosen, else told by the URL)
    whatsapp_template: str | None
    whatsapp_language: str | None
    whatsapp_parameters: list[str]

    @classmethod
    def of(cls, message: Mapping[str, Any]) -> MessageSource:
        channel = message.get("channel")
        return cls(
            channel=ProviderKind(channel) if channel else None,
            subject=message.get("subject"),
            body=message.get("body") or "",
            html_body=message.get("html_body"),
            media_url=message.get("media_url"),
            media_type=message.get("media_type"),
            whatsapp_template=message.get("whatsapp_template"),
            whatsapp_language=message.get("whatsapp_language"),
            whatsapp_parameters=list(message.get("whatsapp_parameters") or []),
        )


# --------------------------------------------------------------------------- the audience


def address_column(page: Page) -> Any:
    """The SQL expression for a contact's address on ``page``'s channel (NULL when it has none)."""
    if page.kind in (ProviderKind.WHATSAPP, ProviderKind.EVOLUTION):
        return func.nullif(Contact.phone, "")
    if page.kind is ProviderKind.SMTP:
        return func.nullif(Contact.email, "")
    if page.kind is ProviderKind.MESSENGER:
        return (
            select(ContactChannelId.external_id)
            .where(ContactChannelId.contact_id == Contact.id, ContactChannelId.page_id == page.id)
            .limit(1)
            .scalar_subquery()
        )
    return cast(Contact.id, String)


def audience_filter(audience: Mapping[str, Any], tenant: Tenant) -> Any:
    """Which of the tenant's contacts the audience holds (lists and segments are OR-ed)."""
    if audience.get("all"):
        return true()
    clauses = []
    list_ids = [int(i) for i in audience.get("lists") or []]
    if list_ids:
        clauses.append(
            exists().where(
                ContactListMember.contact_id == Contact.id,
                ContactListMember.list_id.in_(list_ids),
                ContactListMember.tenant_id == tenant.id,
            )
        )
    segment_ids = [int(i) for i in audience.get("segments") or []]
    if segment_ids:
        segments = db.session.scalars(select(Segment).where(Segment.id.in_(segment_ids))).all()
        for segment in segments:
            clauses.append(segment_filter(segment.conditions, segment.match, tenant_zone(tenant)))
    return or_(false(), *clauses)


_COLUMN_OF_VARIABLE: dict[str, tuple[Any, ...]] = {
    name: (getattr(Contact, column),) for column, names in CONTACT_FIELDS.items() for name in names
}
_COLUMN_OF_VARIABLE["name"] = (Contact.first_name, Contact.last_name)  # missing only when both are


# Every character ``str.strip()`` removes: a value of only these is blank to the SQL filter as it is
# when rendering (a plain ``trim`` removes spaces only, and a tab-only field would slip through).
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _present(column: Any) -> Any:
    return and_(column.is_not(None), func.trim(column, _WHITESPACE) != "")


def required_variables(message: Mapping[str, Any]) -> set[str]:
    source = MessageSource.of(message)
    return variables_used(source) - variables_with_default(source)


def _keys_giving(name: str, keys: Iterable[str]) -> list[str]:
    """The custom field keys a template reads as variable ``name`` (the key itself, or an alias of
    it such as ``"Home Town"`` for ``home_town``), asked of the renderer's own rules."""
    return [key for key in keys if name in contact_variables(SimpleNamespace(custom_fields={key: "x"}))]


def maybe_missing_filter(message: Mapping[str, Any], custom_keys: Iterable[str] | None = None) -> Any:
    """Contacts that may lack a variable the message needs (checked exactly by rendering them);
    None when the message needs no variable a contact could lack.

    A custom variable is looked for under its own key, and under every key in ``custom_keys`` (keys
    the contacts use) that the renderer reads as it; contacts that have it only under an alias not
    in ``custom_keys`` are suspects too.
    """
    clauses = []
    for name in sorted(required_variables(message)):
        columns = _COLUMN_OF_VARIABLE.get(name)
        if columns is not None:
            clauses.append(and_(*(~_present(c) for c in columns)))
        elif name not in BUILTIN_VARIABLES:
            keys = _keys_giving(name, dict.fromkeys([name, *(custom_keys or ())]))
            clauses.append(and_(true(), *(~_present(Contact.custom_fields[k].as_string()) for k in keys)))
    return or_(*clauses) if clauses else None


def _custom_keys(*where: Any) -> list[str]:
    """Every custom field key the contacts ``where`` selects use."""
    if db.session.get_bind().dialect.name == "postgresql":
        keys = select(func.jsonb_object_keys(Contact.custom_fields)).where(
            *where, func.jsonb_typeof(Contact.custom_fields) == "object"
        )
    else:
        each = func.json_each(Contact.custom_fields).table_valued("key")
        keys = select(each.c.key).select_from(Contact).join(each, true()).where(*where)
    return [key for key in db.session.scalars(keys.distinct()) if key is not None]


@dataclass(frozen=True)
class AudienceCount:
    """Who a campaign will reach and who it leaves out, and why."""

    matched: int
    recipients: int
    excluded: dict[str, int]


def _eligible(candidates) -> Any:
    return and_(candidates.c.opted_out.is_(False), candidates.c.address.is_not(None))


RENDER_WITHOUT_KEYS = 1_000  # suspects rendered as they are; above, the audience's custom keys are read


@dataclass(frozen=True)
class _Survey:
    """The audience with each contact's address and opt-out, and who of it is left out before dedupe."""

    candidates: Any  # subquery: contact_id, address, opted_out
    matched: int
    opted_out: int
    no_address: int
    missing: list[int]  # eligible contacts the message cannot be rendered for

    @property
    def eligible(self) -> int:
        return self.matched - self.opted_out - self.no_address

    def keep(self) -> Any:
        """Eligible and renderable: the rows recipients are chosen from (one per address)."""
        keep = _eligible(self.candidates)
        if self.missing:  # rendered into the SQL: any number of ids, no bind-parameter limit
            ids = bindparam("missing_ids", self.missing, expanding=True, literal_execute=True)
            keep = and_(keep, self.candidates.c.contact_id.not_in(ids))
        return keep


def _survey(audience: Mapping[str, Any], message: Mapping[str, Any], page: Page, tenant: Tenant) -> _Survey:
    """Count the audience, its opt-outs, missing addresses and suspects in one pass, then render the
    eligible contacts whose fields look incomplete to find who really lacks a variable."""
    address = address_column(page)
    in_audience = (Contact.tenant_id == tenant.id, audience_filter(audience, tenant))
    suspect = maybe_missing_filter(message)
    candidates = (
        select(
            Contact.id.label("contact_id"),
            address.label("address"),
            Contact.opted_out.label("opted_out"),
            (case((suspect, 1), else_=0) if suspect is not None else literal(0)).label("suspect"),
        )
        .where(*in_audience)
        .subquery("candidates")
    )
    c = candidates.c
    totals = db.session.execute(
        select(
            func.count(),
            func.sum(case((c.opted_out.is_(True), 1), else_=0)),
            func.sum(case((and_(c.opted_out.is_(False), c.address.is_(None)), 1), else_=0)),
            func.sum(case((_eligible(candidates), c.suspect), else_=0)),
        ).select_from(candidates)
    ).one()
    matched, suspects = totals[0] or 0, int(totals[3] or 0)
    missing = []
    if suspects:
        eligible_suspects = (*in_audience, Contact.opted_out.is_(False), address.is_not(None), suspect)
        if suspects > RENDER_WITHOUT_KEYS and suspects * 20 > matched:
            # Many look incomplete: most likely they have a custom variable under an alias
            # ("Home Town" for {{home_town}}). Reading their keys is cheaper than rendering them all.
            suspect = maybe_missing_filter(message, _custom_keys(*eligible_suspects))
        rows = select(*RENDER_COLUMNS).where(
            *in_audience, Contact.opted_out.is_(False), address.is_not(None), suspect
        )
        missing = _truly_missing(message, rows)
    return _Survey(candidates, matched, int(totals[1] or 0), int(totals[2] or 0), missing)


def count_audience(campaign: Campaign) -> AudienceCount:
    """The live count beside the editor: recipients and exclusions (missing variables found exactly
    by rendering the contacts whose fields look incomplete)."""
    page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
    tenant = db.session.get(Tenant, current_tenant_id(db.session))
    if page is None or tenant is None:
        return AudienceCount(0, 0, {})
    survey = _survey(campaign.audience or {}, message_of(campaign), page, tenant)
    addresses = db.session.scalar(
        select(func.count(distinct(survey.candidates.c.address)))
        .select_from(survey.candidates)
        .where(survey.keep())
    )
    excluded = {
        "opted_out": survey.opted_out,
        "no_address": survey.no_address,
        "missing_variable": len(survey.missing),
        "duplicate": survey.eligible - len(survey.missing) - (addresses or 0),
    }
    return AudienceCount(survey.matched, survey.matched - sum(excluded.values()), excluded)


def _truly_missing(message: Mapping[str, Any], suspects: Select) -> list[int]:
    """Of the contacts ``suspects`` selects (their id and fields), those the message cannot be
    rendered for. Reads plain rows in batches: no ORM objects for what may be the whole audience."""
    compiled = compile_template(MessageSource.of(message))
    rows = db.session.execute(suspects.execution_options(yield_per=5000))
    return [row.id for row in rows if compiled.render(contact_variables(row)).missing]


# --------------------------------------------------------------------------- actions

ACTIONS: dict[str, tuple[CampaignState, ...]] = {
    "edit": (CampaignState.DRAFT, CampaignState.SCHEDULED),
    "start": (CampaignState.DRAFT, CampaignState.SCHEDULED),
    "pause": (CampaignState.RUNNING,),
    "resume": (CampaignState.PAUSED,),
    "cancel": (CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED),
    "duplicate": tuple(CampaignState),
    "resend": (CampaignState.COMPLETED, CampaignState.PAUSED, CampaignState.CANCELLED),
    "test_send": tuple(CampaignState),
    "delete": (
        CampaignState.DRAFT,
        CampaignState.SCHEDULED,
        CampaignState.COMPLETED,
        CampaignState.CANCELLED,
        CampaignState.FAILED,
    ),
}


def allowed_actions(campaign: Campaign) -> list[str]:
    return [action for action, states in ACTIONS.items() if campaign.state in states]


def check_action(campaign: Campaign, action: str) -> None:
    if campaign.state not in ACTIONS[action]:
        allowed = ", ".join(s.value for s in ACTIONS[action])
        raise CampaignError(
            f"You cannot {action.replace('_', ' ')} a {campaign.state.value} campaign (only when {allowed})."
        )


def _transition(campaign: Campaign, action: str, **values: Any) -> bool:
    """Move the campaign if ``action`` still allows its state (race-safe); False if it moved meanwhile."""
    done = db.session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.state.in_(ACTIONS[action]))
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.flush()
    return bool(done)


def usable_page(campaign: Campaign) -> Page:
    page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
    if page is None:
        raise CampaignError("The campaign has no page: choose one.")
    if page.current_state() is PageState.DISABLED:
        raise CampaignError(f"The page {page.name} is disabled: {page.disabled_reason or 'no reason given'}.")
    return page


def start(campaign: Campaign, now: datetime | None = None, due_only: bool = False) -> bool:
    """Start or schedule a draft; True when it is now running (the caller launches dispatch).

    Creates the deliveries set-based and commits. Two simultaneous starts: one wins, the other
    is refused. ``due_only`` (the sweeper) starts only a campaign still scheduled for now or earlier.
    """
    check_action(campaign, "start")
    now = now or utcnow()
    if due_only and not (
        campaign.state is CampaignState.SCHEDULED and campaign.scheduled_at and campaign.scheduled_at <= now
    ):
        return False
    page = usable_page(campaign)
    tenant = db.session.get(Tenant, campaign.tenant_id)
    message = message_of(campaign)
    if not message.get("channel"):
        message = {**message, "channel": page.kind.value}  # the page's rules apply (an email needs a subject)
    source = MessageSource.of(message)
    if source.channel is not None and source.channel is not page.kind:
        raise CampaignError(f"The template is for {source.channel.value} but the page is {page.kind.value}.")
    problems = compile_template(source).problems
    if problems:
        raise CampaignError(f"The message has a problem: {problems[0]}")
    if (
        campaign.state is CampaignState.DRAFT
        and campaign.schedule is Schedule.AT
        and campaign.scheduled_at
        and campaign.scheduled_at > now
    ):
        if not _transition(campaign, "start", state=CampaignState.SCHEDULED, message=None):
            raise CampaignError("The campaign was started or changed meanwhile; reload the page.")
        db.session.commit()
        return False
    if not _transition(
        campaign,
        "start",
        state=CampaignState.RUNNING,
        message=message,
        started_at=now,
        paused_reason=None,
        state_detail=None,
        heartbeat_at=None,
    ):
        raise CampaignError("The campaign was started or changed meanwhile; reload the page.")
    db.session.refresh(campaign)
    try:
        created, excluded = _create_deliveries(campaign, page, tenant, now)
    except CampaignError:
        db.session.rollback()  # still a draft (or scheduled), without deliveries
        raise
    if created == 0:
        campaign.state = CampaignState.FAILED
        campaign.state_detail = "Nobody to send to: " + (
            ", ".join(f"{n} {EXCLUSION_TEXT[k]}" for k, n in excluded.items() if n) or "the audience is empty"
        )
        campaign.finished_at = now
    campaign.total = created
    campaign.exclusions = excluded
    db.session.commit()
    return campaign.state is CampaignState.RUNNING


def _create_deliveries(campaign: Campaign, page: Page, tenant: Tenant, now: datetime) -> tuple[int, dict]:
    """``INSERT … SELECT`` one pending delivery per eligible, distinct address; count who was left out."""
    survey = _survey(campaign.audience or {}, campaign.message or {}, page, tenant)
    c = survey.candidates.c
    limit = tenant.max_recipients_per_campaign
    if survey.eligible - len(survey.missing) > limit:  # refused before inserting them all
        recipients = db.session.scalar(
            select(func.count(distinct(c.address))).select_from(survey.candidates).where(survey.keep())
        )
        if recipients > limit:
            raise CampaignError(
                f"The audience has {recipients:,} recipients; your plan allows {limit:,} per campaign."
            )
    ranked = (
        select(
            c.contact_id,
            c.address,
            func.row_number().over(partition_by=c.address, order_by=c.contact_id).label("rank"),
        )
        .where(survey.keep())
        .subquery("ranked")
    )
    chosen = select(
        literal(tenant.id),
        literal(campaign.id),
        ranked.c.contact_id,
        func.substr(ranked.c.address, 1, 254),
        literal(DeliveryState.PENDING.value),
        literal(0),
        literal(now, type_=Delivery.__table__.c.due_at.type),
    ).where(ranked.c.rank == 1)
    inserted = db.session.execute(
        insert(Delivery.__table__).from_select(
            ["tenant_id", "campaign_id", "contact_id", "address", "state", "attempts", "due_at"], chosen
        ),
        execution_options={"preserve_rowcount": True},  # INSERT counts are dropped otherwise
    ).rowcount
    excluded = {
        "opted_out": survey.opted_out,
        "no_address": survey.no_address,
        "missing_variable": len(survey.missing),
        "duplicate": survey.eligible - len(survey.missing) - inserted,
    }
    return inserted, excluded


def paused(
    reason: PauseReason,
    *,
    resume_at: datetime | None = None,
    detail: str | None = None,
    by_user_id: int | None = None,
) -> dict[str, Any]:
    """The columns of a campaign that pauses now: why, when, by whom, until when, in more words."""
    return {
        "state": CampaignState.PAUSED,
        "paused_reason": reason,
        "paused_at": utcnow(),
        "paused_by_id": by_user_id,
        "resume_at": resume_at,
        "state_detail": detail,
    }


def pause(
    campaign: Campaign,
    reason: PauseReason = PauseReason.USER,
    resume_at: datetime | None = None,
    by_user_id: int | None = None,
) -> None:
    """Running → paused, noting why, when and (for a user's pause) by whom."""
    check_action(campaign, "pause")
    if not _transition(campaign, "pause", **paused(reason, resume_at=resume_at, by_user_id=by_user_id)):
        raise CampaignError("The campaign is no longer running.")
    db.session.commit()
    db.session.refresh(campaign)


def resume(campaign: Campaign) -> None:
    """Paused → running with a new dispatch generation (the caller launches dispatch)."""
    check_action(campaign, "resume")
    if campaign.paused_reason is PauseReason.PAGE_FAILING:
        usable_page(campaign)
    if not _transition(
        campaign,
        "resume",
        state=CampaignState.RUNNING,
        paused_reason=None,
        paused_at=None,
        paused_by_id=None,
        resume_at=None,
        state_detail=None,
        dispatch_generation=Campaign.dispatch_generation + 1,
        heartbeat_at=None,
    ):
        raise CampaignError("The campaign is no longer paused.")
    db.session.commit()
    db.session.refresh(campaign)


def cancel(campaign: Campaign, now: datetime | None = None) -> int:
    """Stop for good: every delivery not yet sent becomes cancelled. Returns how many."""
    check_action(campaign, "cancel")
    now = now or utcnow()
    if not _transition(campaign, "cancel", state=CampaignState.CANCELLED, finished_at=now, resume_at=None):
        raise CampaignError("The campaign finished meanwhile.")
    table = Delivery.__table__
    cancelled = db.session.execute(
        update(table)
        .where(table.c.campaign_id == campaign.id, table.c.state == DeliveryState.PENDING.value)
        .values(state=DeliveryState.CANCELLED.value, error_text="cancelled")
    ).rowcount
    db.session.commit()
    return cancelled


def delete_campaign(campaign: Campaign) -> None:
    """Delete a campaign with its delivery history; refused while it is running or paused."""
    check_action(campaign, "delete")
    db.session.delete(campaign)
    db.session.commit()


def duplicate(campaign: Campaign) -> Campaign:
    copy = Campaign(
        name=f"{campaign.name} (copy)"[:200],
        page_id=campaign.page_id,
        template_id=campaign.template_id,
        subject=campaign.subject,
        body=campaign.body,
        audience=dict(campaign.audience or {}),
        schedule=Schedule.MANUAL if campaign.schedule is Schedule.NOW else campaign.schedule,
        scheduled_at=campaign.scheduled_at,
        send_rate=campaign.send_rate,
        max_attempts=campaign.max_attempts,
        error_threshold=campaign.error_threshold,
    )
    db.session.add(copy)
    db.session.commit()
    return copy


@dataclass(frozen=True)
class Resent:
    """What a resend did: how many of each kind went back to the queue, and what it left alone."""

    unknown: int  # the worker stopped while sending: may or may not have arrived
    failed: int  # failures worth another try (their retries ran out, or the provider said "later")
    left_alone: int  # permanent failures (invalid recipient, opted out, policy): sending again cannot help

    @property
    def total(self) -> int:
        return self.unknown + self.failed

    def text(self) -> str:
        parts = []
        if self.failed:
            parts.append(f"{self.failed:,} that failed after their retries")
        if self.unknown:
            parts.append(f"{self.unknown:,} whose outcome was unknown")
        said = f"Sending {self.total:,} messages again: {' and '.join(parts)}."
        if self.left_alone:
            said += f" {self.left_alone:,} failed for good (such as invalid numbers) and are not resent."
        return said


def resendable(table=None) -> Any:
    """The deliveries a resend sends again: unknown ones, and failures worth another try."""
    c = (table if table is not None else Delivery.__table__).c
    return or_(
        c.state == DeliveryState.UNKNOWN.value,
        and_(c.state == DeliveryState.FAILED.value, c.retryable.is_(True)),
    )


def resend_outcome(campaign_id: int) -> Resent:
    """What a resend would do now: unknown and retryable failures go again, permanent ones stay."""
    c = Delivery.__table__.c
    counts = {"unknown": 0, "failed": 0, "permanent": 0}
    for state, retryable, count in db.session.execute(
        select(c.state, c.retryable, func.count())
        .where(
            c.campaign_id == campaign_id,
            c.state.in_([DeliveryState.FAILED.value, DeliveryState.UNKNOWN.value]),
        )
        .group_by(c.state, c.retryable)
    ):
        kind = "unknown" if state == DeliveryState.UNKNOWN.value else "failed" if retryable else "permanent"
        counts[kind] += count
    return Resent(counts["unknown"], counts["failed"], counts["permanent"])


def resend(campaign: Campaign, now: datetime | None = None) -> Resent:
    """Unknown deliveries and failures worth another try back to pending, the campaign running again.

    Each one's previous outcome is kept as a :class:`DeliveryAttempt`; permanent failures stay failed.
    """
    check_action(campaign, "resend")
    now = now or utcnow()
    table = Delivery.__table__
    c = table.c
    outcome = resend_outcome(campaign.id)
    if outcome.total == 0:
        raise CampaignError(
            "Nothing to send again: no message has an unknown outcome, and every failure is permanent "
            "(sending again cannot help)."
            if outcome.left_alone
            else "No failed or unknown recipients to send to again."
        )
    chosen = and_(c.campaign_id == campaign.id, resendable())
    db.session.execute(
        insert(DeliveryAttempt.__table__).from_select(
            [
                "tenant_id",
                "campaign_id",
                "delivery_id",
                "state",
                "attempts",
                "error_code",
                "error_text",
                "provider_message_id",
                "sent_at",
                "recorded_at",
            ],
            select(
                c.tenant_id,
                c.campaign_id,
                c.id,
                c.state,
                c.attempts,
                c.error_code,
                c.error_text,
                c.provider_message_id,
                c.sent_at,
                literal(now, type_=DeliveryAttempt.__table__.c.recorded_at.type),
            ).where(chosen),
        )
    )
    db.session.execute(
        update(table)
        .where(chosen)
        .values(
            state=DeliveryState.PENDING.value,
            attempts=0,
            due_at=now,
            error_code=None,
            error_text=None,
            lease_until=None,
            retryable=False,
        )
    )
    if not _transition(
        campaign,
        "resend",
        state=CampaignState.RUNNING,
        paused_reason=None,
        paused_at=None,
        paused_by_id=None,
        resume_at=None,
        finished_at=None,
        state_detail=None,
        dispatch_generation=Campaign.dispatch_generation + 1,
        heartbeat_at=None,
    ):
        db.session.rollback()
        raise CampaignError("The campaign changed meanwhile; reload the page.")
    db.session.commit()
    db.session.refresh(campaign)
    return outcome


# --------------------------------------------------------------------------- counters


def delivery_counts(campaign_id: int) -> dict[str, int]:
    """How many deliveries are in each state, plus ``replied``."""
    table = Delivery.__table__
    rows = db.session.execute(
        select(table.c.state, func.count()).where(table.c.campaign_id == campaign_id).group_by(table.c.state)
    ).all()
    counts = {state.value: 0 for state in DeliveryState}
    counts.update({state: n for state, n in rows})
    counts["replied"] = (
        db.session.scalar(
            select(func.count()).where(table.c.campaign_id == campaign_id, table.c.replied_at.is_not(None))
        )
        or 0
    )
    return counts


def summary(campaign: Campaign, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """State, counters and rates: what ``campaign status`` prints and progress events carry."""
    counts = dict(counts or delivery_counts(campaign.id))
    sent = counts["sent"] + counts["delivered"] + counts["read"]
    delivered = counts["delivered"] + counts["read"]
    processed = sent + counts["failed"] + counts["unknown"] + counts["cancelled"]
    total = campaign.total or sum(counts[s.value] for s in DeliveryState)

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    receipts = has_receipts((campaign.message or {}).get("channel"))

    return {
        "id": campaign.id,
        "name": campaign.name,
        "state": campaign.state.value,
        "paused_reason": campaign.paused_reason.value if campaign.paused_reason else None,
        "resume_at": campaign.resume_at.isoformat() if campaign.resume_at else None,
        "detail": campaign.state_detail,
        "total": total,
        "processed": processed,
        "pending": counts["pending"],
        "in_flight": counts["in_flight"],
        "sent": sent,
        "delivered": delivered,
        "read": counts["read"],
        "replied": counts["replied"],
        "failed": counts["failed"],
        "unknown": counts["unknown"],
        "cancelled": counts["cancelled"],
        "percent": round(100 * processed / total, 1) if total else 0.0,
        "excluded": dict(campaign.exclusions or {}),
        "receipts": receipts,  # False: the channel never reports deliveries or reads ("n/a")
        "delivery_rate": ratio(delivered, sent) if receipts else None,
        "read_rate": ratio(counts["read"], delivered) if receipts else None,
        "reply_rate": ratio(counts["replied"], delivered if receipts else sent),
        "failure_rate": ratio(counts["failed"], processed),  # of those done, not of all
    }


def next_midnight(tenant: Tenant, now: datetime | None = None) -> datetime:
    """When the tenant's quota day rolls over, in UTC."""
    zone = tenant_zone(tenant)
    local = (now or utcnow()).astimezone(zone)
    tomorrow = datetime.combine(local.date() + timedelta(days=1), time(0, 0), tzinfo=zone)
    return tomorrow.astimezone(ZoneInfo("UTC"))


def daily_limit_pause_detail(reason: PauseReason, limit: int, timezone: str) -> str:
    """The detail of a pause for a daily limit, shown on the campaign's banner."""
    where = "a day" if reason is PauseReason.QUOTA else "a day on this page"
    return f"{limit:,} messages {where}; resumes by itself at midnight ({timezone})"


def quota_day(tenant: Tenant, now: datetime | None = None) -> date:
    return (now or utcnow()).astimezone(tenant_zone(tenant)).date()
