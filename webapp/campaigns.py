"""Campaigns: write one, see who it reaches, start it, watch it run and act on it while it does.

Views stay thin: the states, the actions allowed in each and the counting live in
``tenants.campaigns``; each action's launch, live event and audit entry in ``tasks.lifecycle``.
Every action is a POST; one the campaign's state does not allow answers 409 with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, flash, g, redirect, render_template, url_for
from flask_login import current_user
from htmx_flask import request
from sqlalchemy import func, select

from tasks import channel_checks, lifecycle
from tasks.providers.ssrf import allowed_private_hosts
from tenants import campaigns as campaigns_domain
from tenants.campaigns import (
    DAILY_LIMIT_PAUSES,
    EXCLUSION_TEXT,
    NOT_STARTED,
    Campaign,
    CampaignChangedMeanwhile,
    CampaignError,
    CampaignState,
    Delivery,
    DeliveryState,
    MessageSource,
    PauseReason,
    Schedule,
    address_column,
    allowed_actions,
    check_action,
    count_audience,
    delivery_counts,
    duplicate,
    message_of,
    resend_outcome,
    save_campaign,
    summary,
    tenant_zone,
    usable_page,
)
from tenants.contacts import Contact, ContactList, Segment
from tenants.db import db
from tenants.models import Membership, User
from tenants.pages import Page
from tenants.reports import campaign_replies, latest_problems
from tenants.templates import Template
from tenants.templating import compile_template, contact_variables
from tenants.usage import Forecast, forecast
from webapp.message_templates import SAMPLE_VARIABLES
from webapp.rendering import fragment_only, render_page
from webapp.tenancy import member_required

bp = Blueprint("campaigns", __name__)

CAMPAIGNS_PER_PAGE = 25
LATEST_PROBLEMS = 5
LATEST_REPLIES = 20
LOCAL_INPUT_FORMAT = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> sends
ID_TEXT = re.compile(r"[0-9]{1,12}")
MAX_ID = 2**31 - 1  # ids are INTEGER columns


# --------------------------------------------------------------------------- helpers


def local_time(moment: datetime | None) -> str:
    """A UTC moment as the workspace's wall-clock time, with the zone named."""
    if moment is None:
        return ""
    zone = tenant_zone(g.workspace.tenant)
    return f"{moment.astimezone(zone):%Y-%m-%d %H:%M} ({zone.key})"


def _as_id(value: Any) -> int | None:
    """A row id typed into a form, or None for anything else."""
    text = str(value or "").strip()
    return int(text) if ID_TEXT.fullmatch(text) and int(text) <= MAX_ID else None


def _form_id(raw: str) -> int | str:
    """An id field for ``apply_campaign_form``: a number too large for an id becomes -1, an id no row
    has (the database would refuse it); anything else not a number stays, for the form's message."""
    text = raw.strip()
    if _as_id(text) is not None:
        return int(text)
    return -1 if text.isdecimal() else text


def _form_ids(values: list[str]) -> list[int | str]:
    return [_form_id(value) for value in values if value.strip()]


def _submitted_fields() -> dict[str, Any]:
    """The editor's fields as ``apply_campaign_form`` reads them (blank ids left out)."""
    form = request.form
    return {
        "name": form.get("name", ""),
        "page_id": _form_id(form.get("page_id", "")) if form.get("page_id", "").strip() else None,
        "template_id": _form_id(form.get("template_id", "")) if form.get("template_id", "").strip() else None,
        "body": form.get("body", ""),
        "subject": form.get("subject", ""),
        "audience_all": form.get("audience_all", ""),
        "list_ids": _form_ids(form.getlist("list_ids")),
        "segment_ids": _form_ids(form.getlist("segment_ids")),
        "schedule": form.get("schedule") or Schedule.MANUAL.value,
        "scheduled_at": form.get("scheduled_at", ""),
        "send_rate": form.get("send_rate", ""),
    }


def _fields_of(campaign: Campaign) -> dict[str, Any]:
    """A saved campaign's values in the editor's terms."""
    audience = campaign.audience or {}
    zone = tenant_zone(g.workspace.tenant)
    return {
        "name": campaign.name or "",
        "page_id": campaign.page_id,
        "template_id": campaign.template_id,
        "body": campaign.body or "",
        "subject": campaign.subject or "",
        "audience_all": audience.get("all", False),
        "list_ids": list(audience.get("lists", [])),
        "segment_ids": list(audience.get("segments", [])),
        "schedule": (campaign.schedule or Schedule.MANUAL).value,
        "scheduled_at": f"{campaign.scheduled_at.astimezone(zone):{LOCAL_INPUT_FORMAT}}"
        if campaign.scheduled_at
        else "",
        "send_rate": f"{campaign.send_rate:g}" if campaign.send_rate else "",
    }


