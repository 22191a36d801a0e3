"""A person's own account: password change, password reset by email, and verifying their address."""

from __future__ import annotations

import hashlib
import logging

import redis
from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required

from tasks.connections import redis_client
from tenants import mail
from tenants.accounts import (
    RESET_LINK_MAX_AGE,
    TEST_AUDIENCE,
    AccountError,
    TooManyAttempts,
    change_password,
    find_user,
    mark_verified,
    reset_token,
    set_password,
    user_for_reset,
    verify_email,
)
from tenants.db import db
from webapp.auth import start_session
from webapp.emails import external_url, send_verification
from webapp.forms import ChangePasswordForm, EmptyForm, ForgotPasswordForm, NewPasswordForm
from webapp.realtime import cut_off
from webapp.tenancy import SESSION_TENANT, choose_workspace

log = logging.getLogger(__name__)
bp = Blueprint("account", __name__)


@bp.app_context_processor
def _account_context() -> dict:
    return {"test_audience": TEST_AUDIENCE}


MAIL_PER_ADDRESS_SECONDS = 60  # at most one reset or verification email per address in this time
RESETS_PER_CLIENT_PER_HOUR = 10


def _allowed(kind: str, key: str, limit: int, seconds: int) -> bool:
    """Whether one more ``kind`` request for ``key`` fits in ``limit`` per ``seconds`` (counted in Redis,
    shared by every web process). Without Redis the request is let through: resets must still work."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    name = f"{current_app.config['REDIS_PREFIX']}:throttle:{kind}:{digest}"
    try:
        client = redis_client()
        pipe = client.pipeline()
        pipe.set(name, 0, ex=seconds, nx=True)
        pipe.incr(name)
        count = pipe.execute()[1]
    except redis.RedisError as exc:
        log.warning("throttle %s unavailable, letting the request through: %s", kind, exc)
        return True
    return count <= limit


# --------------------------------------------------------------------------- password change


def _sign_in_afresh(user, tenant_id: int | None = None) -> None:
    """After a new password (every session ended): commit, close the user's old sockets, and sign
    this browser in again under the new session version."""
    db.session.commit()
    cut_off(user.id)
    start_session(user)
    choose_workspace(user, tenant_id)


@bp.route("/account", methods=["GET", "POST"])
@login_required
def settings():
    """The signed-in person's account: their address and its verification, and a password change."""
    form = ChangePasswordForm()
    status = 200
    if form.validate_on_submit():
        user = current_user._get_current_object()
        try:
            change_password(
                user, form.current_password.data, form.new_password.data, request.remote_addr or "unknown"
            )
        except AccountError as exc:
            form.form_errors.append(str(exc))
            status = 429 if isinstance(exc, TooManyAttempts) else 400
        else:
            _sign_in_afresh(user, session.get(SESSION_TENANT))
            flash("Password changed. You are still signed in here; every other session has ended.", "success")
            return redirect(url_for("account.settings"))
    if form.errors and status == 200:
        status = 400
    return render_template("account/settings.html", form=form, resend_form=EmptyForm()), status


# --------------------------------------------------------------------------- password reset


@bp.route("/password/forgot", methods=["GET", "POST"])
def forgot():
    """Ask for a reset link. The answer, and about the time it takes, is the same whether or not
    the address has an account: the mail leaves from a thread."""
    form = ForgotPasswordForm()
    if not form.validate_on_submit():
        return render_template("account/forgot.html", form=form), 400 if form.errors else 200
    if not _allowed("reset-client", request.remote_addr or "unknown", RESETS_PER_CLIENT_PER_HOUR, 3600):
        form.form_errors.append("Too many reset requests from your network. Try again in an hour.")
        return render_template("account/forgot.html", form=form), 429
    try:
        user = find_user(form.email.data)
    except AccountError as exc:
        form.email.errors = [*form.email.errors, str(exc)]
        return render_template("account/forgot.html", form=form), 400
    email = user.email if user else form.email.data.strip().lower()
    minutes = int(RESET_LINK_MAX_AGE.total_seconds() // 60)
    if _allowed("mail", email, 1, MAIL_PER_ADDRESS_SECONDS) and user is not None:
        link = external_url("account.reset", token=reset_token(user))
        text = render_template("mail/reset.txt", user=user, link=link, minutes=minutes)
        mail.send_soon(user.email, "Choose a new Crier password", text)
    return render_template("account/forgot_sent.html", email=email, minutes=minutes)


def _dead_link(what: str):
    minutes = int(RESET_LINK_MAX_AGE.total_seconds() // 60)
    return render_template("account/dead_link.html", what=what, minutes=minutes), 410


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
def reset(token: str):
    """Choose a new password from an emailed link: every session ends, and this browser signs in."""
    user = user_for_reset(token)
    if user is None:
        return _dead_link("password reset")
    form = NewPasswordForm()
    if form.validate_on_submit():
        try:
            set_password(user, form.password.data)
        except AccountError as exc:
            form.password.errors = [*form.password.errors, str(exc)]
        else:
            mark_verified(user)  # the link reached their inbox
            _sign_in_afresh(user)
            flash("Your new password is set and you are signed in. Every other session has ended.", "success")
            return redirect(url_for("dashboard.index"))
    status = 400 if form.errors else 200
    return render_template("account/reset.html", form=form, email=user.email), status


# --------------------------------------------------------------------------- address verification


@bp.get("/verify-email/<token>")
def verify(token: str):
    user = verify_email(token)
    if user is None:
        return _dead_link("verification")
    db.session.commit()
    flash(f"Thank you: {user.email} is verified.", "success")
    return redirect(url_for("dashboard.index" if current_user.is_authenticated else "auth.login"))


@bp.post("/account/verification")
@login_required
def resend_verification():
    user = current_user._get_current_object()
    if user.email_verified:
        flash(f"{user.email} is already verified.", "info")
    elif not _allowed("mail", user.email, 1, MAIL_PER_ADDRESS_SECONDS):
        flash("We sent you a link less than a minute ago: look for it, or try again in a minute.", "info")
    elif send_verification(user):
        flash(f"We sent a new link to {user.email}.", "success")
    else:
        flash("The email could not be sent. Try again in a few minutes.", "error")
    return redirect(url_for("account.settings"))
