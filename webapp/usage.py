"""The tenant's usage page: quota use per day and per page, with the plan's limits, and its CSV."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, g, render_template

from tenants.campaigns import tenant_zone
from tenants.plans import limits_of
from tenants.spreadsheet import neutralise_row
from tenants.usage import (
    USAGE_CSV_HEADER,
    pages_in_usage,
    today,
    usage_by_day,
    usage_csv_rows,
)
from webapp.rendering import csv_download
from webapp.tenancy import member_required

bp = Blueprint("usage", __name__)

HISTORY_DAYS = 30


@bp.get("/usage")
@member_required
def index():
    tenant = g.workspace.tenant
    plan, limits = limits_of(tenant)
    history = usage_by_day(tenant, HISTORY_DAYS)
    return render_template(
        "usage/index.html",
        plan_name=plan.name if plan is not None else None,
        limits=limits,
        today=today(tenant),
        zone=tenant_zone(tenant),
        history=history,
        pages=pages_in_usage(tenant, history),
    )


@bp.get("/usage.csv")
@member_required
def export():
    """The last 30 days per day and page, safe to open in a spreadsheet; never cached."""
    tenant = g.workspace.tenant

    def rows() -> Iterator[list[str]]:
        yield neutralise_row(USAGE_CSV_HEADER)
        for row in usage_csv_rows(tenant, HISTORY_DAYS):
            yield neutralise_row(row)

    return csv_download(rows, f"{tenant.slug}-usage.csv")