def _editor(campaign: Campaign, fields: dict[str, Any], error: str | None = None, status: int = 200):
    return render_template(
        "campaigns/form.html",
        campaign=campaign,
        fields=fields,
        error=error,
        pages=db.session.scalars(select(Page).order_by(Page.name, Page.id)).all(),
        templates=db.session.scalars(select(Template).order_by(Template.name, Template.id)).all(),
        lists=db.session.scalars(select(ContactList).order_by(ContactList.name)).all(),
        segments=db.session.scalars(select(Segment).order_by(Segment.name)).all(),
        zone=tenant_zone(g.workspace.tenant).key,
    ), status


def _launch(campaign: Campaign) -> tuple[str, str]:
    """Start or schedule the campaign and launch its dispatch; the message to show and its category."""
    started = lifecycle.start_campaign(campaign)
    if started.running:
        if started.problem:
            return f"Campaign started, but {started.problem}. Sending begins when they are back.", "error"
        return f"Campaign {campaign.name} started: {campaign.total:,} recipients.", "success"
    if campaign.state is CampaignState.SCHEDULED:
        return f"Campaign {campaign.name} is scheduled for {local_time(campaign.scheduled_at)}.", "success"
    return f"Campaign {campaign.name} did not start. {campaign.state_detail or ''}".strip(), "error"


def _save(campaign: Campaign, creating: bool):
    fields = _submitted_fields()
    try:
        save_campaign(campaign, fields, g.workspace.tenant, creating=creating)
    except CampaignChangedMeanwhile as exc:
        return _campaign_block(campaign, 409, error=str(exc))
    except CampaignError as exc:
        return _editor(campaign, fields, str(exc), 400)
    if campaign.schedule is Schedule.MANUAL:
        message, category = (
            f"Campaign {campaign.name} saved as a draft. Start it when you are ready.",
            "success",
        )
    elif campaign.state is CampaignState.SCHEDULED:
        message, category = (
            f"Campaign {campaign.name} saved; it starts at {local_time(campaign.scheduled_at)}.",
            "success",
        )
    else:
        try:
            message, category = _launch(campaign)
        except CampaignError as exc:
            db.session.rollback()
            message, category = (
                f"Campaign {campaign.name} saved as a draft, but it did not start: {exc}",
                "error",
            )
    flash(message, category)
    return redirect(url_for("campaigns.show", campaign_id=campaign.id))


def _who(user_id: int | None) -> str:
    """The member who did something: their email, or "a former member" once they left or were deleted."""
    if user_id is None:
        return "a user"
    email = db.session.scalar(
        select(User.email).join(Membership, Membership.user_id == User.id).where(User.id == user_id)
    )
    return email or "a former member"


def pause_explanation(campaign: Campaign, page: Page | None) -> str:
    """The pause banner: the real cause, who or what paused it, and whether it ends by itself."""
    tenant_row = g.workspace.tenant
    midnight = f"midnight ({tenant_row.timezone})"
    page_name = f"the page {page.name}" if page is not None else "the page"
    detail = campaign.state_detail
    match campaign.paused_reason:
        case PauseReason.USER:
            when = f" on {local_time(campaign.paused_at)}" if campaign.paused_at else ""
            return f"Paused by {_who(campaign.paused_by_id)}{when}."
        case PauseReason.QUOTA:
            return (
                f"Paused: the workspace's daily quota of {tenant_row.daily_message_quota:,} messages is used "
                f"up. It resumes by itself at {midnight}."
            )
        case PauseReason.PAGE_CAP:
            cap = f" of {page.daily_cap:,} messages" if page is not None and page.daily_cap else ""
            return f"Paused: {page_name} reached its daily cap{cap}. It resumes by itself at {midnight}."
        case PauseReason.PAGE_THROTTLED:
            said = f"Paused: the provider is throttling {page_name}" + (f" ({detail})." if detail else ".")
            if campaign.resume_at:
                said += f" It resumes by itself at {local_time(campaign.resume_at)}."
            return said
        case PauseReason.PAGE_FAILING:
            return (
                f"Paused: {page_name} is failing" + (f": {detail}" if detail else "") + ". "
                "Fix the page's settings, then resume."
            )
        case PauseReason.ERROR_THRESHOLD:
            return (
                "Paused: too many recent sends failed" + (f" ({detail})" if detail else "") + ". "
                "Check the failures in the recipients report, then resume."
            )
        case PauseReason.SUSPENDED:
            why = (detail or "").removeprefix("suspended: ") or tenant_row.suspended_reason
            return (
                "Paused: the workspace was suspended" + (f" ({why})" if why else "") + ". "
                "It resumes when the workspace is reactivated."
            )
    return "Paused."


