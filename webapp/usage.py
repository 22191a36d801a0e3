"""The tenant's usage page: quota use per day and per page, with the plan's limits, and its CSV."""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, g, render_template

from tenants.campaigns import tenant_zone
from tenants.spreadsheet import neutralise_row
from tenants.usage import (
    USAGE_CSV_HEADER,
    limits_in_use,
    pages_in_usage,
    today,
    usage_by_day,
    usage_csv_rows,
)
from webapp.tenancy import member_required

bp = Blueprint("usage", __name__)

HISTORY_DAYS = 30


@bp.get("/usage")
@member_required
def index():
    tenant = g.workspace.tenant
    plan_name, limits = limits_in_use(tenant)
    history = usage_by_day(tenant, HISTORY_DAYS)
    return render_template(
        "usage/index.html",
        plan_name=plan_name,
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
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(USAGE_CSV_HEADER)
    writer.writerows(neutralise_row(row) for row in usage_csv_rows(tenant, HISTORY_DAYS))
    return Response(
        buffer.getvalue(),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{tenant.slug}-usage.csv"',
            "Cache-Control": "no-store",
        },
    )
