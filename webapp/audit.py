"""A workspace's own audit log at /audit, for its owners and admins.

The same entries the platform admin sees, only this workspace's, with times in its own zone.
"""

from __future__ import annotations

from flask import Blueprint, abort, g, url_for
from htmx_flask import request

from tenants.audit import ACTION_TEXT, ENTRIES_PER_PAGE, entries
from tenants.campaigns import tenant_zone
from webapp.rendering import render_page
from webapp.tenancy import member_required

bp = Blueprint("audit", __name__)

MAX_ID = 2**63 - 1  # audit ids are BIGINT


@bp.get("/audit")
@member_required(manage=True)
def index():
    """This workspace's entries, newest first: filter by action, page back by id."""
    action = request.args.get("action", "").strip()
    if action and action not in ACTION_TEXT:
        abort(400, description=f"Unknown action {action!r}.")
    raw_before = request.args.get("before", "").strip()
    if raw_before and not (raw_before.isdecimal() and int(raw_before) <= MAX_ID):
        abort(400, description=f"The position in the log must be a whole number, not {raw_before!r}.")
    before = int(raw_before) if raw_before else None
    found = entries(
        g.workspace.tenant.id, before_id=before, action=action or None, limit=ENTRIES_PER_PAGE + 1
    )
    shown = found[:ENTRIES_PER_PAGE]
    filters = {"action": action} if action else {}
    response = render_page(
        "audit/index.html",
        "audit_entries",
        entries=shown,
        action=action,
        action_text=ACTION_TEXT,
        zone=tenant_zone(g.workspace.tenant),
        older_url=url_for("audit.index", **filters, before=shown[-1].id)
        if len(found) > ENTRIES_PER_PAGE
        else None,
        newest_url=url_for("audit.index", **filters) if before else None,
    )
    response.headers["Cache-Control"] = "no-store"
    return response
