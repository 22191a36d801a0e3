"""Provider callbacks: verified before anything is parsed, stored, then handed to a worker."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, request

from tasks.broker import WorkersUnreachable
from tasks.receipts import process_webhook_event
from tenants.crypto import CredentialsUnreadable
from tenants.db import db
from tenants.events import WebhookEvent
from tenants.pages import Page, ProviderKind
from tenants.scoping import all_tenants, tenant
from tenants.signatures import crier_signature, fresh, meta_signature, same

bp = Blueprint("webhooks", __name__)
log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 1024 * 1024
META_KINDS = (ProviderKind.MESSENGER, ProviderKind.WHATSAPP)


def signed_public(view):
    """Mark a view as public but signature-checked (the isolation walk expects 401/403 from it)."""
    view.signed_public = True
    return view


def _page(kind: str, page_id: int) -> Page:
    with all_tenants(db.session):
        page = db.session.get(Page, page_id)
    if page is None or page.kind.value != kind:
        abort(404)
    return page


def _credentials(page: Page) -> dict[str, str]:
    try:
        return page.credentials
    except CredentialsUnreadable:
        log.error("webhook for page %s: credentials unreadable", page.id)
        abort(403)


@bp.get("/webhooks/<kind>/<int:page_id>")
@signed_public
def handshake(kind: str, page_id: int):
    """Meta's subscription check: echo ``hub.challenge`` when the verify token matches."""
    page = _page(kind, page_id)
    if page.kind not in META_KINDS:
        abort(405)
    token = _credentials(page).get("verify_token", "")
    if (
        request.args.get("hub.mode") != "subscribe"
        or not token
        or not same(token, request.args.get("hub.verify_token"))
    ):
        return Response("verify token mismatch", 403, mimetype="text/plain")
    return Response(request.args.get("hub.challenge", ""), 200, mimetype="text/plain")


def _authentic(page: Page, body: bytes) -> int | None:
    """None when the request is signed by the page's secret, else the status to answer (401/403)."""
    secrets = _credentials(page)
    headers = request.headers
    if page.kind in META_KINDS:
        given = headers.get("X-Hub-Signature-256")
        expected = meta_signature(secrets.get("app_secret", ""), body) if secrets.get("app_secret") else None
    elif page.kind is ProviderKind.EVOLUTION:
        given = headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        expected = secrets.get("webhook_token") or None
    elif page.kind is ProviderKind.WEBHOOK:
        given, stamp = headers.get("X-Crier-Signature"), headers.get("X-Crier-Timestamp")
        secret = secrets.get("signing_secret")
        expected = crier_signature(secret, stamp or "", body) if secret and fresh(stamp) else None
    else:
        return 404
    if not given:
        return 401
    return None if expected and same(expected, given) else 403


@bp.post("/webhooks/<kind>/<int:page_id>")
@signed_public
def receive(kind: str, page_id: int):
    page = _page(kind, page_id)
    if (request.content_length or 0) > MAX_CALLBACK_BYTES:
        abort(413)
    body = request.get_data(cache=False)
    refused = _authentic(page, body)
    if refused:
        return Response(
            "signature required" if refused == 401 else "bad signature", refused, mimetype="text/plain"
        )
    with tenant(db.session, page.tenant_id):
        event = WebhookEvent(page_id=page.id, kind=page.kind, body=body.decode("utf-8", "replace"))
        db.session.add(event)
        db.session.commit()
        event_id = event.id
    try:
        process_webhook_event.send(event_id)
    except WorkersUnreachable as exc:
        log.warning("webhook event %s stored; the sweeper will process it (%s)", event_id, exc)
    return Response("EVENT_RECEIVED", 200, mimetype="text/plain")
