"""The dashboard a member lands on after signing in."""

from __future__ import annotations

import time

from flask import Blueprint, g, redirect, render_template, url_for
from flask_login import current_user

from tasks.broker import WorkersUnreachable
from tasks.system import ping_workers
from webapp.rendering import render_page
from webapp.tenancy import member_required

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def home():
    return redirect(url_for("dashboard.index" if current_user.is_authenticated else "auth.login"))


@bp.get("/dashboard")
@member_required
def index():
    return render_template("dashboard.html")


@bp.post("/workers/ping")
@member_required
def ping():
    """Ask any worker to answer over the live connection (HTMX fragment)."""
    try:
        ping_workers.send(g.workspace.tenant.id, time.time())
    except WorkersUnreachable as exc:
        return render_page("dashboard.html", "worker_status", 503, worker_error=str(exc))
    return render_page("dashboard.html", "worker_status", ping_sent=True)
