"""The one owner of what happens around a campaign or tenant change: the domain transition, the
launch of dispatch, the live event and the audit entry, in that order.

Web views, the CLI and the sweeper call these instead of stringing the steps together themselves.
Campaign actions raise :class:`tenants.campaigns.CampaignError` with a message for the user;
``problem`` return values say the workers could not be reached (the sweeper launches later).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from tasks.connections import with_db_retry
from tasks.progress import emit_progress, emit_state, emit_to_tenant
from tenants import audit, campaigns, plans
from tenants.accounts import TEST_AUDIENCE, sends_beyond_tests
from tenants.campaigns import (
    DAILY_LIMIT_PAUSES,
    Campaign,
    CampaignError,
    CampaignState,
    PauseReason,
    Resent,
    daily_limit_pause_detail,
    next_midnight,
    paused,
)
from tenants.db import db, utcnow
from tenants.models import Tenant, TenantStatus
from tenants.pages import Page
from tenants.scoping import all_tenants, tenant
from tenants.usage import room_today

log = logging.getLogger(__name__)


def _target(campaign: Campaign) -> str:
    return f"campaign {campaign.id} {campaign.name}"


def _audit_campaign(campaign: Campaign, action: str, **after: Any) -> None:
    audit.record(action, tenant_id=campaign.tenant_id, target=_target(campaign), after=after or None)
    db.session.commit()


# --------------------------------------------------------------------------- campaign actions


def launch_dispatch(campaign: Campaign) -> str | None:
    """Enqueue the running campaign's dispatch chains; why not, when the workers are unreachable."""
    from tasks.dispatch import launch_quietly  # at call time: dispatch calls this module's transitions

    return launch_quietly(campaign)


@dataclass(frozen=True)
class Started:
    running: bool  # False: scheduled for later, or failed with nobody to send to (see the state)
    problem: str | None = None


def check_sender_verified(campaign: Campaign) -> None:
    """Refuse an audience beyond a test one while no owner of the workspace has verified their address
    (a sign-up with someone else's address must not reach thousands)."""
    if sends_beyond_tests(campaign.tenant_id):
        return
    recipients = campaigns.count_audience(campaign).recipients
    if recipients > TEST_AUDIENCE:
        raise CampaignError(
            f"Verify your email address to send to more than {TEST_AUDIENCE} recipients: this campaign "
            f"would reach {recipients:,}. Open the link we emailed to the workspace's owner (or resend it "
            "from the banner at the top of the page); test sends work meanwhile."
        )


def start_campaign(campaign: Campaign, *, due_only: bool = False) -> Started:
    """Start (or schedule) a draft: deliveries created, dispatch launched, browsers told, audited."""
    tenant_row = db.session.get(Tenant, campaign.tenant_id)
    if tenant_row is not None and not tenant_row.is_active:
        raise CampaignError("The workspace is suspended: nothing is sent until it is reactivated.")
    check_sender_verified(campaign)
    running = campaigns.start(campaign, due_only=due_only)
    if due_only and not running and campaign.state is CampaignState.SCHEDULED:
        return Started(False)
    problem = None
    if running:
        problem = launch_dispatch(campaign)
        emit_state(campaign.id, "campaign:started")
        _audit_campaign(campaign, "campaign.started", recipients=campaign.total)
    elif campaign.state is CampaignState.SCHEDULED:
        _audit_campaign(campaign, "campaign.scheduled", at=campaign.scheduled_at.isoformat())
    else:
        emit_state(campaign.id, "campaign:failed")
    return Started(running, problem)


def pause_campaign(campaign: Campaign, by_user_id: int | None) -> None:
    campaigns.pause(campaign, PauseReason.USER, by_user_id=by_user_id)
    emit_state(campaign.id, "campaign:paused")
    _audit_campaign(campaign, "campaign.paused")


