"""The dashboard a member lands on after signing in: today's sends against the quota, campaigns in
motion, 30 days of activity by channel, the latest failures and the first steps of a new workspace.

``GET /dashboard?block=<name>`` from HTMX answers one panel (``static/dashboard.js`` re-fetches
them as live events arrive); each panel reads only what it shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, g, make_response, redirect, render_template, url_for
from flask_login import current_user
from htmx_flask import request

from tasks.broker import WorkersUnreachable
from tasks.system import ping_workers
from tenants.campaigns import tenant_zone
from tenants.dashboard import activity_charts, any_campaign, campaigns_in_view, first_steps, recent_failures
from tenants.models import Tenant
from tenants.usage import activity_by_day, today
from webapp.rendering import render_page
from webapp.tenancy import member_required

bp = Blueprint("dashboard", __name__)

TEMPLATE = "dashboard.html"


def _today(tenant: Tenant) -> dict[str, Any]:
    return {"today": today(tenant)}


def _campaigns(tenant: Tenant) -> dict[str, Any]:
    return {"campaigns": campaigns_in_view(), "any_campaign": any_campaign()}


def _activity(tenant: Tenant) -> dict[str, Any]:
    return {"charts": activity_charts(activity_by_day(tenant))}


def _failures(tenant: Tenant) -> dict[str, Any]:
    return {"failures": recent_failures(tenant)}


PANELS: dict[str, Callable[[Tenant], dict[str, Any]]] = {
    "today": _today,
    "campaigns": _campaigns,
    "activity": _activity,
    "failures": _failures,
}


@bp.get("/")
def home():
    return redirect(url_for("dashboard.index" if current_user.is_authenticated else "auth.login"))


@bp.get("/dashboard")
@member_required
def index():
    tenant = g.workspace.tenant
    context: dict[str, Any] = {"zone": tenant_zone(tenant)}
    panel = request.args.get("block", "")
    if request.htmx and panel in PANELS:
        return render_page(TEMPLATE, panel, **context, **PANELS[panel](tenant))
    for read in PANELS.values():
        context.update(read(tenant))
    response = make_response(render_template(TEMPLATE, steps=first_steps(), **context))
    response.vary.add("HX-Request")  # the same URL answers panels to HTMX
    return response


@bp.post("/workers/ping")
@member_required
def ping():
    """Ask any worker to answer over the live connection (HTMX fragment)."""
    try:
        ping_workers.send(g.workspace.tenant.id, time.time())
    except WorkersUnreachable as exc:
        return render_page(TEMPLATE, "worker_status", 503, worker_error=str(exc))
    return render_page(TEMPLATE, "worker_status", ping_sent=True)
