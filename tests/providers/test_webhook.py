"""Webhook adapter: the signed request, answers, verify; and the real transport against local servers.

The second half runs over ``make_client()`` (httpx over aiohttp) against aiohttp servers on
127.0.0.1, so it also checks how transport failures reach the adapters: a stalled or dropped
answer may have been delivered, a refused connection was not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from email.utils import formatdate

import httpx
import pytest
import respx
from aiohttp import web

from tasks.providers import adapter_for, make_client
from tasks.providers.base import Outcome, OutgoingMessage, PageConnection, ProviderKind, SendResult
from tasks.providers.ssrf import UrlGuard
from tasks.providers.webhook import signature
from tests.providers import (
    MALFORMED_ANSWERS,
    MESSAGE,
    SECRETS,
    WEBHOOK_URL,
    assert_no_secret,
    check_timeouts,
    local_http_server,
    page,
    run,
    send,
    verify,
)

KIND = ProviderKind.WEBHOOK
SECRET = SECRETS[KIND]["signing_secret"]


def expected_signature(timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def test_send_posts_signed_json() -> None:
    router = respx.Router()
    route = router.post(WEBHOOK_URL).mock(return_value=httpx.Response(200, json={"id": "evt_81"}))
    message = OutgoingMessage(
        reference="dlv-42", recipient="contact-7", text="Olá Ana", subject="News", variables={"name": "Ana"}
    )
    result = send(router, page(KIND), message)

    assert (result.outcome, result.provider_message_id) == (Outcome.SENT, "evt_81")
    request = route.calls.last.request
    assert json.loads(request.content) == {
        "delivery": "dlv-42",
        "recipient": "contact-7",
        "text": "Olá Ana",
        "subject": "News",
        "variables": {"name": "Ana"},
    }
    timestamp = request.headers["x-crier-timestamp"]
    assert abs(int(timestamp) - time.time()) < 5
    assert request.headers["x-crier-signature"] == expected_signature(timestamp, request.content)
    assert request.headers["content-type"] == "application/json"


def test_signature_matches_the_documented_formula() -> None:
    assert signature("s", "1700000000", b'{"a":1}') == (
        "sha256=" + hmac.new(b"s", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    )


@pytest.mark.parametrize(
    ("answer", "provider_id"),
    [
        (httpx.Response(200, json={"id": 991}), "991"),
        (httpx.Response(204), "webhook-dlv-42"),
        (httpx.Response(202, json={"ok": True}), "webhook-dlv-42"),
        (httpx.Response(200, html="<html>thanks</html>"), "webhook-dlv-42"),
    ],
)
def test_any_2xx_is_sent(answer: httpx.Response, provider_id: str) -> None:
    router = respx.Router()
    router.post(WEBHOOK_URL).mock(return_value=answer)
    result = send(router, page(KIND))
    assert (result.outcome, result.provider_message_id) == (Outcome.SENT, provider_id)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (410, Outcome.PERMANENT),
        (429, Outcome.THROTTLED),
        (500, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
    ],
)
def test_status_outcomes(status: int, outcome: Outcome) -> None:
    router = respx.Router()
    router.post(WEBHOOK_URL).mock(return_value=httpx.Response(status, text="no thanks"))
    result = send(router, page(KIND))
    assert (result.outcome, result.code) == (outcome, str(status))
    assert result.detail == f"HTTP {status}: no thanks"


@pytest.mark.parametrize("case", sorted(MALFORMED_ANSWERS))
def test_malformed_answers(case: str) -> None:
    """A webhook's body is free-form: a 2xx is delivered whatever it says, errors go by status."""
    response, _ = MALFORMED_ANSWERS[case]
    router = respx.Router()
    router.post(WEBHOOK_URL).mock(return_value=response)
    result = send(router, page(KIND))
    if response.is_success:
        assert (result.outcome, result.provider_message_id) == (Outcome.SENT, "webhook-dlv-42")
    else:
        assert result.outcome is (Outcome.TRANSIENT if response.status_code >= 500 else Outcome.PERMANENT)
        assert result.detail and result.detail.startswith(f"HTTP {response.status_code}: ")


