"""Evolution API adapter: sendText, its answers, connection state, and the SSRF guard on its URL."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from tasks.providers.base import Outcome, ProviderKind
from tests.providers import (
    EVOLUTION_BASE,
    MALFORMED_ANSWERS,
    SECRETS,
    assert_no_secret,
    check_malformed,
    check_retry_after,
    check_timeouts,
    page,
    send,
    verify,
)

KIND = ProviderKind.EVOLUTION
SEND_URL = f"{EVOLUTION_BASE}/message/sendText/acme"
STATE_URL = f"{EVOLUTION_BASE}/instance/connectionState/acme"
ACCEPTED = {
    "key": {"remoteJid": "5511961234567@s.whatsapp.net", "fromMe": True, "id": "BAE594145F4C59B4"},
    "message": {"extendedTextMessage": {"text": "Hi Ana"}},
    "messageTimestamp": "1717689097",
    "status": "PENDING",
}


def test_send_text() -> None:
    router = respx.Router()
    route = router.post(SEND_URL).mock(return_value=httpx.Response(201, json=ACCEPTED))
    result = send(router, page(KIND))
    assert (result.outcome, result.provider_message_id) == (Outcome.SENT, "BAE594145F4C59B4")
    request = route.calls.last.request
    assert request.headers["apikey"] == SECRETS[KIND]["api_key"]
    assert json.loads(request.content) == {"number": "5511961234567", "text": "Hi Ana"}


def test_instance_name_is_escaped_in_the_path() -> None:
    router = respx.Router()
    route = router.post(f"{EVOLUTION_BASE}/message/sendText/acme%20sales%2F2").mock(
        return_value=httpx.Response(201, json=ACCEPTED)
    )
    assert send(router, page(KIND, instance="acme sales/2")).outcome is Outcome.SENT
    assert route.called


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (
            400,
            {
                "status": 400,
                "error": "Bad Request",
                "response": {
                    "message": [
                        {"exists": False, "jid": "5511961234567@s.whatsapp.net", "number": "5511961234567"}
                    ]
                },
            },
            Outcome.PERMANENT,
        ),
        (
            401,
            {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}},
            Outcome.PAGE_FATAL,
        ),
        (
            404,
            {
                "status": 404,
                "error": "Not Found",
                "response": {"message": ['The "acme" instance does not exist']},
            },
            Outcome.PAGE_FATAL,
        ),
        (
            500,
            {"status": 500, "error": "Internal Server Error", "response": {"message": "Connection Closed"}},
            Outcome.TRANSIENT,
        ),
    ],
)
def test_errors(status: int, body: dict, outcome: Outcome) -> None:
    router = respx.Router()
    router.post(SEND_URL).mock(return_value=httpx.Response(status, json=body))
    result = send(router, page(KIND))
    assert (result.outcome, result.code) == (outcome, str(status))
    assert result.detail and body["error"] in result.detail
    assert_no_secret(KIND, result.detail)


@pytest.mark.parametrize("case", sorted(MALFORMED_ANSWERS))
def test_malformed_answers(case: str) -> None:
    check_malformed(page(KIND), "POST", SEND_URL, case)


def test_timeouts() -> None:
    check_timeouts(page(KIND), "POST", SEND_URL)


def test_retry_after() -> None:
    check_retry_after(page(KIND), "POST", SEND_URL, {"status": 429, "error": "Too Many Requests"})


@pytest.mark.parametrize(("state", "ok"), [("open", True), ("close", False), ("connecting", False)])
def test_verify_connection_state(state: str, ok: bool) -> None:
    router = respx.Router()
    route = router.get(STATE_URL).mock(
        return_value=httpx.Response(200, json={"instance": {"instanceName": "acme", "state": state}})
    )
    result = verify(router, page(KIND))
    assert result.ok is ok and state in result.detail
    assert route.calls.last.request.headers["apikey"] == SECRETS[KIND]["api_key"]


def test_verify_with_a_bad_key() -> None:
    router = respx.Router()
    router.get(STATE_URL).mock(
        return_value=httpx.Response(
            401, json={"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}}
        )
    )
    result = verify(router, page(KIND))
    assert (result.ok, result.code) == (False, "401")
    assert_no_secret(KIND, result.detail)


@pytest.mark.parametrize(
    ("base_url", "detail"),
    [
        ("http://10.0.0.5:8080", "Evolution URL resolves to a private address 10.0.0.5"),
        ("http://169.254.169.254", "Evolution URL resolves to a link-local address 169.254.169.254"),
        ("http://[::1]:8080", "Evolution URL resolves to a loopback address ::1"),
    ],
)
def test_internal_urls_are_refused_before_any_request(base_url: str, detail: str) -> None:
    router = respx.Router(assert_all_mocked=False)
    result = send(router, page(KIND, base_url=base_url))
    assert (result.outcome, result.detail) == (Outcome.PAGE_FATAL, detail)
    assert not router.calls
    assert not verify(router, page(KIND, base_url=base_url)).ok
