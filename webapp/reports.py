"""A campaign's report: every recipient and what became of their message, its CSV, and its timeline.

The queries live in ``tenants.reports``; these views read the filters from the query string,
format times in the workspace's zone and keep the answers out of shared caches (they name people).
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, abort, g, request

from tenants.campaigns import NOT_STARTED, Campaign, DeliveryState, tenant_zone
from tenants.db import db
from tenants.reports import (
    STATE_LABELS,
    error_counts,
    export_rows,
    recipient_page,
    state_counts,
    timeline,
)
from webapp.rendering import csv_download, render_page
from webapp.tenancy import member_required

bp = Blueprint("reports", __name__)


def _state_filter() -> DeliveryState | None:
    raw = request.args.get("state", "").strip()
    if not raw or raw == "all":
        return None
    try:
        return DeliveryState(raw)
    except ValueError:
        abort(400, f"There is no delivery state {raw[:40]!r}.")


def _error_filter() -> str | None:
    return request.args.get("error_code", "").strip()[:50] or None


def _after() -> int:
    raw = request.args.get("after", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 18:
        abort(400, "after must be a delivery id.")
    return int(raw)


def local_moment(moment: datetime | None) -> str:
    """A moment in the workspace's zone, to the second."""
    if moment is None:
        return ""
    return f"{moment.astimezone(tenant_zone(g.workspace.tenant)):%Y-%m-%d %H:%M:%S}"


def step_words(seconds: int) -> str:
    """A timeline bucket's length in words: "second", "5 minutes", "hour"."""
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % length == 0:
            count = seconds // length
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds} seconds"


def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/campaigns/<int:campaign_id>/report")
@member_required
def report(campaign_id: int):
    """Recipients, 50 at a time after a delivery id, filtered by state and error code."""
    campaign = db.get_or_404(Campaign, campaign_id)
    state, error_code, after = _state_filter(), _error_filter(), _after()
    counts = state_counts(campaign.id)
    response = render_page(
        "reports/report.html",
        "recipients",
        campaign=campaign,
        page=recipient_page(campaign, state, error_code, after),
        state=state,
        error_code=error_code,
        after=after,
        counts=counts,
        total=sum(counts.values()),
        errors=error_counts(campaign.id, state),
        state_labels=STATE_LABELS,
        started=campaign.state not in NOT_STARTED,
        zone=tenant_zone(g.workspace.tenant).key,
        local=local_moment,
    )
    return _private(response)


@bp.get("/campaigns/<int:campaign_id>/export.csv")
@member_required
def export(campaign_id: int):
    """Every matching recipient as CSV, safe to open in a spreadsheet, streamed row by row."""
    campaign = db.get_or_404(Campaign, campaign_id)
    state, error_code = _state_filter(), _error_filter()
    zone = tenant_zone(g.workspace.tenant)
    return csv_download(
        lambda: export_rows(campaign, zone, state, error_code), f"campaign-{campaign.id}-recipients.csv"
    )


@bp.get("/campaigns/<int:campaign_id>/timeline", endpoint="timeline")
@member_required
def timeline_chart(campaign_id: int):
    """Sends and receipts over the campaign's life (loaded lazily by the report and campaign pages)."""
    campaign = db.get_or_404(Campaign, campaign_id)
    line = timeline(campaign.id)
    return render_page(
        "reports/timeline.html",
        "timeline",
        campaign=campaign,
        line=line,
        step_words=step_words(line.step) if line else "",
    )