def _later_words(ahead: Forecast) -> str:
    """When the messages held back by a daily limit go, for the place of the ETA."""
    zone = g.workspace.tenant.timezone
    if ahead.days == 1:
        return f"tomorrow: after midnight ({zone}) for the {ahead.later:,} the daily limit holds back"
    return f"in about {ahead.days} days: the daily limit holds back {ahead.later:,}"


def _show_context(campaign: Campaign, **extra: Any) -> dict[str, Any]:
    """Everything the campaign page shows, read fresh."""
    facts = summary(campaign, delivery_counts(campaign.id))
    editable = campaign.state in NOT_STARTED
    started = not editable
    page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
    actions = set(allowed_actions(campaign)) if g.workspace.role.manages_members else set()
    audience = count_audience(campaign) if editable and page is not None else None
    ahead = None
    if audience is not None and audience.recipients:
        ahead = forecast(g.workspace.tenant, page, audience.recipients)
    elif campaign.state in (CampaignState.RUNNING, CampaignState.PAUSED) and facts["pending"]:
        ahead = forecast(g.workspace.tenant, page, facts["pending"])
    paused = campaign.state is CampaignState.PAUSED
    sending = campaign.state is CampaignState.RUNNING or campaign.paused_reason in DAILY_LIMIT_PAUSES
    replies, reply_count = campaign_replies(campaign.id, LATEST_REPLIES) if started else ([], 0)
    return {
        "campaign": campaign,
        "facts": facts,
        "page": page,
        "template": db.session.get(Template, campaign.template_id) if campaign.template_id else None,
        "actions": actions,
        "started": started,
        "audience": audience,
        "forecast_warning": ahead.warning() if ahead is not None else None,
        "later_words": _later_words(ahead) if ahead is not None and ahead.later and sending else None,
        "exclusion_text": EXCLUSION_TEXT,
        "pause_words": pause_explanation(campaign, page) if paused else None,
        "resume_blocked": lifecycle.why_it_cannot_send_today(campaign) if "resume" in actions else None,
        "resendable": resend_outcome(campaign.id) if "resend" in actions else None,
        "local_time": local_time,
        "problems": latest_problems(campaign, LATEST_PROBLEMS) if facts["failed"] or facts["unknown"] else [],
        "replies": replies,
        "reply_count": reply_count,
        "address_label": page.spec.address if page is not None else "address",
        "notice": None,
        "error": None,
        "outcome": None,
        "test_error": None,
        **extra,
    }


def _campaign_block(campaign: Campaign, status: int = 200, **extra: Any):
    """The campaign's live block for HTMX, else the whole page."""
    return render_page("campaigns/show.html", "campaign", status, **_show_context(campaign, **extra))


def _act(campaign_id: int, action: Callable[[Campaign], tuple[str, str]]):
    """Run ``action``; 409 with its reason when the campaign's state does not allow it."""
    campaign = db.get_or_404(Campaign, campaign_id)
    try:
        message, category = action(campaign)
    except CampaignError as exc:
        db.session.rollback()
        return _campaign_block(campaign, 409, error=str(exc))
    if request.htmx:
        return _campaign_block(campaign, notice=(category, message))
    flash(message, category)
    return redirect(url_for("campaigns.show", campaign_id=campaign.id))


