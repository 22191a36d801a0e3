"""Helpers for the provider adapter tests: pages with recognisable secrets, and a mocked client.

The tests run coroutines with ``asyncio.run`` (pytest-asyncio is not used) and never touch
the network beyond loopback: HTTP answers come from a respx router mounted as the client's
transport, or from local aiohttp/aiosmtpd servers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.utils import formatdate
from typing import Any, TypeVar

import httpx
import pytest
import respx
from aiohttp import web

from tasks.providers import adapter_for
from tasks.providers.base import (
    Outcome,
    OutgoingMessage,
    PageConnection,
    ProviderAdapter,
    ProviderKind,
    SendResult,
    VerifyResult,
)
from tasks.providers.ssrf import UrlGuard

T = TypeVar("T")

GRAPH = "https://graph.facebook.com"
EVOLUTION_BASE = "https://evo.example.net"
EVOLUTION_IP = "93.184.215.14"  # what the fake resolver says evo.example.net is
WEBHOOK_URL = "https://hooks.example.com/crier"
HOOKS_IP = "93.184.216.34"

SECRETS: dict[ProviderKind, dict[str, str]] = {
    ProviderKind.MESSENGER: {
        "page_access_token": "EAAGm0PX4ZCpsBAMessengerPageToken123",
        "app_secret": "messenger-app-secret-456",
        "verify_token": "messenger-verify-789",
    },
    ProviderKind.WHATSAPP: {
        "access_token": "EAAWhatsAppSystemUserToken+/=abc",
        "app_secret": "whatsapp-app-secret-456",
        "verify_token": "whatsapp-verify-789",
    },
    ProviderKind.EVOLUTION: {"api_key": "evo-api-key-B6D711FCDE4D", "webhook_token": "evo-webhook-tok"},
    ProviderKind.SMTP: {"username": "mailer@acme.example", "password": "smtp-pa55word!"},
    ProviderKind.WEBHOOK: {"signing_secret": "whsec_tenantSigningSecret"},
}

SETTINGS: dict[ProviderKind, dict[str, Any]] = {
    ProviderKind.MESSENGER: {"api_version": "v21.0", "page_id": "1234"},
    ProviderKind.WHATSAPP: {"api_version": "v21.0", "phone_number_id": "1055", "waba_id": "2001"},
    ProviderKind.EVOLUTION: {"instance": "acme"},
    ProviderKind.SMTP: {"from_address": "news@acme.example", "from_name": "Acme", "starttls": False},
    ProviderKind.WEBHOOK: {},
}

BASE_URLS: dict[ProviderKind, str] = {
    ProviderKind.MESSENGER: GRAPH,
    ProviderKind.WHATSAPP: GRAPH,
    ProviderKind.EVOLUTION: EVOLUTION_BASE,
    ProviderKind.SMTP: "smtp://127.0.0.1:2525",
    ProviderKind.WEBHOOK: WEBHOOK_URL,
}

MESSAGE = OutgoingMessage(reference="dlv-42", recipient="+5511961234567", text="Hi Ana")


def page(kind: ProviderKind, *, base_url: str | None = None, **settings: Any) -> PageConnection:
    return PageConnection(
        kind=kind,
        base_url=base_url if base_url is not None else BASE_URLS[kind],
        credentials=dict(SECRETS[kind]),
        settings={**SETTINGS[kind], **settings},
    )


async def fake_resolve(host: str, port: int) -> list[str]:
    """The test's DNS: two invented public names, nothing else."""
    names = {"evo.example.net": EVOLUTION_IP, "hooks.example.com": HOOKS_IP}
    if host not in names:
        raise OSError(-2, "Name or service not known")
    return [names[host]]


def fake_guard() -> UrlGuard:
    return UrlGuard(resolve=fake_resolve)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _with_adapter(
    router: respx.Router, connection: PageConnection, use: Callable[[ProviderAdapter], Awaitable[T]]
) -> T:
    transport = httpx.MockTransport(router.async_handler)
    async with httpx.AsyncClient(transport=transport) as client:
        adapter = adapter_for(connection, client, guard=fake_guard())
        try:
            return await use(adapter)
        finally:
            await adapter.aclose()


def send(router: respx.Router, connection: PageConnection, message: OutgoingMessage = MESSAGE) -> SendResult:
    """Send ``message`` with ``connection``'s adapter over a client whose transport is ``router``."""
    return run(_with_adapter(router, connection, lambda adapter: adapter.send(message)))


def verify(router: respx.Router, connection: PageConnection) -> VerifyResult:
    return run(_with_adapter(router, connection, lambda adapter: adapter.verify()))


def assert_no_secret(kind: ProviderKind, *texts: str | None) -> None:
    for text in texts:
        for name, secret in SECRETS[kind].items():
            assert secret not in (text or ""), f"{name} leaked into {text!r}"


HTML_ERROR_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


MALFORMED_ANSWERS: dict[str, tuple[httpx.Response, bool]] = {
    "html-error-page": (httpx.Response(502, html=HTML_ERROR_PAGE), False),
    "html-200": (httpx.Response(200, html="<html><body>It works!</body></html>"), True),
    "empty-200": (httpx.Response(200, content=b""), True),
    "truncated-json-200": (httpx.Response(200, text='{"messages": [{"id": "wamid.HBg'), True),
    "truncated-json-400": (httpx.Response(400, text='{"error": {"message": "(#100) Inva'), False),
    "json-without-id-200": (httpx.Response(200, json={"ok": True}), True),
}


def check_malformed(connection: PageConnection, method: str, url: str, case: str) -> None:
    """A malformed answer is transient; ``maybe_delivered`` exactly when it was a 2xx."""
    response, maybe_delivered = MALFORMED_ANSWERS[case]
    router = respx.Router()
    router.route(method=method, url=url).mock(return_value=response)
    result = send(router, connection)
    assert result.outcome is Outcome.TRANSIENT, result
    assert result.maybe_delivered is maybe_delivered
    assert result.code == str(response.status_code)
    assert result.detail
    assert_no_secret(connection.kind, result.detail)


def check_timeouts(connection: PageConnection, method: str, url: str) -> None:
    """A read timeout may have delivered; a connect timeout or error did not."""
    for exc, maybe_delivered in (
        (httpx.ReadTimeout, True),
        (httpx.ConnectTimeout, False),
        (httpx.ConnectError, False),
        (httpx.RemoteProtocolError, True),
    ):
        router = respx.Router()
        router.route(method=method, url=url).mock(side_effect=exc)
        result = send(router, connection)
        assert (result.outcome, result.maybe_delivered) == (Outcome.TRANSIENT, maybe_delivered), exc
        assert_no_secret(connection.kind, result.detail)


def check_retry_after(connection: PageConnection, method: str, url: str, body: Any) -> None:
    """429 answers are throttled, with Retry-After in seconds or as an HTTP date."""
    later = formatdate(time.time() + 120, usegmt=True)
    for header, expected in (("7", 7.0), (later, 120.0)):
        router = respx.Router()
        router.route(method=method, url=url).mock(
            return_value=httpx.Response(429, headers={"Retry-After": header}, json=body)
        )
        result = send(router, connection)
        assert result.outcome is Outcome.THROTTLED
        assert result.retry_after == pytest.approx(expected, abs=2.0)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def local_http_server(handler: Handler) -> AsyncIterator[tuple[int, list[web.Request]]]:
    """An aiohttp server on 127.0.0.1 answering every request with ``handler``; yields (port, requests).

    Request bodies are read on arrival, so ``await request.read()`` works after the answer too.
    """
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        await request.read()
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()