def test_timeouts() -> None:
    check_timeouts(page(KIND), "POST", WEBHOOK_URL)


def test_retry_after() -> None:
    later = formatdate(time.time() + 300, usegmt=True)
    for header, expected in (("12", 12.0), (later, 300.0)):
        router = respx.Router()
        router.post(WEBHOOK_URL).mock(return_value=httpx.Response(429, headers={"Retry-After": header}))
        result = send(router, page(KIND))
        assert result.outcome is Outcome.THROTTLED
        assert result.retry_after == pytest.approx(expected, abs=2.0)


def test_verify_sends_a_signed_ping() -> None:
    router = respx.Router()
    route = router.post(WEBHOOK_URL).mock(return_value=httpx.Response(204))
    result = verify(router, page(KIND))
    assert result.ok and "204" in result.detail
    request = route.calls.last.request
    assert json.loads(request.content) == {"type": "ping"}
    assert request.headers["x-crier-signature"] == expected_signature(
        request.headers["x-crier-timestamp"], request.content
    )


def test_verify_failure() -> None:
    router = respx.Router()
    router.post(WEBHOOK_URL).mock(return_value=httpx.Response(401, text=f"bad signature for {SECRET}"))
    result = verify(router, page(KIND))
    assert (result.ok, result.code) == (False, "401")
    assert_no_secret(KIND, result.detail)


async def _send_over_real_transport(
    url: str, port: int, *, read_timeout: float = 2.0, message: OutgoingMessage = MESSAGE
) -> SendResult:
    guard = UrlGuard(allowed_hosts=[f"127.0.0.1:{port}"])
    timeout = httpx.Timeout(2.0, read=read_timeout, pool=2.0)
    async with make_client(guard=guard, timeout=timeout) as client:
        adapter = adapter_for(PageConnection(KIND, url, dict(SECRETS[KIND])), client)
        return await adapter.send(message)


def test_real_transport_delivers_and_the_receiver_can_check_the_signature() -> None:
    async def receiver(request: web.Request) -> web.Response:
        body = await request.read()
        claimed = request.headers["X-Crier-Signature"]
        if claimed != expected_signature(request.headers["X-Crier-Timestamp"], body):
            return web.json_response({"error": "bad signature"}, status=401)
        return web.json_response({"id": "evt_1"})

    async def scenario() -> SendResult:
        async with local_http_server(receiver) as (port, seen):
            result = await _send_over_real_transport(f"http://127.0.0.1:{port}/hooks", port)
            assert [r.path for r in seen] == ["/hooks"]
            return result

    result = run(scenario())
    assert (result.outcome, result.provider_message_id) == (Outcome.SENT, "evt_1")


def test_real_transport_read_timeout_may_have_delivered() -> None:
    async def stalls(request: web.Request) -> web.Response:
        await asyncio.sleep(0.4)
        return web.json_response({})

    async def scenario() -> SendResult:
        async with local_http_server(stalls) as (port, _):
            return await _send_over_real_transport(f"http://127.0.0.1:{port}/", port, read_timeout=0.1)

    result = run(scenario())
    assert (result.outcome, result.maybe_delivered) == (Outcome.TRANSIENT, True)


def test_real_transport_dropped_answer_may_have_delivered() -> None:
    async def hangs_up(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.05)
        return web.json_response({})

    async def scenario() -> SendResult:
        async with local_http_server(hangs_up) as (port, _):
            return await _send_over_real_transport(f"http://127.0.0.1:{port}/", port)

    result = run(scenario())
    assert (result.outcome, result.maybe_delivered) == (Outcome.TRANSIENT, True)
    assert result.detail and "disconnected" in result.detail.lower()


