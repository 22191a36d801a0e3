"""Campaigns over the API: the editor's rules, the campaign page's actions, its status and its report.

Saving goes through ``tenants.campaigns.save_campaign`` (the editor's save); every action through
``tasks.lifecycle`` (the one owner of campaign transitions, their launch, live events and audit), so
a campaign started here behaves exactly as one started in the browser. An action the campaign's
state does not allow is a 409 problem saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from spectree import Response
from sqlalchemy import select

from tasks import lifecycle
from tasks.progress import add_rate_and_eta, campaign_summary
from tenants.api_tokens import Scope
from tenants.campaigns import (
    Campaign,
    CampaignChangedMeanwhile,
    CampaignError,
    CampaignState,
    DeliveryState,
    PauseReason,
    Resent,
    Schedule,
    allowed_actions,
    check_action,
    delete_campaign,
    duplicate,
    save_campaign,
    summary,
)
from tenants.db import db
from tenants.models import Tenant
from tenants.provider_codes import readable_reason
from tenants.reports import campaign_kind, error_counts, provider_facts, recipient_page, state_counts
from webapp.api import bp, spec
from webapp.api.auth import current_token, requires
from webapp.api.common import (
    ERRORS,
    WRITE_ERRORS,
    IdPageQuery,
    PageInfo,
    PageQuery,
    RowId,
    StoredText,
    body,
    get_or_404,
    keyset_page,
)
from webapp.api.problems import ApiProblem

EARLIEST, LATEST = datetime(2000, 1, 1), datetime(2999, 12, 31)  # wall-clock bounds of a schedule
MAX_DELIVERY_ID = 2**63 - 1  # deliveries have BIGINT ids
API_ACTIONS = ("edit", "delete", "start", "pause", "resume", "cancel", "duplicate", "resend")


def _reasonable_time(moment: datetime) -> datetime:
    """A time a schedule can hold (far-off years overflow when moved between time zones)."""
    if not EARLIEST <= moment.replace(tzinfo=None) <= LATEST:
        raise ValueError("must be between the years 2000 and 2999")
    return moment


# --------------------------------------------------------------------------- models


class AudienceIn(BaseModel):
    """Who receives it: every contact, or the contacts of some lists and segments (or-ed)."""

    model_config = ConfigDict(extra="forbid")

    all: bool = Field(default=False, description="Every contact of the workspace")
    list_ids: list[RowId] = Field(default_factory=list, max_length=1000)
    segment_ids: list[RowId] = Field(default_factory=list, max_length=1000)


class CampaignFields(BaseModel):
    """The campaign editor's fields."""

    model_config = ConfigDict(extra="forbid")

    template_id: RowId | None = Field(default=None, description="The template it sends (or write body)")
    subject: Annotated[StoredText, Field(max_length=300)] | None = Field(
        default=None, description="Without a template, for email: the subject"
    )
    body: StoredText | None = Field(
        default=None, description="Without a template: the message, with {{variables}}"
    )
    schedule: Schedule = Field(
        default=Schedule.MANUAL,
        description="now: start when saved; at: start at scheduled_at; manual: stay a draft until started",
    )
    scheduled_at: Annotated[datetime, AfterValidator(_reasonable_time)] | None = Field(
        default=None, description="With schedule 'at'; without an offset, in the workspace's time zone"
    )
    send_rate: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        allow_inf_nan=False,
        description="Messages per second, below the page's",
    )


class CampaignIn(CampaignFields):
    """A new campaign."""

    name: Annotated[StoredText, Field(min_length=1, max_length=200)]
    page_id: RowId = Field(description="The page it sends through")
    audience: AudienceIn


class CampaignPatch(CampaignFields):
    """The fields to change (a draft or scheduled campaign only); those left out stay as they are."""

    name: Annotated[StoredText, Field(min_length=1, max_length=200)] | None = None
    page_id: RowId | None = None
    audience: AudienceIn | None = None


class AudienceOut(BaseModel):
    all: bool
    list_ids: list[int]
    segment_ids: list[int]


