"""The platform admin's console at /admin: tenants, plans, limits, suspension and the audit log.

Only platform admins get past :func:`_platform_admins_only`; everyone else (signed in or not) gets 404,
so the console's existence is not revealed. Work here spans tenants, so each view opts out of
tenant scoping explicitly with ``all_tenants``. Reads come from ``tenants.platform``; every change
goes through ``tasks.lifecycle``, which audits it and lets running campaigns follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user
from htmx_flask import request
from sqlalchemy import select

from tasks import lifecycle
from tenants import platform
from tenants.audit import ACTION_TEXT, ENTRIES_PER_PAGE, entries
from tenants.db import db
from tenants.models import Tenant, TenantStatus
from tenants.plans import LIMIT_KEYS, LIMITS, Plan, PlanError, limits_form_values
from tenants.scoping import all_tenants
from webapp.rendering import render_page

bp = Blueprint("admin", __name__, url_prefix="/admin")

UTC_ZONE = ZoneInfo("UTC")
MAX_ID = 2**31 - 1  # tenant and plan ids are INTEGER columns
MAX_AUDIT_ID = 2**63 - 1  # audit ids are BIGINT


@bp.before_request
def _platform_admins_only() -> None:
    if not (current_user.is_authenticated and current_user.is_platform_admin):
        abort(404)


def _int_arg(name: str, what: str, *, default: int | None = None, maximum: int = MAX_ID) -> int | None:
    """A positive whole-number query argument; 400 with a message for anything else."""
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdecimal() or not 1 <= int(raw) <= maximum:
        abort(400, description=f"{what} must be a whole number, not {raw!r}.")
    return int(raw)


def _count(number: int, word: str) -> str:
    return f"{number:,} {word}{'' if number == 1 else 's'}"


def _limit_values() -> dict[str, str]:
    """The limits a form sent (a field left out is not a blank one: it changes nothing)."""
    return {key: request.form[key] for key in LIMIT_KEYS if key in request.form}


# --------------------------------------------------------------------------- tenants


@bp.get("")
def index():
    """Every tenant: search, filter by status and plan, sort, 50 a page."""
    search = request.args.get("q", "").strip()[:200]
    status = request.args.get("status", "")
    sort = request.args.get("sort", "name")
    descending = request.args.get("dir", "asc") == "desc"
    plan_arg = request.args.get("plan", "").strip()
    plan_id = platform.NO_PLAN if plan_arg == "none" else _int_arg("plan", "The plan")
    page_number = _int_arg("page", "The page number", default=1)
    try:
        directory = platform.tenant_directory(search, status, plan_id, sort, descending, page_number)
    except platform.DirectoryError as exc:
        abort(400, description=str(exc))
    filters = {
        "q": search,
        "status": status,
        "plan": plan_arg,
        "sort": sort,
        "dir": "desc" if descending else "asc",
    }
    return render_page(
        "admin/index.html",
        "directory",
        directory=directory,
        filters=filters,
        plans=platform.plans_with_tenant_counts(),
        sorts=platform.SORTS,
        statuses=[s.value for s in TenantStatus],
        query_args={key: value for key, value in filters.items() if value},
    )


def _tenant_page(tenant_id: int, status: int = 200, **extra: Any):
    facts = platform.tenant_facts(tenant_id)
    if facts is None:
        abort(404)
    with all_tenants(db.session):
        plans = db.session.scalars(select(Plan).order_by(Plan.name)).all()
    context = {
        "facts": facts,
        "tenant": facts.tenant,
        "plans": plans,
        "limit_values": limits_form_values(facts.tenant),
        "limits": LIMITS,
        "zone": UTC_ZONE,
        "action_text": ACTION_TEXT,
        "notice": None,
        "error": None,
        **extra,
    }
    return render_page("admin/tenant.html", "tenant", status, **context)


@bp.get("/tenants/<int:tenant_id>")
def tenant(tenant_id: int):
    return _tenant_page(tenant_id)


def _change(tenant_id: int, change: Callable[[Tenant], str], **on_error: Any):
    """Run ``change`` on the tenant (under all_tenants); the page with the outcome, 400 on a PlanError."""
    with all_tenants(db.session):
        tenant_row = db.get_or_404(Tenant, tenant_id)
        try:
            message = change(tenant_row)
        except PlanError as exc:
            db.session.rollback()
            return _tenant_page(tenant_id, 400, error=str(exc), **on_error)
    if request.htmx:
        return _tenant_page(tenant_id, notice=message)
    flash(message, "success")
    return redirect(url_for("admin.tenant", tenant_id=tenant_id))


@bp.post("/tenants/<int:tenant_id>/plan")
def tenant_plan(tenant_id: int):
    raw = request.form.get("plan_id", "").strip()

    def change(tenant_row: Tenant) -> str:
        plan = db.session.get(Plan, int(raw)) if raw.isdecimal() and int(raw) <= MAX_ID else None
        if plan is None:
            raise PlanError("Choose one of the plans.")
        changes = lifecycle.change_plan(tenant_row, plan)
        changed = platform.describe_changes(changes)
        return f"{tenant_row.name} is on {plan.name} now" + (f": {changed}." if changed else ".")

    return _change(tenant_id, change)


@bp.post("/tenants/<int:tenant_id>/limits")
def tenant_limits(tenant_id: int):
    values = _limit_values()

    def change(tenant_row: Tenant) -> str:
        changes = lifecycle.change_limits(tenant_row, values)
        if not changes:
            return f"Limits of {tenant_row.name} saved; the limits that apply did not change."
        return f"Limits of {tenant_row.name} saved: {platform.describe_changes(changes)}."

    return _change(tenant_id, change, limit_values=values)


@bp.post("/tenants/<int:tenant_id>/suspend")
def tenant_suspend(tenant_id: int):
    reason = request.form.get("reason", "")

    def change(tenant_row: Tenant) -> str:
        paused = lifecycle.suspend_tenant(tenant_row, reason)
        return f"{tenant_row.name} is suspended; {_count(len(paused), 'running campaign')} paused."

    return _change(tenant_id, change, reason=reason)


@bp.post("/tenants/<int:tenant_id>/reactivate")
def tenant_reactivate(tenant_id: int):
    def change(tenant_row: Tenant) -> str:
        resumed = lifecycle.reactivate_tenant(tenant_row)
        return f"{tenant_row.name} is active again; {_count(len(resumed), 'campaign')} resumed."

    return _change(tenant_id, change)


# --------------------------------------------------------------------------- plans


def _plan_form(plan: Plan) -> dict[str, str]:
    return {"name": plan.name or "", **{key: str(getattr(plan, key)) for key in LIMIT_KEYS}}


def _submitted_plan() -> dict[str, str]:
    return {"name": request.form.get("name", ""), **{key: request.form.get(key, "") for key in LIMIT_KEYS}}


def _save_submitted_plan(plan_row: Plan) -> tuple[list[int], str | None]:
    """Save the plan form into ``plan_row``: the tenants whose limits changed, or the error."""
    form = _submitted_plan()
    limits = {key: form[key] for key in LIMIT_KEYS}
    try:
        changed = lifecycle.save_plan(
            plan_row, form["name"], limits, is_default=bool(request.form.get("is_default"))
        )
    except PlanError as exc:
        db.session.rollback()
        return [], str(exc)
    return changed, None


@bp.route("/plans", methods=["GET", "POST"])
def plans():
    """Every plan with the number of tenants on it, and a form for a new one."""
    form, error = {"name": "", **dict.fromkeys(LIMIT_KEYS, "")}, None
    if request.method == "POST":
        form = _submitted_plan()
        with all_tenants(db.session):
            _, error = _save_submitted_plan(Plan())
        if error is None:
            flash(f"Plan {form['name'].strip()} created.", "success")
            return redirect(url_for("admin.plans"))
    return render_template(
        "admin/plans.html", plans=platform.plans_with_tenant_counts(), form=form, limits=LIMITS, error=error
    ), 400 if error else 200


@bp.route("/plans/<int:plan_id>", methods=["GET", "POST"])
def plan(plan_id: int):
    """Change a plan: tenants on it without an override of a limit follow at once."""
    with all_tenants(db.session):
        plan_row = db.get_or_404(Plan, plan_id)
        form, error = _plan_form(plan_row), None
        if request.method == "POST":
            form = _submitted_plan()
            changed, error = _save_submitted_plan(plan_row)
            if error is None:
                saved = f"Plan {plan_row.name} saved; limits changed for {_count(len(changed), 'workspace')}."
                flash(saved, "success")
                return redirect(url_for("admin.plan", plan_id=plan_id))
        plan_row = db.session.get(Plan, plan_id)
    tenants_on_plan = {p.id: n for p, n in platform.plans_with_tenant_counts()}.get(plan_id, 0)
    return render_template(
        "admin/plan.html",
        plan=plan_row,
        form=form,
        limits=LIMITS,
        error=error,
        tenants_on_plan=tenants_on_plan,
    ), 400 if error else 200


# --------------------------------------------------------------------------- audit


def _audit_tenant_filter(raw: str) -> tuple[int | None, str]:
    """The tenant filter: an id or a slug; (tenant id, what to show in the field)."""
    raw = raw.strip()
    if not raw:
        return None, ""
    if raw.isdecimal() and int(raw) <= MAX_ID:
        return int(raw), raw
    found = platform.tenant_by_slug(raw)
    if found is None:
        abort(400, description=f"There is no workspace with the slug {raw!r}.")
    return found.id, raw


@bp.get("/audit")
def audit():
    """Every audit entry, newest first: filter by action and by tenant, page back by id."""
    action = request.args.get("action", "").strip()
    if action and action not in ACTION_TEXT:
        abort(400, description=f"Unknown action {action!r}.")
    tenant_id, tenant_text = _audit_tenant_filter(request.args.get("tenant", ""))
    before = _int_arg("before", "The position in the log", maximum=MAX_AUDIT_ID)
    with all_tenants(db.session):
        found = entries(tenant_id, before_id=before, action=action or None, limit=ENTRIES_PER_PAGE + 1)
    shown = found[:ENTRIES_PER_PAGE]
    filters = {key: value for key, value in {"action": action, "tenant": tenant_text}.items() if value}
    older = url_for("admin.audit", **filters, before=shown[-1].id) if len(found) > ENTRIES_PER_PAGE else None
    return render_page(
        "admin/audit.html",
        "audit_entries",
        entries=shown,
        tenant_names=platform.tenant_names({e.tenant_id for e in shown if e.tenant_id is not None}),
        action=action,
        tenant_text=tenant_text,
        action_text=ACTION_TEXT,
        zone=UTC_ZONE,
        older_url=older,
        newest_url=url_for("admin.audit", **filters) if before else None,
    )
