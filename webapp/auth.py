"""Sign-up, sign-in and sign-out."""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from tenants.accounts import AccountError, authenticate, end_sessions, sign_up
from tenants.db import db
from webapp.emails import send_verification
from webapp.forms import LoginForm, SignupForm
from webapp.realtime import cut_off
from webapp.tenancy import choose_workspace

bp = Blueprint("auth", __name__)

VERIFICATION_NOT_SENT = (
    "We could not send the email that verifies your address. Use “Resend the link” above in a few minutes."
)


def start_session(user) -> None:
    """A fresh session for a fresh sign-in: nothing from before survives (no fixation)."""
    session.clear()
    login_user(user)
    session.permanent = True


def _safe_next() -> str:
    """Where to go after signing in: a path on this site only. Browsers drop tabs and newlines from
    URLs (``/\t/evil.example`` becomes ``//evil.example``), so any control character or white space
    is refused, then a target with a scheme or a host."""
    target = request.args.get("next", "")
    parts = urlsplit(target)
    if (
        target.startswith("/")
        and not any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in target)
        and "\\" not in target
        and not target.startswith("//")
        and not parts.scheme
        and not parts.netloc
    ):
        return target
    return url_for("dashboard.index")


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.index"))
    form = SignupForm()
    if form.validate_on_submit():
        try:
            user, tenant = sign_up(
                form.email.data, form.password.data, form.workspace_name.data, form.timezone.data
            )
        except AccountError as exc:
            form.form_errors.append(str(exc))
        else:
            start_session(user)
            choose_workspace(user, tenant.id)
            flash(f"Welcome to Crier! Your workspace {tenant.name} is ready.", "success")
            if send_verification(user):
                flash(f"We sent a link to {user.email}: open it to verify your address.", "info")
            else:
                flash(VERIFICATION_NOT_SENT, "error")
            return redirect(url_for("dashboard.index"))
    return render_template("auth/signup.html", form=form), 400 if form.errors or form.form_errors else 200


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        try:
            user = authenticate(form.email.data, form.password.data, request.remote_addr or "unknown")
        except AccountError as exc:
            form.form_errors.append(str(exc))
            status = 429 if getattr(exc, "retry_after", None) else 401
        else:
            start_session(user)
            choose_workspace(user)
            return redirect(_safe_next())
    elif form.errors:
        status = 400
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout():
    """Sign out everywhere: every saved cookie of this user stops working and their sockets close."""
    user_id = current_user.id
    end_sessions(current_user)
    db.session.commit()
    logout_user()
    session.clear()
    cut_off(user_id)
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