class CampaignOut(BaseModel):
    """A campaign: what it sends, to whom, when, and where it stands."""

    id: int
    name: str
    state: CampaignState
    paused_reason: PauseReason | None
    state_detail: str | None = Field(description="Why it paused or failed, in words")
    page_id: int | None
    template_id: int | None
    subject: str | None
    body: str
    audience: AudienceOut
    schedule: Schedule
    scheduled_at: datetime | None
    send_rate: float | None
    total: int = Field(description="Recipients chosen at start")
    excluded: dict[str, int] = Field(description="Left out at start, by reason")
    actions: list[str] = Field(description="What its state allows now")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    paused_at: datetime | None
    resume_at: datetime | None = Field(description="A pause for a daily limit or throttling ends then")
    finished_at: datetime | None

    @classmethod
    def of(cls, campaign: Campaign) -> CampaignOut:
        audience = campaign.audience or {}
        return cls(
            id=campaign.id,
            name=campaign.name,
            state=campaign.state,
            paused_reason=campaign.paused_reason,
            state_detail=campaign.state_detail,
            page_id=campaign.page_id,
            template_id=campaign.template_id,
            subject=campaign.subject,
            body=campaign.body or "",
            audience=AudienceOut(
                all=bool(audience.get("all")),
                list_ids=list(audience.get("lists") or []),
                segment_ids=list(audience.get("segments") or []),
            ),
            schedule=campaign.schedule or Schedule.MANUAL,
            scheduled_at=campaign.scheduled_at,
            send_rate=campaign.send_rate,
            total=campaign.total or 0,
            excluded=dict(campaign.exclusions or {}),
            actions=[action for action in allowed_actions(campaign) if action in API_ACTIONS],
            created_at=campaign.created_at,
            updated_at=campaign.updated_at,
            started_at=campaign.started_at,
            paused_at=campaign.paused_at,
            resume_at=campaign.resume_at,
            finished_at=campaign.finished_at,
        )


class CampaignSaved(CampaignOut):
    """The campaign as saved; saved with schedule now (or at a time), it was also started (or scheduled)."""

    notice: str | None = Field(
        default=None, description="Why it did not start (it stays a draft), or that sending begins later"
    )


class CampaignList(PageInfo):
    data: list[CampaignOut]


class CampaignQuery(IdPageQuery):
    state: CampaignState | None = Field(default=None, description="Only campaigns in this state")


class ResentOut(BaseModel):
    unknown: int = Field(description="Sent again: the outcome was unknown")
    failed: int = Field(description="Sent again: failures worth another try")
    left_alone: int = Field(description="Not sent again: permanent failures")

    @classmethod
    def of(cls, resent: Resent) -> ResentOut:
        return cls(unknown=resent.unknown, failed=resent.failed, left_alone=resent.left_alone)


class ActionResult(BaseModel):
    """What an action did, and the campaign after it."""

    message: str
    campaign: CampaignOut
    workers_unreachable: str | None = Field(
        default=None, description="Dispatch could not be queued now; it is launched when workers are back"
    )
    not_sent: int | None = Field(default=None, description="cancel: messages that will not be sent")
    resent: ResentOut | None = Field(default=None, description="resend: what goes again")


class CampaignStatus(BaseModel):
    """Where a campaign stands: counters, progress, rate and ETA (what the live campaign page shows)."""

    id: int
    name: str
    state: CampaignState
    paused_reason: PauseReason | None
    resume_at: datetime | None
    detail: str | None
    total: int
    processed: int = Field(description="Done: sent, failed, unknown or cancelled")
    pending: int
    in_flight: int
    sent: int = Field(description="Accepted by the provider (delivered and read included)")
    delivered: int
    read: int
    replied: int
    failed: int
    unknown: int = Field(description="The worker stopped while sending: may or may not have arrived")
    cancelled: int
    percent: float
    excluded: dict[str, int]
    receipts: bool = Field(description="False: the channel never reports deliveries or reads")
    delivery_rate: float | None
    read_rate: float | None
    reply_rate: float | None
    failure_rate: float | None
    rate: float = Field(description="Messages per second over the last seconds")
    eta_seconds: int | None = Field(
        description="Seconds to finish at the current rate; null when not running"
    )
    held_back: int = Field(
        description="Pending messages today's quota or the page's cap leave for later days"
    )


class ErrorCount(BaseModel):
    code: str
    count: int
    reason: str = Field(description="What the code means")


