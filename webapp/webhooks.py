"""Provider callbacks: verified before anything is parsed, stored, then handed to a worker."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, request

from tasks.broker import WorkersUnreachable
from tasks.receipts import process_webhook_event
from tenants.crypto import CredentialsUnreadable
from tenants.db import db
from tenants.events import callback_dedupe_key, store_webhook_event
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


def _signed_with(page: Page) -> tuple[str | None, str | None]:
    """The request's signature (Evolution: its bearer token) and signed timestamp, for the page's kind."""
    headers = request.headers
    if page.kind in META_KINDS:
        return headers.get("X-Hub-Signature-256"), None
    if page.kind is ProviderKind.EVOLUTION:
        return headers.get("Authorization", "").removeprefix("Bearer ").strip() or None, None
    return headers.get("X-Crier-Signature"), headers.get("X-Crier-Timestamp")


def _authentic(page: Page, body: bytes) -> int | None:
    """None when the request is signed by the page's secret, else the status to answer (401/403)."""
    secrets = _credentials(page)
    given, stamp = _signed_with(page)
    if page.kind in META_KINDS:
        expected = meta_signature(secrets.get("app_secret", ""), body) if secrets.get("app_secret") else None
    elif page.kind is ProviderKind.EVOLUTION:
        expected = secrets.get("webhook_token") or None
    elif page.kind is ProviderKind.WEBHOOK:
        secret = secrets.get("signing_secret")
        expected = crier_signature(secret, stamp or "", body) if secret and fresh(stamp) else None
    else:
        return 404
    if not given:
        return 401
    return None if expected and same(expected, given) else 403


def _dedupe_key(page: Page, body: bytes) -> str:
    """What makes a callback the same request again: its signature, timestamp and body. Evolution's
    bearer token is the same on every request, so there the body alone is the key."""
    given, stamp = _signed_with(page)
    if page.kind is ProviderKind.EVOLUTION:
        return callback_dedupe_key(body)
    return callback_dedupe_key((given or "").encode(), (stamp or "").encode(), body)


def _bounded_body() -> bytes:
    """The body, reading at most :data:`MAX_CALLBACK_BYTES` + 1 bytes whatever the transfer encoding
    (a chunked body has no Content-Length to check first); 413 beyond the limit."""
    if (request.content_length or 0) > MAX_CALLBACK_BYTES:
        abort(413)
    stream = request.stream
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_CALLBACK_BYTES:
        chunk = stream.read(MAX_CALLBACK_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_CALLBACK_BYTES:
        abort(413)
    return b"".join(chunks)


@bp.post("/webhooks/<kind>/<int:page_id>")
@signed_public
def receive(kind: str, page_id: int):
    page = _page(kind, page_id)
    body = _bounded_body()
    refused = _authentic(page, body)
    if refused:
        return Response(
            "signature required" if refused == 401 else "bad signature", refused, mimetype="text/plain"
        )
    with tenant(db.session, page.tenant_id):
        event_id = store_webhook_event(
            page.id, page.kind, body.decode("utf-8", "replace"), _dedupe_key(page, body)
        )
    if event_id is None:  # answered 2xx all the same: providers retry what is not
        return Response("EVENT_RECEIVED (duplicate: already received, ignored)", 200, mimetype="text/plain")
    try:
        process_webhook_event.send(event_id)
    except WorkersUnreachable as exc:
        log.warning("webhook event %s stored; the sweeper will process it (%s)", event_id, exc)
    return Response("EVENT_RECEIVED", 200, mimetype="text/plain")
