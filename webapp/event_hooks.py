"""Settings → Webhooks: the workspace's subscriptions to Crier's events (owners and admins only).

Subscribe a URL (refused when it points inside), see its signing secret once, change its events or
turn it off, send a test event, read its delivery log, delete it.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from tasks import event_hooks as hooks
from tenants import event_hooks
from tenants.db import db
from tenants.event_hooks import EVENT_TYPES, EventHookError, EventSubscription
from webapp.rendering import render_page
from webapp.tenancy import member_required

bp = Blueprint("event_hooks", __name__)


def _index(status: int = 200, *, form=None, chosen=(), error: str | None = None, created=None):
    """The list of webhooks and the form to subscribe one."""
    page = render_template(
        "event_hooks/index.html",
        subscriptions=event_hooks.subscriptions(),
        event_types=EVENT_TYPES,
        form=form or {},
        chosen=list(chosen),
        error=error,
        created=created,
    )
    return page, status


def _show(
    subscription: EventSubscription,
    status: int = 200,
    *,
    error: str | None = None,
    test_error: str | None = None,
    tested=None,
):
    """One webhook: its settings, test button and delivery log (for HTMX, the log alone)."""
    return render_page(
        "event_hooks/show.html",
        "delivery_log",
        status,
        subscription=subscription,
        log=event_hooks.delivery_log(subscription),
        event_types=EVENT_TYPES,
        error=error,
        test_error=test_error,
        tested=tested,
    )


@bp.get("/settings/webhooks")
@member_required(manage=True)
def index():
    return _index()


@bp.post("/settings/webhooks")
@member_required(manage=True)
def create():
    chosen = request.form.getlist("events")
    try:
        created = hooks.subscribe(request.form.get("url", ""), chosen)
    except EventHookError as exc:
        db.session.rollback()
        return _index(400, error=str(exc), form=request.form, chosen=chosen)
    db.session.commit()
    return _index(created=created)  # the only time the secret is shown: no redirect, no flash


@bp.route("/settings/webhooks/<int:event_subscription_id>", methods=["GET", "POST"])
@member_required(manage=True)
def show(event_subscription_id: int):
    subscription = db.get_or_404(EventSubscription, event_subscription_id)
    if request.method == "GET":
        return _show(subscription)
    try:
        event_hooks.change_subscription(
            subscription, events=request.form.getlist("events"), active=bool(request.form.get("active"))
        )
    except EventHookError as exc:
        db.session.rollback()
        return _show(db.get_or_404(EventSubscription, event_subscription_id), 400, error=str(exc))
    db.session.commit()
    flash("Webhook saved." if subscription.active else "Webhook saved and turned off.", "success")
    return redirect(url_for("event_hooks.show", event_subscription_id=subscription.id))


@bp.post("/settings/webhooks/<int:event_subscription_id>/test")
@member_required(manage=True)
def test(event_subscription_id: int):
    subscription = db.get_or_404(EventSubscription, event_subscription_id)
    if not subscription.active:
        return _show(subscription, 400, test_error="Turn the webhook on to send it a test event.")
    return _show(subscription, tested=hooks.send_test_event(subscription))


@bp.post("/settings/webhooks/<int:event_subscription_id>/delete")
@member_required(manage=True)
def delete(event_subscription_id: int):
    subscription = db.get_or_404(EventSubscription, event_subscription_id)
    url = subscription.url
    event_hooks.delete_subscription(subscription)
    db.session.commit()
    flash(f"Crier no longer sends events to {url}.", "success")
    return redirect(url_for("event_hooks.index"))