class CampaignStats(BaseModel):
    """The report's numbers: recipients per state, rates, and the error codes met."""

    id: int
    state: CampaignState
    total: int
    by_state: dict[str, int] = Field(description="Recipients in each delivery state")
    sent: int
    delivered: int
    read: int
    replied: int
    failed: int
    unknown: int
    cancelled: int
    excluded: dict[str, int]
    receipts: bool
    delivery_rate: float | None = Field(description="Delivered of sent (null: the channel has no receipts)")
    read_rate: float | None = Field(description="Read of delivered")
    reply_rate: float | None = Field(description="Replied of delivered (of sent without receipts)")
    failure_rate: float | None = Field(description="Failed of those done")
    errors: list[ErrorCount] = Field(description="Error codes, most frequent first")


class DeliveryOut(BaseModel):
    """One recipient of a campaign and what became of their message."""

    id: int
    contact_id: int | None = Field(description="null when the contact was deleted since")
    address: str
    state: DeliveryState
    attempts: int
    provider_message_id: str | None
    error_code: str | None
    error_text: str | None = Field(description="As the provider said it")
    reason: str = Field(description="Why it failed, in words")
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    replied_at: datetime | None


class DeliveryList(PageInfo):
    data: list[DeliveryOut]


class DeliveryQuery(PageQuery):
    after: int | None = Field(
        default=None, ge=0, le=MAX_DELIVERY_ID, description="The next_after cursor of the previous page"
    )
    state: DeliveryState | None = Field(default=None, description="Only recipients in this state")
    error_code: Annotated[StoredText, Field(min_length=1, max_length=50)] | None = None


# --------------------------------------------------------------------------- the editor's fields


def _workspace() -> Tenant:
    return db.session.get(Tenant, current_token().tenant_id)


def _fields_of(campaign: Campaign) -> dict[str, Any]:
    """A saved campaign's values as the editor's fields."""
    audience = campaign.audience or {}
    return {
        "name": campaign.name or "",
        "page_id": campaign.page_id,
        "template_id": campaign.template_id,
        "body": campaign.body or "",
        "subject": campaign.subject or "",
        "audience_all": "1" if audience.get("all") else "",
        "list_ids": list(audience.get("lists") or []),
        "segment_ids": list(audience.get("segments") or []),
        "schedule": (campaign.schedule or Schedule.MANUAL).value,
        "scheduled_at": campaign.scheduled_at.isoformat() if campaign.scheduled_at else "",
        "send_rate": repr(campaign.send_rate) if campaign.send_rate else "",
    }


def _as_form(values: dict[str, Any]) -> dict[str, Any]:
    """Request values (set ones only, for a patch) as the editor's fields."""
    form: dict[str, Any] = {}
    for name, value in values.items():
        if name == "audience":
            value = value or {}  # null: nobody, which the editor refuses
            form |= {
                "audience_all": "1" if value.get("all") else "",
                "list_ids": value.get("list_ids", []),
                "segment_ids": value.get("segment_ids", []),
            }
        elif name == "scheduled_at":
            form[name] = value.isoformat() if value is not None else ""
        elif name == "send_rate":
            form[name] = repr(value) if value is not None else ""
        elif name == "schedule":
            form[name] = Schedule(value).value
        else:
            form[name] = value if value is not None else ""
    return form


def _save(campaign: Campaign, fields: dict[str, Any], creating: bool) -> CampaignSaved:
    """The editor's save, then its start when the schedule says now (or at a time)."""
    try:
        starts = save_campaign(campaign, fields, _workspace(), creating=creating)
    except CampaignChangedMeanwhile as exc:
        raise ApiProblem("conflict", str(exc)) from None
    except CampaignError as exc:
        raise ApiProblem("invalid-request", str(exc)) from None
    notice = None
    if starts:
        try:
            started = lifecycle.start_campaign(campaign)
        except CampaignError as exc:
            db.session.rollback()
            notice = f"Saved as a draft, but it did not start: {exc}"
        else:
            if started.problem:
                notice = f"Started, but {started.problem}; sending begins when they are back."
            elif not started.running and campaign.state is CampaignState.FAILED:
                notice = f"It did not start: {campaign.state_detail or 'nobody to send to'}."
    return CampaignSaved(**CampaignOut.of(campaign).model_dump(), notice=notice)


def _location(campaign: Campaign) -> dict[str, str]:
    return {"Location": f"{bp.url_prefix}/campaigns/{campaign.id}"}


# --------------------------------------------------------------------------- campaigns