def why_it_cannot_send_today(campaign: Campaign) -> str | None:
    """The daily limit that keeps a paused campaign from sending now, worded for the user."""
    tenant_row = db.session.get(Tenant, campaign.tenant_id)
    page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
    room = room_today(tenant_row, page) if tenant_row is not None else None
    if room is None or room.left > 0:
        return None
    if room.quota_left == 0:
        said = (
            f"It cannot send now: the workspace's daily quota is used up ({room.quota_used:,} of "
            f"{room.quota:,} today). The quota resets"
        )
    else:
        said = (
            f"It cannot send now: the page {page.name} has reached its daily cap of {room.cap:,}. "
            "The cap resets"
        )
    then = (
        ", and the campaign resumes by itself then." if campaign.paused_reason in DAILY_LIMIT_PAUSES else "."
    )
    return f"{said} at midnight ({tenant_row.timezone}){then}"


def resume_campaign(campaign: Campaign) -> str | None:
    """Paused → running and launched; refused with the reason while a daily limit is used up."""
    campaigns.check_action(campaign, "resume")
    tenant_row = db.session.get(Tenant, campaign.tenant_id)
    if tenant_row is not None and not tenant_row.is_active:
        raise CampaignError("The workspace is suspended: nothing is sent until it is reactivated.")
    blocked = why_it_cannot_send_today(campaign)
    if blocked:
        raise CampaignError(blocked)
    campaigns.resume(campaign)
    problem = launch_dispatch(campaign)
    emit_state(campaign.id, "campaign:started")
    _audit_campaign(campaign, "campaign.resumed")
    return problem


def cancel_campaign(campaign: Campaign) -> int:
    cancelled = campaigns.cancel(campaign)
    emit_progress(campaign.id, campaign.tenant_id, force=True)
    _audit_campaign(campaign, "campaign.cancelled", not_sent=cancelled)
    return cancelled


def resend_campaign(campaign: Campaign) -> tuple[Resent, str | None]:
    resent = campaigns.resend(campaign)
    problem = launch_dispatch(campaign)
    emit_state(campaign.id, "campaign:started")
    _audit_campaign(
        campaign,
        "campaign.resent",
        unknown=resent.unknown,
        failed=resent.failed,
        left_alone=resent.left_alone,
    )
    return resent, problem


