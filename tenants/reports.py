"""A campaign's report: every recipient and what became of their message, read the way the indexes allow.

Deliveries carry few indexes (``(campaign_id, state, due_at, id)`` and ``contact_id``), so every
query here starts from them: a report page is a keyset page by delivery id, with contacts joined
to its rows only; counts are one grouped query; the CSV export reads through a server-side cursor;
the timeline is one aggregate per series. Provider error codes are explained with the same tables
that classified them when they were sent (``tenants.provider_codes``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Integer, Select, cast, func, literal_column, select

from tenants.campaigns import (
    Campaign,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    past_sending,
)
from tenants.contact_book import display_name
from tenants.contacts import Contact
from tenants.db import db
from tenants.events import InboundMessage
from tenants.pages import Page, ProviderKind
from tenants.provider_codes import readable_reason
from tenants.spreadsheet import neutralise_row

PAGE_SIZE = 50
EXPORT_BATCH = 1000
STATE_LABELS = {
    DeliveryState.PENDING: "pending",
    DeliveryState.IN_FLIGHT: "being sent",
    DeliveryState.SENT: "sent",
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.READ: "read",
    DeliveryState.FAILED: "failed",
    DeliveryState.UNKNOWN: "unknown",
    DeliveryState.CANCELLED: "cancelled",
}
EXPORT_HEADER = (
    "delivery id",
    "contact id",
    "contact name",
    "address",
    "state",
    "attempts",
    "error code",
    "reason",
    "sent at",
    "delivered at",
    "read at",
    "replied at",
)


# --------------------------------------------------------------------------- reasons


def campaign_kind(campaign: Campaign) -> ProviderKind | None:
    """The kind of page the campaign sends through (its snapshot's channel once the page is gone)."""
    page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
    if page is not None:
        return page.kind
    channel = (campaign.message or {}).get("channel")
    return ProviderKind(channel) if channel else None


# --------------------------------------------------------------------------- the recipients


@dataclass(frozen=True)
class EarlierAttempt:
    """A round before a resend: what became of the delivery then."""

    state: DeliveryState
    attempts: int
    error_code: str | None
    reason: str
    sent_at: datetime | None
    recorded_at: datetime

    def summary(self) -> str:
        said = f"{STATE_LABELS[self.state]} after {self.attempts} attempt{'' if self.attempts == 1 else 's'}"
        return f"{said}: {self.reason}" if self.reason else said


@dataclass(frozen=True)
class RecipientRow:
    """One delivery as the report shows it."""

    delivery_id: int
    contact_id: int | None  # None when the contact was deleted since
    contact_name: str | None
    address: str
    state: DeliveryState
    attempts: int
    error_code: str | None
    reason: str
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    replied_at: datetime | None
    earlier: list[EarlierAttempt] = field(default_factory=list)


@dataclass(frozen=True)
class ReportPage:
    """Up to ``PAGE_SIZE`` rows, and the id to continue after (None on the last page)."""

    rows: list[RecipientRow]
    next_after: int | None


def matching(campaign_id: int, state: DeliveryState | None = None, error_code: str | None = None) -> list:
    """The WHERE clauses of the report's filters."""
    clauses = [Delivery.campaign_id == campaign_id]
    if state is not None:
        clauses.append(Delivery.state == state)
    if error_code:
        clauses.append(Delivery.error_code == error_code)
    return clauses


ROW_COLUMNS = (
    Delivery.id,
    Delivery.contact_id,
    Delivery.address,
    Delivery.state,
    Delivery.attempts,
    Delivery.error_code,
    Delivery.error_text,
    Delivery.sent_at,
    Delivery.delivered_at,
    Delivery.read_at,
    Delivery.replied_at,
    Contact.id.label("contact_found"),
    Contact.first_name,
    Contact.last_name,
    Contact.email,
    Contact.phone,
)


def _with_contacts(query: Select) -> Select:
    return query.outerjoin(Contact, Contact.id == Delivery.contact_id)


def _contact_name(row: Any) -> str | None:
    if row.contact_found is None:
        return None
    return display_name(
        SimpleNamespace(
            id=row.contact_found,
            first_name=row.first_name,
            last_name=row.last_name,
            email=row.email,
            phone=row.phone,
        )
    )


def _recipient(row: Any, kind: ProviderKind | None, earlier: list[EarlierAttempt]) -> RecipientRow:
    return RecipientRow(
        delivery_id=row.id,
        contact_id=row.contact_found,
        contact_name=_contact_name(row),
        address=row.address,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        error_code=row.error_code,
        reason=readable_reason(kind, row.error_code, row.error_text),
        sent_at=row.sent_at,
        delivered_at=row.delivered_at,
        read_at=row.read_at,
        replied_at=row.replied_at,
        earlier=earlier,
    )


def earlier_attempts(delivery_ids: list[int], kind: ProviderKind | None) -> dict[int, list[EarlierAttempt]]:
    """The rounds before each resend of these deliveries, oldest first."""
    if not delivery_ids:
        return {}
    found: dict[int, list[EarlierAttempt]] = {}
    a = DeliveryAttempt
    for row in db.session.execute(
        select(a.delivery_id, a.state, a.attempts, a.error_code, a.error_text, a.sent_at, a.recorded_at)
        .where(a.delivery_id.in_(delivery_ids))
        .order_by(a.delivery_id, a.recorded_at, a.id)
    ):
        found.setdefault(row.delivery_id, []).append(
            EarlierAttempt(
                DeliveryState(row.state),
                row.attempts,
                row.error_code,
                readable_reason(kind, row.error_code, row.error_text),
                row.sent_at,
                row.recorded_at,
            )
        )
    return found


def _rows_for(ids: Select, kind: ProviderKind | None, order: Any) -> list[RecipientRow]:
    """Full rows (contact and earlier attempts) for the delivery ids ``ids`` selects: a page's worth."""
    chosen = ids.subquery("chosen")
    rows = db.session.execute(
        _with_contacts(select(*ROW_COLUMNS).join(chosen, chosen.c.id == Delivery.id)).order_by(order)
    ).all()
    earlier = earlier_attempts([row.id for row in rows], kind)
    return [_recipient(row, kind, earlier.get(row.id, [])) for row in rows]


def recipient_page(
    campaign: Campaign,
    state: DeliveryState | None = None,
    error_code: str | None = None,
    after: int = 0,
    size: int = PAGE_SIZE,
) -> ReportPage:
    """The next ``size`` recipients after delivery id ``after``, in id order (a keyset page, no OFFSET).

    The ids come off the campaign's index first; only those rows are read in full and joined to
    their contacts.
    """
    ids = (
        select(Delivery.id)
        .where(*matching(campaign.id, state, error_code), Delivery.id > after)
        .order_by(Delivery.id)
        .limit(size + 1)
    )
    rows = _rows_for(ids, campaign_kind(campaign), Delivery.id)
    shown = rows[:size]
    return ReportPage(shown, shown[-1].delivery_id if len(rows) > size else None)


@dataclass(frozen=True)
class ProviderFacts:
    """What the report's rows leave out and an integration needs: the provider's own words."""

    provider_message_id: str | None
    error_text: str | None  # as the provider said it (the row's ``reason`` explains the code)


def provider_facts(delivery_ids: list[int]) -> dict[int, ProviderFacts]:
    """The provider message id and raw error text of each of these deliveries (a page's worth)."""
    if not delivery_ids:
        return {}
    return {
        row.id: ProviderFacts(row.provider_message_id, row.error_text)
        for row in db.session.execute(
            select(Delivery.id, Delivery.provider_message_id, Delivery.error_text).where(
                Delivery.id.in_(delivery_ids)
            )
        )
    }


def latest_problems(campaign: Campaign, limit: int = 5) -> list[RecipientRow]:
    """The most recent failed or unknown recipients (the campaign page's short list)."""
    ids = (
        select(Delivery.id)
        .where(
            Delivery.campaign_id == campaign.id,
            Delivery.state.in_([DeliveryState.FAILED, DeliveryState.UNKNOWN]),
        )
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    return _rows_for(ids, campaign_kind(campaign), Delivery.id.desc())


def state_counts(campaign_id: int) -> dict[DeliveryState, int]:
    """Deliveries per state (every state present, zero included), from one grouped query."""
    counts = dict.fromkeys(DeliveryState, 0)
    for state, count in db.session.execute(
        select(Delivery.state, func.count())
        .where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.state)
    ):
        counts[DeliveryState(state)] = count
    return counts


def error_counts(campaign_id: int, state: DeliveryState | None = None) -> list[tuple[str, int]]:
    """The error codes present (in ``state``, or in any), most frequent first."""
    return [
        (code, count)
        for code, count in db.session.execute(
            select(Delivery.error_code, func.count())
            .where(*matching(campaign_id, state), Delivery.error_code.is_not(None))
            .group_by(Delivery.error_code)
            .order_by(func.count().desc(), Delivery.error_code)
        )
    ]


# --------------------------------------------------------------------------- the CSV


def _iso(moment: datetime | None, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).isoformat(timespec="seconds") if moment else ""


def export_rows(
    campaign: Campaign,
    zone: ZoneInfo,
    state: DeliveryState | None = None,
    error_code: str | None = None,
) -> Iterator[list[str]]:
    """The header, then one spreadsheet-safe row per matching delivery, read through a server-side
    cursor (flat memory however many there are); times are ISO 8601 in ``zone``."""
    kind = campaign_kind(campaign)
    yield neutralise_row(EXPORT_HEADER)
    query = (
        _with_contacts(select(*ROW_COLUMNS))
        .where(*matching(campaign.id, state, error_code))
        .order_by(Delivery.id)
        .execution_options(yield_per=EXPORT_BATCH)
    )
    for row in db.session.execute(query):
        yield neutralise_row(
            (
                row.id,
                row.contact_found if row.contact_found is not None else "",
                _contact_name(row) or "",
                row.address,
                DeliveryState(row.state).value,
                row.attempts,
                row.error_code or "",
                readable_reason(kind, row.error_code, row.error_text),
                _iso(row.sent_at, zone),
                _iso(row.delivered_at, zone),
                _iso(row.read_at, zone),
                _iso(row.replied_at, zone),
            )
        )


# --------------------------------------------------------------------------- the timeline

FINE_SPAN_SECONDS = 15 * 60  # up to this, one point per second
MAX_POINTS = 900
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass(frozen=True)
class Timeline:
    """Sends, deliveries and reads per bucket of ``step`` seconds; ``x`` holds each bucket's start."""

    step: int
    x: list[int]
    sent: list[int]
    delivered: list[int]
    read: list[int]

    @property
    def series(self) -> list[dict[str, Any]]:
        return [
            {"label": "sent", "values": self.sent},
            {"label": "delivered", "values": self.delivered},
            {"label": "read", "values": self.read},
        ]


def bucket_seconds(span_seconds: float) -> int:
    """1 s while the span is up to 15 minutes, else the smallest round step giving at most ~900 points."""
    if span_seconds <= FINE_SPAN_SECONDS:
        return 1
    for step in STEPS:
        if span_seconds / step < MAX_POINTS:
            return step
    days = -(-int(span_seconds) // (MAX_POINTS * 86400))
    return 86400 * days


def _epoch_bucket(column: Any, step: int) -> Any:
    """SQL for the start of ``column``'s bucket, in epoch seconds (``step`` is one of ours: a literal)."""
    step_sql = literal_column(str(int(step)), Integer)
    if db.session.get_bind().dialect.name == "postgresql":
        epoch = cast(func.floor(func.extract("epoch", column)), BigInteger)
    else:
        epoch = cast(func.strftime("%s", column), Integer)
    return (epoch // step_sql) * step_sql


def _per_bucket(campaign_id: int, column: Any, step: int) -> dict[int, int]:
    bucket = _epoch_bucket(column, step)
    return {
        int(start): count
        for start, count in db.session.execute(
            select(bucket, func.count())
            .where(Delivery.campaign_id == campaign_id, column.is_not(None))
            .group_by(bucket)
        )
    }


def timeline(campaign_id: int) -> Timeline | None:
    """The campaign's sends and receipts over time (None before anything was sent)."""
    first, last_sent, last_delivered, last_read = db.session.execute(
        select(
            func.min(Delivery.sent_at),
            func.max(Delivery.sent_at),
            func.max(Delivery.delivered_at),
            func.max(Delivery.read_at),
        ).where(Delivery.campaign_id == campaign_id)
    ).one()
    if first is None:
        return None
    last = max(moment for moment in (last_sent, last_delivered, last_read) if moment is not None)
    step = bucket_seconds((last - first).total_seconds())
    start = int(first.timestamp()) // step * step - step  # an empty bucket either side: the lines
    end = int(last.timestamp()) // step * step + step  # rise from and fall back to zero
    x = list(range(start, end + step, step))
    counted = {
        name: _per_bucket(campaign_id, column, step)
        for name, column in (
            ("sent", Delivery.sent_at),
            ("delivered", Delivery.delivered_at),
            ("read", Delivery.read_at),
        )
    }
    return Timeline(
        step, x, *([counted[name].get(t, 0) for t in x] for name in ("sent", "delivered", "read"))
    )


# --------------------------------------------------------------------------- replies and history


@dataclass(frozen=True)
class Reply:
    """A message a person sent back."""

    id: int
    sender: str
    sender_name: str | None
    contact_id: int | None
    text: str
    received_at: datetime
    campaign_id: int | None


def _reply(message: InboundMessage) -> Reply:
    return Reply(
        message.id,
        message.sender,
        message.sender_name,
        message.contact_id,
        message.text or "",
        message.received_at,
        message.campaign_id,
    )


def campaign_replies(campaign_id: int, limit: int = 20) -> tuple[list[Reply], int]:
    """The latest replies to the campaign's messages, and how many there are in all."""
    messages = db.session.scalars(
        select(InboundMessage)
        .where(InboundMessage.campaign_id == campaign_id)
        .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
        .limit(limit)
    ).all()
    total = db.session.scalar(
        select(func.count()).select_from(InboundMessage).where(InboundMessage.campaign_id == campaign_id)
    )
    return [_reply(m) for m in messages], total or 0


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a contact's message history: a campaign message to them, or a message from them."""

    at: datetime | None
    page_name: str | None
    delivery: RecipientRow | None = None
    campaign_id: int | None = None
    campaign_name: str | None = None  # None: the campaign was deleted
    reply: Reply | None = None


def contact_history(contact_id: int, limit: int = 50) -> list[HistoryEntry]:
    """The contact's deliveries (once past sending: the queued ones are not history yet) and their
    messages to the tenant's pages, newest first."""
    deliveries = db.session.execute(
        _with_contacts(
            select(
                *ROW_COLUMNS,
                Delivery.due_at,
                Campaign.id.label("campaign_found"),
                Campaign.name.label("campaign_name"),
                Page.name.label("page_name"),
                Page.kind.label("page_kind"),
            )
        )
        .outerjoin(Campaign, Campaign.id == Delivery.campaign_id)
        .outerjoin(Page, Page.id == Campaign.page_id)
        .where(Delivery.contact_id == contact_id, past_sending())
        .order_by(Delivery.id.desc())
        .limit(limit)
    ).all()
    entries = [
        HistoryEntry(
            at=row.sent_at or row.due_at,
            page_name=row.page_name,
            delivery=_recipient(row, ProviderKind(row.page_kind) if row.page_kind else None, []),
            campaign_id=row.campaign_found,
            campaign_name=row.campaign_name,
        )
        for row in deliveries
    ]
    replies = db.session.execute(
        select(InboundMessage, Page.name)
        .outerjoin(Page, Page.id == InboundMessage.page_id)
        .where(InboundMessage.contact_id == contact_id)
        .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
        .limit(limit)
    ).all()
    entries += [HistoryEntry(at=m.received_at, page_name=name, reply=_reply(m)) for m, name in replies]
    oldest = datetime.min.replace(tzinfo=ZoneInfo("UTC"))
    entries.sort(key=lambda entry: entry.at or oldest, reverse=True)
    return entries[:limit]
