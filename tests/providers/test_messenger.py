"""Messenger adapter: the Send API request, its answers, verify, and the token in the query string."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import respx

from tasks.providers.base import Outcome, ProviderKind
from tests.providers import (
    GRAPH,
    MALFORMED_ANSWERS,
    MESSAGE,
    SECRETS,
    assert_no_secret,
    check_malformed,
    check_retry_after,
    check_timeouts,
    page,
    send,
    verify,
)

KIND = ProviderKind.MESSENGER
TOKEN = SECRETS[KIND]["page_access_token"]
SEND_URL = f"{GRAPH}/v21.0/me/messages"
PSID = "6254817394620183"


def graph_error(status: int, code: int, message: str, subcode: int | None = None) -> httpx.Response:
    error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "A1b2C3"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return httpx.Response(status, json={"error": error})


def test_send_builds_the_send_api_request() -> None:
    router = respx.Router()
    route = router.post(SEND_URL).mock(
        return_value=httpx.Response(
            200, json={"recipient_id": PSID, "message_id": "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM"}
        )
    )
    result = send(router, page(KIND), MESSAGE.__class__(reference="dlv-7", recipient=PSID, text="Hi Ana"))

    assert (result.outcome, result.provider_message_id) == (Outcome.SENT, "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM")
    request = route.calls.last.request
    assert request.url.params["access_token"] == TOKEN
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "recipient": {"id": PSID},
        "messaging_type": "MESSAGE_TAG",
        "tag": "ACCOUNT_UPDATE",
        "message": {"text": "Hi Ana", "metadata": "dlv-7"},
    }


def test_settings_choose_version_type_and_tag() -> None:
    router = respx.Router()
    route = router.post(f"{GRAPH}/v19.0/me/messages").mock(
        return_value=httpx.Response(200, json={"recipient_id": PSID, "message_id": "m_1"})
    )
    connection = page(KIND, api_version="v19.0", messaging_type="RESPONSE")
    assert send(router, connection).outcome is Outcome.SENT
    body = json.loads(route.calls.last.request.content)
    assert body["messaging_type"] == "RESPONSE" and "tag" not in body


@pytest.mark.parametrize(
    ("answer", "outcome", "code"),
    [
        (
            graph_error(400, 10, "(#10) This message is sent outside of allowed window.", 2018278),
            "permanent",
            "10/2018278",
        ),
        (graph_error(400, 100, "(#100) No matching user found", 2018001), "permanent", "100/2018001"),
        (graph_error(400, 551, "(#551) This person isn't available right now."), "permanent", "551"),
        (graph_error(400, 613, "(#613) Calls to this api have exceeded the rate limit."), "throttled", "613"),
        (
            graph_error(401, 190, "Error validating access token: The session has been invalidated.", 460),
            "page_fatal",
            "190/460",
        ),
        (graph_error(403, 10, "(#10) Permission denied"), "page_fatal", "10"),
        (
            graph_error(500, 2, "An unexpected error has occurred. Please retry your request later."),
            "transient",
            "2",
        ),
        (
            graph_error(400, 1200, "(#1200) Temporary send message failure. Please try again later."),
            "transient",
            "1200",
        ),
    ],
)
def test_graph_errors(answer: httpx.Response, outcome: str, code: str) -> None:
    router = respx.Router()
    router.post(SEND_URL).mock(return_value=answer)
    result = send(router, page(KIND))
    assert (result.outcome.value, result.code) == (outcome, code)
    assert result.detail and "fbtrace_id A1b2C3" in result.detail
    assert_no_secret(KIND, result.detail)


@pytest.mark.parametrize("case", sorted(MALFORMED_ANSWERS))
def test_malformed_answers(case: str) -> None:
    check_malformed(page(KIND), "POST", SEND_URL, case)


def test_timeouts() -> None:
    check_timeouts(page(KIND), "POST", SEND_URL)


def test_retry_after() -> None:
    body = {
        "error": {"message": "(#4) Application request limit reached", "code": 4, "type": "OAuthException"}
    }
    check_retry_after(page(KIND), "POST", SEND_URL, body)


def test_a_token_echoed_by_the_provider_is_redacted() -> None:
    router = respx.Router()
    router.post(SEND_URL).mock(
        return_value=graph_error(400, 190, f"Invalid OAuth access token - Cannot parse access token {TOKEN}")
    )
    result = send(router, page(KIND))
    assert result.outcome is Outcome.PAGE_FATAL
    assert result.detail and "[redacted]" in result.detail
    assert_no_secret(KIND, result.detail, result.code)


def test_connection_errors_do_not_show_the_url_token() -> None:
    router = respx.Router()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect for {request.url}")

    router.post(SEND_URL).mock(side_effect=refuse)
    result = send(router, page(KIND))
    assert result.outcome is Outcome.TRANSIENT
    assert result.detail and "access_token=[redacted]" in result.detail
    assert_no_secret(KIND, result.detail)


def test_httpx_log_lines_do_not_show_the_token(caplog: pytest.LogCaptureFixture) -> None:
    router = respx.Router()
    router.post(SEND_URL).mock(
        return_value=httpx.Response(200, json={"recipient_id": PSID, "message_id": "m_1"})
    )
    with caplog.at_level(logging.INFO, logger="httpx"):
        send(router, page(KIND))
    lines = [record.getMessage() for record in caplog.records if record.name == "httpx"]
    assert lines and all(TOKEN not in line for line in lines)
    assert any("access_token=[redacted]" in line for line in lines)


def test_verify_reads_the_page() -> None:
    router = respx.Router()
    route = router.get(f"{GRAPH}/v21.0/me").mock(
        return_value=httpx.Response(200, json={"id": "1234", "name": "Acme Support"})
    )
    result = verify(router, page(KIND))
    assert (result.ok, result.detail) == (True, "Acme Support (page 1234)")
    params = route.calls.last.request.url.params
    assert (params["fields"], params["access_token"]) == ("id,name", TOKEN)


def test_verify_notices_a_token_of_another_page() -> None:
    router = respx.Router()
    router.get(f"{GRAPH}/v21.0/me").mock(
        return_value=httpx.Response(200, json={"id": "999", "name": "Other"})
    )
    result = verify(router, page(KIND))
    assert not result.ok and "not 1234" in result.detail


def test_verify_reports_an_expired_token() -> None:
    router = respx.Router()
    router.get(f"{GRAPH}/v21.0/me").mock(
        return_value=graph_error(401, 190, "Error validating access token: Session has expired.", 463)
    )
    result = verify(router, page(KIND))
    assert (result.ok, result.code) == (False, "190/463")
    assert "Session has expired" in result.detail
    assert_no_secret(KIND, result.detail)