@bp.get("/campaigns")
@requires(Scope.READ)
@spec.validate(query=CampaignQuery, resp=Response(HTTP_200=CampaignList, **ERRORS), tags=["campaigns"])
def list_campaigns(query: CampaignQuery):
    """The workspace's campaigns in id order (keyset pages), optionally in one state."""
    statement = select(Campaign)
    if query.state is not None:
        statement = statement.where(Campaign.state == query.state)
    campaigns, info = keyset_page(statement, Campaign, query)
    return CampaignList(data=[CampaignOut.of(c) for c in campaigns], next_after=info.next_after)


@bp.post("/campaigns")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(json=CampaignIn, resp=Response(HTTP_201=CampaignSaved, **WRITE_ERRORS), tags=["campaigns"])
def create_campaign(json: CampaignIn):
    """A new campaign, checked as the editor checks it; with schedule now it starts at once, with
    schedule at it is scheduled, with manual it stays a draft."""
    campaign = Campaign(state=CampaignState.DRAFT)
    saved = _save(campaign, _as_form(body(json).model_dump()), creating=True)
    return saved, 201, _location(campaign)


@bp.get("/campaigns/<int:campaign_id>")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=CampaignOut, **ERRORS), tags=["campaigns"])
def get_campaign(campaign_id: int):
    """One campaign."""
    return CampaignOut.of(get_or_404(Campaign, campaign_id))


@bp.patch("/campaigns/<int:campaign_id>")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(json=CampaignPatch, resp=Response(HTTP_200=CampaignSaved, **WRITE_ERRORS), tags=["campaigns"])
def update_campaign(campaign_id: int, json: CampaignPatch):
    """Change a draft or scheduled campaign (409 once it started: duplicate it instead)."""
    json, campaign = body(json), get_or_404(Campaign, campaign_id)
    try:
        check_action(campaign, "edit")
    except CampaignError:
        raise ApiProblem(
            "conflict", f"A {campaign.state.value} campaign cannot be changed; duplicate it to send it again."
        ) from None
    fields = _fields_of(campaign) | _as_form(json.model_dump(exclude_unset=True))
    return _save(campaign, fields, creating=False)


@bp.delete("/campaigns/<int:campaign_id>")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(resp=Response(HTTP_204=None, **WRITE_ERRORS), tags=["campaigns"])
def remove_campaign(campaign_id: int):
    """Delete a campaign with its delivery history (409 while it is running or paused)."""
    campaign = get_or_404(Campaign, campaign_id)
    try:
        delete_campaign(campaign)
    except CampaignError as exc:
        db.session.rollback()
        raise ApiProblem("conflict", str(exc)) from None
    return "", 204


# --------------------------------------------------------------------------- actions


def _act(campaign_id: int, action: Callable[[Campaign], dict[str, Any]]) -> ActionResult:
    """Run ``action`` (through ``tasks.lifecycle``); 409 with the reason when it cannot be done."""
    campaign = get_or_404(Campaign, campaign_id)
    try:
        result = action(campaign)
    except CampaignError as exc:
        db.session.rollback()
        raise ApiProblem("conflict", str(exc)) from None
    return ActionResult(campaign=CampaignOut.of(campaign), **result)


def _unreachable(problem: str | None) -> dict[str, Any]:
    return {"workers_unreachable": problem} if problem else {}


def _start(campaign: Campaign) -> dict[str, Any]:
    started = lifecycle.start_campaign(campaign)
    if started.running:
        message = f"Campaign started: {campaign.total:,} recipients."
    elif campaign.state is CampaignState.SCHEDULED:
        message = f"Campaign scheduled for {campaign.scheduled_at.isoformat()}."
    else:
        message = f"The campaign did not start. {campaign.state_detail or ''}".strip()
    return {"message": message, **_unreachable(started.problem)}


def _pause(campaign: Campaign) -> dict[str, Any]:
    lifecycle.pause_campaign(campaign, by_user_id=current_token().created_by_user_id)
    return {"message": "Campaign paused. Messages already being sent finish; nothing new starts."}


def _resume(campaign: Campaign) -> dict[str, Any]:
    problem = lifecycle.resume_campaign(campaign)
    return {"message": "Campaign resumed.", **_unreachable(problem)}


def _cancel(campaign: Campaign) -> dict[str, Any]:
    cancelled = lifecycle.cancel_campaign(campaign)
    return {"message": f"Campaign cancelled; {cancelled:,} messages will not be sent.", "not_sent": cancelled}


def _resend(campaign: Campaign) -> dict[str, Any]:
    resent, problem = lifecycle.resend_campaign(campaign)
    return {"message": resent.text(), "resent": ResentOut.of(resent), **_unreachable(problem)}