def test_real_transport_refused_connection_was_not_delivered() -> None:
    async def scenario() -> SendResult:
        async with local_http_server(lambda request: asyncio.sleep(0, web.Response())) as (port, _):
            pass
        return await _send_over_real_transport(f"http://127.0.0.1:{port}/", port)

    result = run(scenario())
    assert (result.outcome, result.maybe_delivered) == (Outcome.TRANSIENT, False)
    assert result.detail and result.detail.startswith("could not connect to webhook")


@pytest.mark.parametrize("status", [307, 308])
def test_real_transport_follows_307_and_308_with_the_same_signed_body(status: int) -> None:
    async def moved(request: web.Request) -> web.Response:
        if request.path == "/old":
            return web.Response(status=status, headers={"Location": "/new"})
        return web.json_response({"id": "evt_moved"})

    async def scenario() -> tuple[SendResult, list[tuple[str, str, bytes, str]]]:
        async with local_http_server(moved) as (port, seen):
            result = await _send_over_real_transport(f"http://127.0.0.1:{port}/old", port)
            hops = [(r.method, r.path, await r.read(), r.headers["X-Crier-Signature"]) for r in seen]
            return result, hops

    result, hops = run(scenario())
    assert (result.outcome, result.provider_message_id) == (Outcome.SENT, "evt_moved")
    assert [(method, path) for method, path, _, _ in hops] == [("POST", "/old"), ("POST", "/new")]
    assert hops[0][2:] == hops[1][2:]


@pytest.mark.parametrize("status", [301, 302, 303])
def test_real_transport_refuses_redirects_that_would_drop_the_body(status: int) -> None:
    async def moved(request: web.Request) -> web.Response:
        if request.path == "/old":
            return web.Response(status=status, headers={"Location": "/new"})
        return web.json_response({"id": "evt_moved"})

    async def scenario() -> tuple[SendResult, list[str]]:
        async with local_http_server(moved) as (port, seen):
            result = await _send_over_real_transport(f"http://127.0.0.1:{port}/old", port)
            return result, [r.path for r in seen]

    result, paths = run(scenario())
    assert (result.outcome, result.code) == (Outcome.PAGE_FATAL, str(status))
    assert paths == ["/old"]
    assert result.detail and "/new" in result.detail


def test_real_transport_stops_after_three_redirects() -> None:
    async def loops(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "/again"})

    async def scenario() -> tuple[SendResult, int]:
        async with local_http_server(loops) as (port, seen):
            result = await _send_over_real_transport(f"http://127.0.0.1:{port}/", port)
            return result, len(seen)

    result, requests = run(scenario())
    assert (result.outcome, requests) == (Outcome.PAGE_FATAL, 4)
    assert result.detail == "webhook redirects more than 3 times"


def test_real_transport_truncated_body_may_have_delivered() -> None:
    """Headers arrive, then the connection drops mid-body: the receiver may have processed it."""

    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id":'
        )
        await writer.drain()
        writer.close()

    async def scenario() -> SendResult:
        server = await asyncio.start_server(half_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await _send_over_real_transport(f"http://127.0.0.1:{port}/", port)
        finally:
            server.close()
            await server.wait_closed()

    result = run(scenario())
    assert (result.outcome, result.maybe_delivered) == (Outcome.TRANSIENT, True)


def test_make_client_applies_limits_and_timeouts_to_aiohttp() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    async def scenario() -> None:
        async with local_http_server(ok) as (port, _):
            timeout = httpx.Timeout(connect=3.0, read=7.0, write=7.0, pool=9.0)
            guard = UrlGuard(allowed_hosts=[f"127.0.0.1:{port}"])
            client = make_client(
                guard=guard,
                timeout=timeout,
                max_connections=7,
                max_connections_per_host=3,
                keepalive_expiry=12.0,
            )
            async with client:
                await client.get(f"http://127.0.0.1:{port}/")
                session = client._transport.client  # type: ignore[attr-defined]
                connector = session.connector
                assert (connector.limit, connector.limit_per_host) == (7, 3)
                assert connector._keepalive_timeout == 12.0
                assert client.timeout == timeout
                assert client.follow_redirects is False

    run(scenario())
