"""What a tenant's dashboard shows: campaigns in motion, the latest failures, the activity charts and
the first steps still to take.

Everything here reads a handful of rows: campaigns are few per tenant, the failures come off the
deliveries' ``(campaign_id, state, due_at, id)`` index of a few recent campaigns (never a scan of
every delivery), and the charts read :class:`tenants.usage.DailyActivity`, a row per campaign and day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Subquery, func, select, union_all

from tenants.campaigns import Campaign, CampaignState, Delivery, DeliveryState, summary
from tenants.contacts import Contact
from tenants.db import db
from tenants.models import Tenant
from tenants.pages import PROVIDERS, Page, ProviderKind
from tenants.templates import Template
from tenants.usage import ActivityDay

IN_MOTION = (CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.SCHEDULED)
FINISHED = (CampaignState.COMPLETED, CampaignState.CANCELLED, CampaignState.FAILED)
CHART_COUNTS = ("sent", "delivered", "read", "failed")


# --------------------------------------------------------------------------- campaigns


@dataclass(frozen=True)
class CampaignProgress:
    """A campaign's row on the dashboard: its state and how far it has gone."""

    campaign: Campaign
    page_name: str | None
    processed: int
    total: int
    percent: float


def campaigns_in_view(in_motion: int = 10, finished: int = 5) -> list[CampaignProgress]:
    """Running, paused and scheduled campaigns first (newest first), then the last few finished."""
    moving = db.session.scalars(
        select(Campaign)
        .where(Campaign.state.in_(IN_MOTION))
        .order_by(Campaign.created_at.desc(), Campaign.id.desc())
        .limit(in_motion)
    ).all()
    done = db.session.scalars(
        select(Campaign)
        .where(Campaign.state.in_(FINISHED))
        .order_by(Campaign.finished_at.desc().nulls_last(), Campaign.id.desc())
        .limit(finished)
    ).all()
    campaigns = [*moving, *done]
    # a completed campaign has nothing left to send: its deliveries need no counting
    counted = (CampaignState.SCHEDULED, CampaignState.COMPLETED)
    counts = _state_counts([c.id for c in campaigns if c.state not in counted])
    page_ids = {c.page_id for c in campaigns if c.page_id}
    names = dict(db.session.execute(select(Page.id, Page.name).where(Page.id.in_(page_ids))).all())
    rows = []
    for campaign in campaigns:
        if campaign.state is CampaignState.COMPLETED:
            processed = total = campaign.total
            percent = 100.0
        else:
            facts = summary(campaign, counts.get(campaign.id) or _no_counts())
            processed, total, percent = facts["processed"], facts["total"], facts["percent"]
        rows.append(CampaignProgress(campaign, names.get(campaign.page_id), processed, total, percent))
    return rows


def _no_counts() -> dict[str, int]:
    return {**{state.value: 0 for state in DeliveryState}, "replied": 0}


def _state_counts(campaign_ids: list[int]) -> dict[int, dict[str, int]]:
    """Deliveries per state of each campaign, from one grouped count."""
    if not campaign_ids:
        return {}
    counts = {campaign_id: _no_counts() for campaign_id in campaign_ids}
    for campaign_id, state, count in db.session.execute(
        select(Delivery.campaign_id, Delivery.state, func.count())
        .where(Delivery.campaign_id.in_(campaign_ids))
        .group_by(Delivery.campaign_id, Delivery.state)
    ):
        counts[campaign_id][DeliveryState(state).value] = count
    return counts


def any_campaign() -> bool:
    return db.session.scalar(select(Campaign.id).limit(1)) is not None


# --------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class RecentFailure:
    delivery_id: int
    campaign_id: int
    campaign_name: str
    address: str
    error_code: str | None
    error_text: str | None
    at: datetime  # when it was last tried (the failure's time)


def recent_failures(tenant: Tenant, limit: int = 10, campaigns: int = 10) -> list[RecentFailure]:
    """The latest ``limit`` failed deliveries of the tenant's ``campaigns`` most recently started.

    Each campaign's newest failures come off the end of its ``(campaign_id, state, due_at, id)``
    index range (a failure is written with ``due_at`` = when it failed), so the cost is
    ``campaigns * limit`` index entries whatever the campaigns' size.
    """
    recent = db.session.execute(
        select(Campaign.id, Campaign.name)
        .where(Campaign.started_at.is_not(None))
        .order_by(Campaign.started_at.desc(), Campaign.id.desc())
        .limit(campaigns)
    ).all()
    if not recent:
        return []
    names = dict(recent)
    table = Delivery.__table__
    columns = (
        table.c.id,
        table.c.campaign_id,
        table.c.address,
        table.c.error_code,
        table.c.error_text,
        table.c.due_at,
    )

    def newest_of(campaign_id: int) -> Subquery:
        return (
            select(*columns)
            .where(
                table.c.tenant_id == tenant.id,
                table.c.campaign_id == campaign_id,
                table.c.state == DeliveryState.FAILED.value,
            )
            .order_by(table.c.due_at.desc(), table.c.id.desc())
            .limit(limit)
            .subquery()
        )

    failures = union_all(*(select(newest_of(campaign_id)) for campaign_id in names)).subquery()
    rows = db.session.execute(
        select(failures).order_by(failures.c.due_at.desc(), failures.c.id.desc()).limit(limit)
    ).all()
    return [
        RecentFailure(
            row.id,
            row.campaign_id,
            names[row.campaign_id],
            row.address,
            row.error_code,
            row.error_text,
            row.due_at,
        )
        for row in rows
    ]


# --------------------------------------------------------------------------- charts


def channel_label(channel: str) -> str:
    """A channel as people know it ("WhatsApp Cloud API"), or as counted when Crier no longer has it."""
    try:
        return PROVIDERS[ProviderKind(channel)].label
    except ValueError:
        return channel or "Unknown channel"


@dataclass(frozen=True)
class ChannelChart:
    """One channel's 30 days, in the terms of the ``_charts.html`` macro."""

    channel: str
    label: str
    x: list[str]  # ISO dates
    series: list[dict[str, Any]]  # {"label": "sent", "values": [...]} per count

    @property
    def id(self) -> str:
        return f"activity-{self.channel or 'unknown'}"


def activity_charts(days: list[ActivityDay]) -> list[ChannelChart]:
    """One chart per channel in ``days`` (see :func:`tenants.usage.activity_by_day`), channels by name."""
    by_channel: dict[str, list[ActivityDay]] = {}
    for day in days:
        by_channel.setdefault(day.channel, []).append(day)
    return [
        ChannelChart(
            channel,
            channel_label(channel),
            [day.day.isoformat() for day in rows],
            [{"label": name, "values": [getattr(day, name) for day in rows]} for name in CHART_COUNTS],
        )
        for channel, rows in sorted(by_channel.items(), key=lambda item: channel_label(item[0]))
    ]


# --------------------------------------------------------------------------- first steps


@dataclass(frozen=True)
class FirstSteps:
    """The four things a new workspace does before its first campaign goes out."""

    page: bool
    contacts: bool
    template: bool
    campaign: bool

    @property
    def done(self) -> bool:
        return self.page and self.contacts and self.template and self.campaign


def first_steps() -> FirstSteps:
    """Which first steps the current tenant has taken (four one-row lookups)."""

    def exists(column: Any, *where: Any) -> bool:
        return db.session.scalar(select(column).where(*where).limit(1)) is not None

    return FirstSteps(
        page=exists(Page.id),
        contacts=exists(Contact.id),
        template=exists(Template.id),
        campaign=exists(Campaign.id, Campaign.started_at.is_not(None)),
    )