def _percents(campaigns: list[Campaign]) -> dict[int, float]:
    """Progress of each campaign, from one grouped count of their deliveries."""
    started = [c for c in campaigns if c.state not in NOT_STARTED]
    counts: dict[int, dict[str, int]] = {
        c.id: {**{s.value: 0 for s in DeliveryState}, "replied": 0} for c in started
    }
    if started:
        rows = db.session.execute(
            select(Delivery.campaign_id, Delivery.state, func.count())
            .where(Delivery.campaign_id.in_(counts))
            .group_by(Delivery.campaign_id, Delivery.state)
        ).all()
        for campaign_id, state, count in rows:
            counts[campaign_id][DeliveryState(state).value] = count
    return {c.id: summary(c, counts[c.id])["percent"] for c in started}


# --------------------------------------------------------------------------- pages


@bp.get("/campaigns")
@member_required
def index():
    page_number = max(1, request.args.get("page", 1, type=int))
    campaigns = db.session.scalars(
        select(Campaign)
        .order_by(Campaign.created_at.desc(), Campaign.id.desc())
        .limit(CAMPAIGNS_PER_PAGE + 1)
        .offset((page_number - 1) * CAMPAIGNS_PER_PAGE)
    ).all()
    shown = list(campaigns[:CAMPAIGNS_PER_PAGE])
    page_ids = {c.page_id for c in shown if c.page_id}
    pages = {p.id: p for p in db.session.scalars(select(Page).where(Page.id.in_(page_ids)))}
    return render_template(
        "campaigns/index.html",
        campaigns=shown,
        pages=pages,
        percents=_percents(shown),
        page_number=page_number,
        more=len(campaigns) > CAMPAIGNS_PER_PAGE,
        local_time=local_time,
    )


@bp.route("/campaigns/new", methods=["GET", "POST"])
@member_required(manage=True)
def new():
    campaign = Campaign(state=CampaignState.DRAFT)
    if request.method == "POST":
        return _save(campaign, creating=True)
    fields = _fields_of(campaign)
    fields["name"] = ""
    return _editor(campaign, fields)


@bp.route("/campaigns/<int:campaign_id>/edit", methods=["GET", "POST"])
@member_required(manage=True)
def edit(campaign_id: int):
    campaign = db.get_or_404(Campaign, campaign_id)
    try:
        check_action(campaign, "edit")
    except CampaignError:
        message = f"A {campaign.state.value} campaign cannot be edited; duplicate it to send it again."
        return _campaign_block(campaign, 409, error=message)
    if request.method == "POST":
        return _save(campaign, creating=False)
    return _editor(campaign, _fields_of(campaign))


@bp.post("/campaigns/audience")
@member_required
def audience():
    """The live count under the editor: who will receive the campaign and who is left out, and why."""
    fragment_only("campaign editor")
    fields = _submitted_fields()
    draft = Campaign(
        page_id=_as_id(fields["page_id"]),
        template_id=_as_id(fields["template_id"]),
        body=fields["body"],
        subject=fields["subject"],
        audience={
            "all": bool(fields["audience_all"]),
            "lists": [i for i in map(_as_id, fields["list_ids"]) if i is not None],
            "segments": [i for i in map(_as_id, fields["segment_ids"]) if i is not None],
        },
    )
    problem = None
    if draft.page_id is None:
        problem = "Choose a page to see who the campaign reaches."
    elif not (draft.audience["all"] or draft.audience["lists"] or draft.audience["segments"]):
        problem = "Choose who receives it: all contacts, lists or segments."
    counted = None if problem else count_audience(draft)
    warning = None
    if counted is not None and counted.recipients:
        page = db.session.get(Page, draft.page_id)
        warning = forecast(g.workspace.tenant, page, counted.recipients).warning()
    return render_page(
        "campaigns/form.html",
        "audience_count",
        audience=counted,
        problem=problem,
        forecast_warning=warning,
        exclusion_text=EXCLUSION_TEXT,
    )


@bp.get("/campaigns/<int:campaign_id>")
@member_required
def show(campaign_id: int):
    campaign = db.get_or_404(Campaign, campaign_id)
    return _campaign_block(campaign)


# --------------------------------------------------------------------------- actions


def _pause(campaign: Campaign) -> tuple[str, str]:
    lifecycle.pause_campaign(campaign, by_user_id=current_user.id)
    return "Campaign paused. Messages already being sent finish; nothing new starts.", "success"


def _resume(campaign: Campaign) -> tuple[str, str]:
    problem = lifecycle.resume_campaign(campaign)
    if problem:
        return f"Campaign resumed, but {problem}. Sending goes on when they are back.", "error"
    return "Campaign resumed.", "success"