ACTION_RESPONSE = Response(HTTP_200=ActionResult, **WRITE_ERRORS)


@bp.post("/campaigns/<int:campaign_id>/start")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(resp=ACTION_RESPONSE, tags=["campaigns"])
def start_campaign(campaign_id: int):
    """Start a draft now (or schedule it, when its schedule is a time to come)."""
    return _act(campaign_id, _start)


@bp.post("/campaigns/<int:campaign_id>/pause")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(resp=ACTION_RESPONSE, tags=["campaigns"])
def pause_campaign(campaign_id: int):
    """Pause a running campaign: messages being sent finish, nothing new starts."""
    return _act(campaign_id, _pause)


@bp.post("/campaigns/<int:campaign_id>/resume")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(resp=ACTION_RESPONSE, tags=["campaigns"])
def resume_campaign(campaign_id: int):
    """Resume a paused campaign (409 while a daily limit is used up, saying when it resets)."""
    return _act(campaign_id, _resume)


@bp.post("/campaigns/<int:campaign_id>/cancel")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(resp=ACTION_RESPONSE, tags=["campaigns"])
def cancel_campaign(campaign_id: int):
    """Stop for good: every message not yet sent is cancelled."""
    return _act(campaign_id, _cancel)


@bp.post("/campaigns/<int:campaign_id>/resend")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(resp=ACTION_RESPONSE, tags=["campaigns"])
def resend_campaign(campaign_id: int):
    """Send again the messages whose outcome is unknown and the failures worth another try."""
    return _act(campaign_id, _resend)


@bp.post("/campaigns/<int:campaign_id>/duplicate")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(resp=Response(HTTP_201=CampaignOut, **WRITE_ERRORS), tags=["campaigns"])
def duplicate_campaign(campaign_id: int):
    """A draft copy of the campaign (any state), to check and start."""
    copy = duplicate(get_or_404(Campaign, campaign_id))
    return CampaignOut.of(copy), 201, _location(copy)


# --------------------------------------------------------------------------- progress and report


@bp.get("/campaigns/<int:campaign_id>/status")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=CampaignStatus, **ERRORS), tags=["campaigns"])
def campaign_status(campaign_id: int):
    """State, counters, percent done, the current rate and the ETA."""
    campaign = get_or_404(Campaign, campaign_id)
    data = campaign_summary(campaign.id)
    add_rate_and_eta(campaign.id, data)
    return CampaignStatus.model_validate(data)


@bp.get("/campaigns/<int:campaign_id>/stats")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=CampaignStats, **ERRORS), tags=["campaigns"])
def campaign_stats(campaign_id: int):
    """Delivery, read, reply and failure rates and counts, and the error codes met (the report's)."""
    campaign = get_or_404(Campaign, campaign_id)
    facts = summary(campaign)
    kind = campaign_kind(campaign)
    return CampaignStats(
        **{name: facts[name] for name in CampaignStats.model_fields if name in facts},
        by_state={state.value: count for state, count in state_counts(campaign.id).items()},
        errors=[
            ErrorCount(code=code, count=count, reason=readable_reason(kind, code, None))
            for code, count in error_counts(campaign.id)
        ],
    )


@bp.get("/campaigns/<int:campaign_id>/deliveries")
@requires(Scope.READ)
@spec.validate(query=DeliveryQuery, resp=Response(HTTP_200=DeliveryList, **ERRORS), tags=["campaigns"])
def list_deliveries(campaign_id: int, query: DeliveryQuery):
    """The campaign's recipients in delivery id order (keyset pages), by state or error code."""
    campaign = get_or_404(Campaign, campaign_id)
    page = recipient_page(campaign, query.state, query.error_code, query.after or 0, query.limit)
    facts = provider_facts([row.delivery_id for row in page.rows])
    return DeliveryList(
        data=[
            DeliveryOut(
                id=row.delivery_id,
                contact_id=row.contact_id,
                address=row.address,
                state=row.state,
                attempts=row.attempts,
                provider_message_id=facts[row.delivery_id].provider_message_id,
                error_code=row.error_code,
                error_text=facts[row.delivery_id].error_text,
                reason=row.reason,
                sent_at=row.sent_at,
                delivered_at=row.delivered_at,
                read_at=row.read_at,
                replied_at=row.replied_at,
            )
            for row in page.rows
        ],
        next_after=page.next_after,
    )
