"""Verify and Test send against the sandbox provider, and its receipts coming back to Crier."""

from __future__ import annotations

import logging
import re
import time

import httpx
from sqlalchemy import select

from tenants.db import db
from tenants.events import Receipt, ReceiptStatus
from tenants.pages import Page
from tenants.scoping import all_tenants
from tests.conftest import PASSWORD, csrf_token

SANDBOX_WHATSAPP = {
    "name": "Sandbox WhatsApp",
    "use_sandbox": "1",
    "setting_phone_number_id": "109876543210001",
    "setting_api_version": "v21.0",
    "credential_access_token": "sandbox-token-abcdef-7777",
    "credential_app_secret": "sandbox-app-secret-8888",
    "credential_verify_token": "sandbox-verify-9999",
}
SECRETS = ("sandbox-token-abcdef-7777", "sandbox-app-secret-8888", "sandbox-verify-9999")


def _page_id(app) -> int:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(select(Page.id))


def _ledger(sandbox) -> list[dict]:
    return httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=5).json()["entries"]


def test_verify_shows_what_the_provider_says(app, auth, sandbox):
    auth.signup()
    assert auth.post("/pages/new?kind=whatsapp", SANDBOX_WHATSAPP).status_code == 302
    page_id = _page_id(app)
    html = auth.post(f"/pages/{page_id}/verify", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "Verified:" in html and "<html" not in html
    with app.app_context(), all_tenants(db.session):
        page = db.session.get(Page, page_id)
        assert page.last_verify_ok is True and page.last_verified_at is not None


def test_verify_reports_a_bad_token(app, auth, sandbox):
    auth.signup()
    auth.post(
        "/pages/new?kind=whatsapp", {**SANDBOX_WHATSAPP, "credential_access_token": "expired-token-123456"}
    )
    html = auth.post(f"/pages/{_page_id(app)}/verify", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "Failed:" in html and "190" in html and "expired-token-123456" not in html


def test_test_send_shows_the_providers_answer(app, auth, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    auth.signup()
    auth.post("/pages/new?kind=whatsapp", SANDBOX_WHATSAPP)
    page_id = _page_id(app)
    sent = auth.post(
        f"/pages/{page_id}/test-send",
        {"address": "+5511961234567", "text": "Olá from Crier"},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    message_id = re.search(r"message id is <code>([^<]+)</code>", sent).group(1)
    entries = _ledger(sandbox)
    assert [(e["recipient"], e["body"], e["message_id"]) for e in entries] == [
        ("5511961234567", "Olá from Crier", message_id)
    ]

    refused = auth.post(
        f"/pages/{page_id}/test-send",
        {"address": "+5511961230000", "text": "hi"},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    assert "Not sent (permanent), code 131026" in refused
    missing = auth.post(
        f"/pages/{page_id}/test-send", {"address": "", "text": "hi"}, headers={"HX-Request": "true"}
    )
    assert missing.status_code == 400 and "Type a phone number and a message." in missing.get_data(
        as_text=True
    )
    for secret in SECRETS:
        assert secret not in caplog.text and secret not in sent and secret not in refused


def test_sandbox_receipts_reach_crier_and_become_receipts(app, live_server, worker_process, sandbox):
    http = httpx.Client(base_url=live_server, timeout=15)
    try:
        token = csrf_token(http.get("/signup").text)
        http.post(
            "/signup",
            data={
                "csrf_token": token,
                "email": "ops@acme.example",
                "workspace_name": "Acme",
                "password": PASSWORD,
                "timezone": "UTC",
            },
        )
        token = csrf_token(http.get("/pages/new?kind=whatsapp").text)
        assert (
            http.post("/pages/new?kind=whatsapp", data={"csrf_token": token, **SANDBOX_WHATSAPP}).status_code
            == 302
        )
        page_id = _page_id(app)
        verified = http.post(
            f"/pages/{page_id}/verify", data={"csrf_token": token}, headers={"HX-Request": "true"}
        )
        assert "receipts from the sandbox now arrive at" in verified.text, verified.text
        httpx.put(
            f"{sandbox.url}/_sandbox/config",
            json={"delivered_after_ms": 50, "read_after_ms": 100, "read_share": 1.0},
            timeout=5,
        ).raise_for_status()
        sent = http.post(
            f"/pages/{page_id}/test-send",
            data={"csrf_token": token, "address": "+5511961234567", "text": "hello"},
            headers={"HX-Request": "true"},
        )
        message_id = re.search(r"message id is <code>([^<]+)</code>", sent.text).group(1)
    finally:
        http.close()

    deadline, statuses = time.monotonic() + 20, []
    while time.monotonic() < deadline and len(statuses) < 2:
        with app.app_context(), all_tenants(db.session):
            statuses = db.session.scalars(
                select(Receipt.status).where(Receipt.provider_message_id == message_id).order_by(Receipt.id)
            ).all()
        time.sleep(0.2)
    # The two callbacks are posted separately and may be stored in either order.
    assert sorted(statuses) == sorted([ReceiptStatus.DELIVERED, ReceiptStatus.READ])