def _cancel(campaign: Campaign) -> tuple[str, str]:
    cancelled = lifecycle.cancel_campaign(campaign)
    return f"Campaign cancelled; {cancelled:,} messages will not be sent.", "success"


def _resend(campaign: Campaign) -> tuple[str, str]:
    resent, problem = lifecycle.resend_campaign(campaign)
    if problem:
        return f"{resent.text()} But {problem}: sending begins when they are back.", "error"
    return resent.text(), "success"


@bp.post("/campaigns/<int:campaign_id>/start")
@member_required(manage=True)
def start_campaign(campaign_id: int):
    return _act(campaign_id, _launch)


@bp.post("/campaigns/<int:campaign_id>/pause")
@member_required(manage=True)
def pause_campaign(campaign_id: int):
    return _act(campaign_id, _pause)


@bp.post("/campaigns/<int:campaign_id>/resume")
@member_required(manage=True)
def resume_campaign(campaign_id: int):
    return _act(campaign_id, _resume)


@bp.post("/campaigns/<int:campaign_id>/cancel")
@member_required(manage=True)
def cancel_campaign(campaign_id: int):
    return _act(campaign_id, _cancel)


@bp.post("/campaigns/<int:campaign_id>/resend")
@member_required(manage=True)
def resend_campaign(campaign_id: int):
    return _act(campaign_id, _resend)


@bp.post("/campaigns/<int:campaign_id>/duplicate")
@member_required(manage=True)
def duplicate_campaign(campaign_id: int):
    campaign = db.get_or_404(Campaign, campaign_id)
    copy = duplicate(campaign)
    flash(f"Campaign copied as {copy.name}, a draft. Check it and start it.", "success")
    return redirect(url_for("campaigns.edit", campaign_id=copy.id))


@bp.post("/campaigns/<int:campaign_id>/delete")
@member_required(manage=True)
def delete_campaign(campaign_id: int):
    campaign = db.get_or_404(Campaign, campaign_id)
    name = campaign.name
    try:
        campaigns_domain.delete_campaign(campaign)
    except CampaignError as exc:
        return _campaign_block(campaign, 409, error=str(exc))
    flash(f"Campaign {name} deleted, with its delivery history.", "success")
    return redirect(url_for("campaigns.index"))


def _test_recipient(page: Page) -> tuple[Contact | None, str]:
    """The contact (if any) and the address a test goes to: a contact id, or an address typed in."""
    raw_id = (request.form.get("contact_id") or "").strip()
    address = (request.form.get("address") or "").strip()
    if raw_id:
        contact = db.session.get(Contact, _as_id(raw_id)) if _as_id(raw_id) is not None else None
        if contact is None:
            raise CampaignError(f"There is no contact {raw_id}.")
        address = address or db.session.scalar(select(address_column(page)).where(Contact.id == contact.id))
        if not address:
            raise CampaignError(f"That contact has no {page.spec.address}.")
        return contact, address
    if not address:
        raise CampaignError(f"Type a contact id or a {page.spec.address}.")
    contact = db.session.scalar(select(Contact).where(address_column(page) == address).limit(1))
    return contact, address


@bp.post("/campaigns/<int:campaign_id>/test-send")
@member_required(manage=True)
def test_send(campaign_id: int):
    """Send the campaign's message, rendered for one contact, to one address now."""
    campaign = db.get_or_404(Campaign, campaign_id)
    outcome, problem = None, None
    try:
        page = usable_page(campaign)
        contact, address = _test_recipient(page)
        source = MessageSource.of(message_of(campaign))
        compiled = compile_template(source)
        rendered = compiled.render(contact_variables(contact) if contact is not None else SAMPLE_VARIABLES)
        if rendered.missing:
            raise CampaignError(f"This contact has no {', '.join(sorted(rendered.missing))}.")
        if not rendered.ok:
            raise CampaignError(rendered.too_long or f"The message has a problem: {rendered.problems[0]}")
        outcome = channel_checks.test_send(
            channel_checks.connection_for(page, allowed_private_hosts(current_app.config)),
            address,
            rendered.text,
            subject=rendered.subject or "Test from Crier",
            media_url=source.media_url,
            media_type=source.media_type,
        )
    except CampaignError as exc:
        problem = str(exc)
    return render_page(
        "campaigns/show.html",
        "test_send_result",
        400 if problem else 200,
        **_show_context(campaign, outcome=outcome, test_error=problem),
    )
