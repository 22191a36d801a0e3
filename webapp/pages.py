"""Pages (sending channels): connect, edit, verify, test-send, disable and delete."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select

from tasks import channel_checks
from tasks.providers.ssrf import allowed_private_hosts
from tenants import audit
from tenants.db import db
from tenants.pages import (
    PROVIDERS,
    DeliveryPolicy,
    Page,
    PageError,
    ProviderKind,
    apply_form,
    check_page_allowance,
    disable,
    enable,
    record_verification,
)
from webapp.rendering import render_page
from webapp.tenancy import member_required

bp = Blueprint("pages", __name__)


def _kind(raw: str | None) -> ProviderKind:
    try:
        return ProviderKind(raw or "")
    except ValueError:
        abort(404)


def sandbox_base_url(kind: ProviderKind) -> str:
    sandbox = current_app.config["SANDBOX_URL"].rstrip("/")
    if kind is ProviderKind.SMTP:
        return f"smtp://{urlsplit(sandbox).hostname}:{current_app.config['SANDBOX_SMTP_PORT']}"
    if kind is ProviderKind.WEBHOOK:
        return f"{sandbox}/webhook/{g.workspace.tenant.slug}"
    return sandbox


def webhook_url(page: Page) -> str:
    base = current_app.config["PUBLIC_URL"].rstrip("/") or request.url_root.rstrip("/")
    return base + url_for("webhooks.receive", kind=page.kind.value, page_id=page.id)


def _number(raw: str | None, kind=float):
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise PageError(f"{raw!r} is not a number.") from None


def _apply_request_form(page: Page) -> None:
    form = request.form
    spec = PROVIDERS[page.kind]
    base_url = sandbox_base_url(page.kind) if form.get("use_sandbox") else form.get("base_url", "")
    send_rate = _number(form.get("send_rate"))
    apply_form(
        page,
        name=form.get("name", ""),
        base_url=base_url,
        send_rate=spec.default_rate if send_rate is None else send_rate,
        daily_cap=_number(form.get("daily_cap"), int),
        credentials={f.key: form.get(f"credential_{f.key}", "") for f in spec.credentials},
        settings={f.key: form.get(f"setting_{f.key}", "") for f in spec.settings},
        delivery_policy=DeliveryPolicy(form.get("delivery_policy") or DeliveryPolicy.AT_MOST_ONCE.value),
    )


@bp.get("/pages")
@member_required
def index():
    pages = db.session.scalars(select(Page).order_by(Page.name, Page.id)).all()
    return render_template("pages/index.html", pages=pages, providers=PROVIDERS)


@bp.route("/pages/new", methods=["GET", "POST"])
@member_required(manage=True)
def new():
    if not request.values.get("kind"):
        return redirect(url_for("pages.index"))  # the list is where a channel kind is chosen
    kind = _kind(request.values.get("kind"))
    page = Page(kind=kind)
    error = None
    if request.method == "POST":
        try:
            check_page_allowance(g.workspace.tenant.max_pages)
            _apply_request_form(page)
        except PageError as exc:
            error = str(exc)
        else:
            db.session.add(page)
            db.session.flush()
            audit.record(
                "page.created",
                tenant_id=page.tenant_id,
                target=f"page {page.id} {page.name}",
                after={"kind": page.kind.value, "rate": page.send_rate, "daily_cap": page.daily_cap},
            )
            db.session.commit()
            flash(f"Page {page.name} connected. Verify it to check the credentials.", "success")
            return redirect(url_for("pages.show", page_id=page.id))
    return render_template(
        "pages/form.html",
        page=page,
        spec=PROVIDERS[kind],
        error=error,
        form=request.form,
        hints={},
        creating=True,
    ), 400 if error else 200


@bp.route("/pages/<int:page_id>", methods=["GET", "POST"])
@member_required
def show(page_id: int):
    page = db.get_or_404(Page, page_id)
    error = None
    if request.method == "POST":
        if not g.workspace.role.manages_members:
            abort(403)
        try:
            _apply_request_form(page)
        except PageError as exc:
            error = str(exc)
            db.session.rollback()
            page = db.get_or_404(Page, page_id)
        else:
            db.session.commit()
            flash(f"Page {page.name} saved.", "success")
            return redirect(url_for("pages.show", page_id=page.id))
    return render_template(
        "pages/form.html",
        page=page,
        spec=page.spec,
        error=error,
        form=request.form,
        hints=page.credential_hints(),
        creating=False,
        webhook_url=webhook_url(page),
    ), 400 if error else 200


@bp.post("/pages/<int:page_id>/disable")
@member_required(manage=True)
def disable_page(page_id: int):
    page = db.get_or_404(Page, page_id)
    disable(page, request.form.get("reason") or "disabled by a member")
    db.session.commit()
    flash(f"Page {page.name} is disabled; nothing is sent through it until you enable it.", "info")
    return redirect(url_for("pages.show", page_id=page.id))


@bp.post("/pages/<int:page_id>/enable")
@member_required(manage=True)
def enable_page(page_id: int):
    page = db.get_or_404(Page, page_id)
    enable(page)
    db.session.commit()
    flash(f"Page {page.name} is active again.", "success")
    return redirect(url_for("pages.show", page_id=page.id))


@bp.post("/pages/<int:page_id>/delete")
@member_required(manage=True)
def delete(page_id: int):
    page = db.get_or_404(Page, page_id)
    name = page.name
    audit.record("page.deleted", tenant_id=page.tenant_id, target=f"page {page.id} {name}")
    db.session.delete(page)
    db.session.commit()
    flash(f"Page {name} deleted.", "success")
    return redirect(url_for("pages.index"))


@bp.post("/pages/<int:page_id>/verify")
@member_required
def verify(page_id: int):
    page = db.get_or_404(Page, page_id)
    result = channel_checks.verify(
        channel_checks.connection_for(page, allowed_private_hosts(current_app.config))
    )
    record_verification(page, result.ok, result.detail)
    notice = None
    if result.ok and page.base_url.startswith(current_app.config["SANDBOX_URL"].rstrip("/")):
        notice = channel_checks.subscribe_sandbox_receipts(
            current_app.config["SANDBOX_URL"], page, webhook_url(page)
        )
    db.session.commit()
    return render_page(
        "pages/form.html",
        "verify_result",
        page=page,
        spec=page.spec,
        result=result,
        notice=notice,
        form={},
        hints=page.credential_hints(),
        creating=False,
        webhook_url=webhook_url(page),
    )


@bp.post("/pages/<int:page_id>/test-send")
@member_required(manage=True)
def test_send(page_id: int):
    page = db.get_or_404(Page, page_id)
    address = (request.form.get("address") or "").strip()
    text = (request.form.get("text") or "").strip()
    outcome, status = None, 200
    if not address or not text:
        error, status = f"Type a {page.spec.address} and a message.", 400
    else:
        error = None
        outcome = channel_checks.test_send(
            channel_checks.connection_for(page, allowed_private_hosts(current_app.config)),
            address,
            text,
            subject=request.form.get("subject") or "Test from Crier",
        )
    return render_page(
        "pages/form.html",
        "test_send_result",
        status,
        page=page,
        spec=page.spec,
        outcome=outcome,
        test_error=error,
        form={},
        hints=page.credential_hints(),
        creating=False,
        webhook_url=webhook_url(page),
    )