def relaunch(campaign: Campaign, why: str) -> bool:
    """A new generation of dispatch chains for a running campaign whose dispatch died or went quiet
    (older chains stop by themselves); ``why`` goes to the log."""
    generation = campaign.dispatch_generation
    moved = db.session.execute(
        update(Campaign)
        .where(
            Campaign.id == campaign.id,
            Campaign.dispatch_generation == generation,
            Campaign.state == CampaignState.RUNNING,
        )
        .values(dispatch_generation=generation + 1, heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if not moved:
        return False
    db.session.refresh(campaign)
    problem = launch_dispatch(campaign)
    if problem:
        log.warning("campaign %s not relaunched: %s", campaign.id, problem)
        db.session.execute(
            update(Campaign)
            .where(Campaign.id == campaign.id)
            .values(heartbeat_at=None)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        return False
    log.warning("campaign %s relaunched: %s", campaign.id, why)
    return True


def resume_automatically(campaign: Campaign) -> bool:
    """The sweeper's (and a limit change's) resume of a pause that ended by itself: no audit entry."""
    if why_it_cannot_send_today(campaign):
        return False
    campaigns.resume(campaign)
    launch_dispatch(campaign)
    emit_state(campaign.id, "campaign:started")
    return True


# --------------------------------------------------------------------------- tenants (platform admin)


def _campaign_ids(tenant_id: int, state: CampaignState, reasons: tuple[PauseReason, ...] = ()) -> list[int]:
    query = select(Campaign.id).where(Campaign.tenant_id == tenant_id, Campaign.state == state)
    if reasons:
        query = query.where(Campaign.paused_reason.in_(reasons))
    with all_tenants(db.session):
        return list(db.session.scalars(query.order_by(Campaign.id)))


def tell_tenant(tenant_row: Tenant) -> None:
    """Browsers of the tenant redraw what depends on its status and limits (the dashboard's quota)."""
    emit_to_tenant(
        tenant_row.id,
        "tenant:changed",
        {
            "status": tenant_row.status.value,
            "daily_message_quota": tenant_row.daily_message_quota,
            "max_send_rate": tenant_row.max_send_rate,
        },
    )


def suspend_tenant(tenant_row: Tenant, reason: str) -> list[int]:
    """Suspend with a reason: running campaigns pause at once (dispatch stops within a second),
    scheduled starts and the sweeper's resumes wait; returns the campaigns paused."""
    reason = reason.strip()
    if not reason:
        raise plans.PlanError("Say why the workspace is suspended: its members see the reason.")
    if tenant_row.status is TenantStatus.SUSPENDED:
        raise plans.PlanError(f"{tenant_row.name} is already suspended.")
    tenant_row.status = TenantStatus.SUSPENDED
    tenant_row.suspended_reason = reason[:500]
    tenant_row.suspended_at = utcnow()
    audit.record(
        "tenant.suspended",
        tenant_id=tenant_row.id,
        target=f"workspace {tenant_row.name}",
        before={"status": "active"},
        after={"status": "suspended", "reason": reason[:500]},
    )
    db.session.commit()
    paused = pause_campaigns(
        _campaign_ids(tenant_row.id, CampaignState.RUNNING),
        PauseReason.SUSPENDED,
        detail=f"suspended: {reason}"[:500],
    )
    tell_tenant(tenant_row)
    return paused


def reactivate_tenant(tenant_row: Tenant) -> list[int]:
    """Back to active; campaigns the suspension paused resume. Returns the campaigns resumed."""
    if tenant_row.status is TenantStatus.ACTIVE:
        raise plans.PlanError(f"{tenant_row.name} is not suspended.")
    before = {"status": "suspended", "reason": tenant_row.suspended_reason}
    tenant_row.status = TenantStatus.ACTIVE
    tenant_row.suspended_reason = None
    tenant_row.suspended_at = None
    audit.record(
        "tenant.reactivated",
        tenant_id=tenant_row.id,
        target=f"workspace {tenant_row.name}",
        before=before,
        after={"status": "active"},
    )
    db.session.commit()
    with tenant(db.session, tenant_row.id):
        resumed = _resume_each(_campaign_ids(tenant_row.id, CampaignState.PAUSED, (PauseReason.SUSPENDED,)))
    tell_tenant(tenant_row)
    return resumed


def _resume_each(campaign_ids: list[int]) -> list[int]:
    """Resume those of the current tenant's ``campaign_ids`` that may send now; the ids resumed."""
    resumed = []
    for campaign_id in campaign_ids:
        campaign = db.session.get(Campaign, campaign_id)
        try:
            if campaign is not None and resume_automatically(campaign):
                resumed.append(campaign_id)
        except CampaignError:
            db.session.rollback()
    return resumed


def limits_changed(tenant_row: Tenant, now: datetime | None = None) -> dict[str, list[int]]:
    """After the tenant's limits changed: a quota lowered below today's use pauses its running
    campaigns (sends under way finish), a quota raised resumes those paused for it. Browsers are told."""
    now = now or utcnow()
    paused: list[int] = []
    resumed: list[int] = []
    if tenant_row.is_active:
        with tenant(db.session, tenant_row.id):
            if room_today(tenant_row, None, now).quota_left == 0:
                paused = pause_campaigns(
                    _campaign_ids(tenant_row.id, CampaignState.RUNNING),
                    PauseReason.QUOTA,
                    resume_at=next_midnight(tenant_row, now),
                    detail=daily_limit_pause_detail(
                        PauseReason.QUOTA, tenant_row.daily_message_quota, tenant_row.timezone
                    ),
                )
            else:
                resumed = _resume_each(_campaign_ids(tenant_row.id, CampaignState.PAUSED, DAILY_LIMIT_PAUSES))
    tell_tenant(tenant_row)
    return {"paused": paused, "resumed": resumed}


def change_plan(tenant_row: Tenant, plan: plans.Plan) -> dict[str, tuple[int, int]]:
    """Put the tenant on ``plan`` (its overrides stay), audited, and let running campaigns follow."""
    before_plan = db.session.get(plans.Plan, tenant_row.plan_id) if tenant_row.plan_id else None
    changes = plans.assign_plan(tenant_row, plan)
    audit.record(
        "tenant.plan_changed",
        tenant_id=tenant_row.id,
        target=f"workspace {tenant_row.name}",
        before={"plan": before_plan.name if before_plan else None, **{k: v[0] for k, v in changes.items()}},
        after={"plan": plan.name, **{k: v[1] for k, v in changes.items()}},
    )
    db.session.commit()
    limits_changed(tenant_row)
    return changes


def change_limits(tenant_row: Tenant, values: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Set or drop per-tenant overrides, audited, and let running campaigns follow."""
    overrides_before = dict(tenant_row.limit_overrides or {})
    changes = plans.set_overrides(tenant_row, values)
    if not changes and overrides_before == (tenant_row.limit_overrides or {}):
        return {}
    audit.record(
        "tenant.limits_changed",
        tenant_id=tenant_row.id,
        target=f"workspace {tenant_row.name}",
        before={k: v[0] for k, v in changes.items()} or {"overrides": str(overrides_before)},
        after={k: v[1] for k, v in changes.items()} or {"overrides": str(tenant_row.limit_overrides)},
    )
    db.session.commit()
    limits_changed(tenant_row)
    return changes


def save_plan(plan: plans.Plan, name: str, values: dict[str, Any], is_default: bool = False) -> list[int]:
    """Create or change a plan, audited; tenants on it follow its new limits at once."""
    creating = plan.id is None
    before = {"name": plan.name, **plan.limits()} if not creating else None
    changed_tenants = plans.save_plan(plan, name, values, is_default)
    audit.record(
        "plan.created" if creating else "plan.changed",
        tenant_id=None,
        target=f"plan {plan.name}",
        before=before,
        after={"name": plan.name, **plan.limits(), "default": plan.is_default},
    )
    db.session.commit()
    with all_tenants(db.session):
        for tenant_id in changed_tenants:
            limits_changed(db.session.get(Tenant, tenant_id))
    return changed_tenants


# --------------------------------------------------------------------------- campaign-wide changes


def running_campaigns_of(page_id: int) -> list[int]:
    return list(
        db.session.scalars(
            select(Campaign.id).where(Campaign.page_id == page_id, Campaign.state == CampaignState.RUNNING)
        )
    )


def _move_running(campaign_ids: list[int], event: str, what: str, **values: Any) -> list[int]:
    """Move those of ``campaign_ids`` still running (race-safe), tell their browsers; the ids moved."""
    if not campaign_ids:
        return []

    def work() -> list[int]:
        moved = list(
            db.session.scalars(
                update(Campaign)
                .where(Campaign.id.in_(campaign_ids), Campaign.state == CampaignState.RUNNING)
                .values(**values)
                .returning(Campaign.id)
                .execution_options(synchronize_session=False)
            )
        )
        db.session.commit()
        return moved

    moved = with_db_retry(work, what)
    for campaign_id in moved:
        emit_state(campaign_id, event)
    return moved


def hold_page(
    page_id: int,
    reason: PauseReason,
    detail: str,
    resume_at: datetime | None = None,
    **page_values: Any,
) -> list[int]:
    """The provider refused or throttled a page: set its state (``page_values``), then pause its
    running campaigns with ``reason``; returns the ids paused."""

    def work() -> None:
        db.session.execute(
            update(Page)
            .where(Page.id == page_id)
            .values(**page_values)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()

    with_db_retry(work, f"marking page {page_id} {page_values.get('state', '')}")
    return pause_campaigns(running_campaigns_of(page_id), reason, resume_at=resume_at, detail=detail)


def pause_campaigns(
    campaign_ids: list[int], reason: PauseReason, resume_at: datetime | None = None, detail: str | None = None
) -> list[int]:
    """Pause those still running; returns the ids paused."""
    return _move_running(
        campaign_ids,
        "campaign:paused",
        "pausing campaigns",
        **paused(reason, resume_at=resume_at, detail=detail),
    )


def complete_campaign(campaign_id: int) -> bool:
    return bool(
        _move_running(
            [campaign_id],
            "campaign:completed",
            "completing the campaign",
            state=CampaignState.COMPLETED,
            finished_at=utcnow(),
            paused_reason=None,
        )
    )


def fail_campaign(campaign_id: int, detail: str) -> None:
    _move_running(
        [campaign_id],
        "campaign:failed",
        "failing the campaign",
        state=CampaignState.FAILED,
        finished_at=utcnow(),
        state_detail=detail[:500],
    )
