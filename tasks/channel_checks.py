"""One-off provider calls the web app makes for a person: "Verify" and "Test send"."""

from __future__ import annotations

import asyncio
import secrets

import httpx

from tasks.providers import adapter_for
from tasks.providers.base import OutgoingMessage, PageConnection, SendResult, VerifyResult
from tasks.providers.http import make_client
from tasks.providers.ssrf import UrlGuard
from tenants.pages import Page


def connection_for(page: Page, allowed_hosts: frozenset[str] = frozenset()) -> PageConnection:
    """What an adapter needs to reach ``page`` (credentials decrypted, only in memory).

    ``allowed_hosts`` ("host:port") are internal hosts the server lets this page reach (the sandbox).
    """
    return PageConnection(
        kind=page.kind,
        base_url=page.base_url,
        credentials=page.credentials,
        settings=dict(page.settings or {}),
        allowed_hosts=allowed_hosts,
    )


async def _with_adapter(connection: PageConnection, call):
    client = make_client(guard=UrlGuard(connection.allowed_hosts))
    adapter = adapter_for(connection, client)
    try:
        return await call(adapter)
    finally:
        await adapter.aclose()
        await client.aclose()


def verify(connection: PageConnection) -> VerifyResult:
    return asyncio.run(_with_adapter(connection, lambda adapter: adapter.verify()))


def test_send(
    connection: PageConnection,
    address: str,
    text: str,
    subject: str | None = None,
    media_url: str | None = None,
    media_type: str | None = None,
) -> SendResult:
    message = OutgoingMessage(
        reference=f"test-{secrets.token_hex(6)}",
        recipient=address,
        text=text,
        subject=subject,
        media_url=media_url,
        media_type=media_type,
    )
    return asyncio.run(_with_adapter(connection, lambda adapter: adapter.send(message)))


def subscribe_sandbox_receipts(sandbox_url: str, page: Page, callback_url: str) -> str:
    """Point the sandbox's receipts for this page's account at Crier, as one would in Meta's dashboard."""
    creds, settings = page.credentials, page.settings or {}
    account = {
        "whatsapp": settings.get("phone_number_id"),
        "messenger": settings.get("page_id"),
        "evolution": settings.get("instance"),
    }.get(page.kind.value)
    if not account:
        return "receipts are not available for this kind of page"
    body = {
        "kind": page.kind.value,
        "account": account,
        "callback_url": callback_url,
        "app_secret": creds.get("app_secret"),
        "verify_token": creds.get("verify_token"),
        "webhook_token": creds.get("webhook_token"),
        # what the page sends with: its receipts, not those of another page naming the same account
        "access_token": creds.get("access_token") or creds.get("page_access_token") or creds.get("api_key"),
    }
    try:
        response = httpx.post(f"{sandbox_url.rstrip('/')}/_sandbox/subscriptions", json=body, timeout=10)
    except httpx.HTTPError as exc:
        return f"could not reach the sandbox: {exc.__class__.__name__}"
    if response.is_success:
        return "receipts from the sandbox now arrive at " + callback_url
    return f"the sandbox refused the subscription: {response.text[:200]}"
