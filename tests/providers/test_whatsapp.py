"""WhatsApp Cloud API adapter: text and template requests, answers, verify."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from tasks.providers.base import Outcome, OutgoingMessage, ProviderKind, TemplateRef
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

KIND = ProviderKind.WHATSAPP
SEND_URL = f"{GRAPH}/v21.0/1055/messages"
ACCEPTED = {
    "messaging_product": "whatsapp",
    "contacts": [{"input": "5511961234567", "wa_id": "5511961234567"}],
    "messages": [{"id": "wamid.HBgMNTUxMTk2MTIzNDU2NxUCABEYEjQ1"}],
}


def wa_error(status: int, code: int, message: str, details: str) -> httpx.Response:
    error = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": "AzXy987",
    }
    return httpx.Response(status, json={"error": error})


def test_send_text() -> None:
    router = respx.Router()
    route = router.post(SEND_URL).mock(return_value=httpx.Response(200, json=ACCEPTED))
    result = send(router, page(KIND))

    assert (result.outcome, result.provider_message_id) == (
        Outcome.SENT,
        "wamid.HBgMNTUxMTk2MTIzNDU2NxUCABEYEjQ1",
    )
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {SECRETS[KIND]['access_token']}"
    assert "access_token" not in request.url.params
    assert json.loads(request.content) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "5511961234567",
        "type": "text",
        "text": {"preview_url": False, "body": "Hi Ana"},
        "biz_opaque_callback_data": "dlv-42",
    }


def test_send_template() -> None:
    router = respx.Router()
    route = router.post(SEND_URL).mock(return_value=httpx.Response(200, json=ACCEPTED))
    message = OutgoingMessage(
        reference="dlv-9",
        recipient="+55 11 96123-4567",
        text="unused for templates",
        template=TemplateRef(name="order_update", language="pt_BR", body_parameters=("Ana", "#1234")),
    )
    assert send(router, page(KIND), message).outcome is Outcome.SENT
    body = json.loads(route.calls.last.request.content)
    assert body["to"] == "5511961234567"
    assert body["type"] == "template" and "text" not in body
    assert body["template"] == {
        "name": "order_update",
        "language": {"code": "pt_BR"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "#1234"}],
            }
        ],
    }
    assert body["biz_opaque_callback_data"] == "dlv-9"


def test_template_without_parameters_has_no_components() -> None:
    router = respx.Router()
    route = router.post(SEND_URL).mock(return_value=httpx.Response(200, json=ACCEPTED))
    message = OutgoingMessage(
        reference="dlv-1", recipient="+15550100", text="", template=TemplateRef("hello_world", "en_US")
    )
    send(router, page(KIND), message)
    assert "components" not in json.loads(route.calls.last.request.content)["template"]


@pytest.mark.parametrize(
    ("answer", "outcome", "code"),
    [
        (
            wa_error(
                400,
                131047,
                "(#131047) Re-engagement message",
                "More than 24 hours have passed since the customer last replied.",
            ),
            "permanent",
            "131047",
        ),
        (
            wa_error(
                400,
                131056,
                "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                "Too many messages to the same recipient in a short period.",
            ),
            "recipient_paced",
            "131056",
        ),
        (
            wa_error(
                400, 130429, "(#130429) Rate limit hit", "Cloud API message throughput has been reached."
            ),
            "throttled",
            "130429",
        ),
        (
            wa_error(
                429,
                80007,
                "(#80007) Rate limit issues",
                "The WhatsApp Business Account has reached its rate limit.",
            ),
            "throttled",
            "80007",
        ),
        (
            wa_error(
                401,
                190,
                "Error validating access token: Session has expired.",
                "The access token has expired.",
            ),
            "page_fatal",
            "190",
        ),
        (
            wa_error(
                400,
                131048,
                "(#131048) Spam rate limit hit",
                "There are restrictions on how many messages this number can send.",
            ),
            "page_fatal",
            "131048",
        ),
        (
            wa_error(
                400,
                132001,
                "(#132001) Template name does not exist in the translation",
                "template name (order_update) does not exist in pt_BR",
            ),
            "permanent",
            "132001",
        ),
        (
            wa_error(
                500,
                131000,
                "(#131000) Something went wrong",
                "Message failed to send due to an unknown error.",
            ),
            "transient",
            "131000",
        ),
        (
            wa_error(
                400, 135000, "(#135000) Generic user error", "Unknown error with your request parameters."
            ),
            "permanent",
            "135000",
        ),
        (
            wa_error(503, 135000, "(#135000) Generic user error", "Unknown code on a 5xx."),
            "transient",
            "135000",
        ),
    ],
)
def test_cloud_api_errors(answer: httpx.Response, outcome: str, code: str) -> None:
    router = respx.Router()
    router.post(SEND_URL).mock(return_value=answer)
    result = send(router, page(KIND))
    assert (result.outcome.value, result.code) == (outcome, code)
    assert result.detail and " — " in result.detail and "fbtrace_id AzXy987" in result.detail
    assert_no_secret(KIND, result.detail)


@pytest.mark.parametrize("case", sorted(MALFORMED_ANSWERS))
def test_malformed_answers(case: str) -> None:
    check_malformed(page(KIND), "POST", SEND_URL, case)


def test_timeouts() -> None:
    check_timeouts(page(KIND), "POST", SEND_URL)


def test_retry_after() -> None:
    body = {"error": {"message": "(#130429) Rate limit hit", "code": 130429, "type": "OAuthException"}}
    check_retry_after(page(KIND), "POST", SEND_URL, body)


def test_verify_reads_the_phone_number() -> None:
    router = respx.Router()
    route = router.get(f"{GRAPH}/v21.0/1055").mock(
        return_value=httpx.Response(
            200,
            json={
                "verified_name": "Acme",
                "display_phone_number": "+1 555-0100",
                "quality_rating": "GREEN",
                "id": "1055",
            },
        )
    )
    result = verify(router, page(KIND))
    assert (result.ok, result.detail) == (True, "Acme (+1 555-0100) quality GREEN")
    request = route.calls.last.request
    assert request.url.params["fields"] == "verified_name,display_phone_number,quality_rating"
    assert request.headers["authorization"].startswith("Bearer ")


def test_verify_reports_errors_without_the_token() -> None:
    token = SECRETS[KIND]["access_token"]
    router = respx.Router()
    router.get(f"{GRAPH}/v21.0/1055").mock(
        return_value=wa_error(
            401, 190, f"Malformed access token {token}", "The access token could not be decrypted"
        )
    )
    result = verify(router, page(KIND))
    assert (result.ok, result.code) == (False, "190")
    assert_no_secret(KIND, result.detail)


def test_verify_without_phone_number_id() -> None:
    result = verify(respx.Router(), page(KIND, phone_number_id=""))
    assert not result.ok and "phone_number_id" in result.detail


def test_send_uses_the_page_message_not_a_leftover() -> None:
    router = respx.Router()
    route = router.post(SEND_URL).mock(return_value=httpx.Response(200, json=ACCEPTED))
    send(router, page(KIND), MESSAGE)
    assert json.loads(route.calls.last.request.content)["text"]["body"] == MESSAGE.text
