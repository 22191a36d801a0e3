"""One case per row of the classification tables, each from a realistic provider answer.

A row is checked through the same parsing the adapters use (``graph_answer``,
``evolution_answer``, ``webhook_answer``, ``smtp_error_result``), so a row shadowed by an
earlier one, or an answer the parser misreads, fails here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import quote

import aiosmtplib
import httpx
import pytest
import respx

from tasks.providers.base import Outcome, ProviderKind, redact
from tasks.providers.classification import (
    EVOLUTION_RULES,
    GRAPH_RULES,
    HTTP_STATUS_RULES,
    RULES,
    SMTP_RULES,
    WEBHOOK_RULES,
    Rule,
    graph_answer,
    parse_retry_after,
    transport_failure,
)
from tasks.providers.evolution import evolution_answer
from tasks.providers.smtp import smtp_error_result
from tasks.providers.ssrf import BlockedDestination
from tasks.providers.webhook import webhook_answer
from tests.providers import (
    SECRETS,
    assert_no_secret,
    page,
    send,
    verify,
)

K = ProviderKind
REQUEST = httpx.Request("POST", "https://graph.facebook.com/v21.0/1055/messages")

GRAPH_MESSAGES = {
    1: "An unknown error occurred",
    2: "An unexpected error has occurred. Please retry your request later.",
    4: "(#4) Application request limit reached",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    130429: "(#130429) Rate limit hit",
    80007: "(#80007) Rate limit issues",
    131056: "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    190: "Error validating access token: Session has expired on Tuesday, 01-Oct-24 10:00:00 PDT.",
    0: "(#0) AuthException",
    10: "(#10) This message is sent outside of allowed window.",
    368: "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
    131048: "(#131048) Spam rate limit hit",
    131031: "(#131031) Business Account locked",
    131045: "(#131045) Incorrect certificate",
    131026: "(#131026) Message undeliverable",
    131047: "(#131047) Re-engagement message",
    131051: "(#131051) Unsupported message type",
    131021: "(#131021) Recipient cannot be sender",
    131052: "(#131052) Media download error",
    132000: "(#132000) Number of parameters does not match the expected number of params",
    132001: "(#132001) Template name does not exist in the translation",
    132012: "(#132012) Parameter format does not match format in the created template",
    100: "(#100) No matching user found",
    551: "(#551) This person isn't available right now.",
    131000: "(#131000) Something went wrong",
    131016: "(#131016) Service unavailable",
    1200: "(#1200) Temporary send message failure. Please try again later.",
}


def rule_id(rule: Rule) -> str:
    kinds = "+".join(sorted(k.value for k in rule.kinds)) if len(rule.kinds) < 4 else "http"
    code = f"{rule.code.start}-{rule.code.stop - 1}" if isinstance(rule.code, range) else rule.code
    return f"{kinds}:{code}" + (f"/{rule.subcode}" if rule.subcode is not None else "")


def sample_codes(code: int | range) -> list[int]:
    return [code.start, code.start + len(code) // 2, code.stop - 1] if isinstance(code, range) else [code]


def graph_status(code: int, outcome: Outcome) -> int:
    """The HTTP status Graph uses with each kind of error (WIRE.md)."""
    if code == 190:
        return 401
    if outcome is Outcome.TRANSIENT:
        return 500 if code in (1, 2) else 503
    return 400


def graph_error_response(code: int, subcode: int | None, status: int, kind: ProviderKind) -> httpx.Response:
    error: dict = {
        "message": GRAPH_MESSAGES.get(code, f"(#{code}) Permissions error"),
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AbCdEf123",
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if kind is K.WHATSAPP:
        error["error_data"] = {"messaging_product": "whatsapp", "details": "See the Cloud API error codes."}
    return httpx.Response(status, json={"error": error}, request=REQUEST)


def test_every_row_is_reachable_and_explained() -> None:
    assert RULES
    for rule in RULES:
        assert rule.why and rule.kinds, rule


@pytest.mark.parametrize("rule", GRAPH_RULES, ids=rule_id)
def test_graph_rule(rule: Rule) -> None:
    assert isinstance(rule.subcode, int | None)
    subcodes = [rule.subcode] if rule.subcode is not None else [None, 463]
    for kind in sorted(rule.kinds):
        for code in sample_codes(rule.code):
            for subcode in subcodes:
                response = graph_error_response(code, subcode, graph_status(code, rule.outcome), kind)
                result = graph_answer(kind, response, lambda body: None)
                assert result.outcome is rule.outcome, (kind, code, subcode, rule.why)
                assert result.code == (f"{code}/{subcode}" if subcode is not None else str(code))
                assert result.detail and GRAPH_MESSAGES.get(code, "Permissions error") in result.detail
                assert "AbCdEf123" in result.detail
                assert result.provider_message_id is None and not result.maybe_delivered


EVOLUTION_BODIES: dict[tuple[int, str | None], dict] = {
    (400, "exists:false"): {
        "status": 400,
        "error": "Bad Request",
        "response": {
            "message": [{"exists": False, "jid": "5511961234567@s.whatsapp.net", "number": "5511961234567"}]
        },
    },
    (401, None): {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}},
    (403, None): {"status": 403, "error": "Forbidden", "response": {"message": ["Missing global api key"]}},
    (404, "instance"): {
        "status": 404,
        "error": "Not Found",
        "response": {"message": ['The "acme" instance does not exist']},
    },
    (404, None): {
        "status": 404,
        "error": "Not Found",
        "response": {"message": ["Cannot POST /message/sendText"]},
    },
}


@pytest.mark.parametrize("rule", EVOLUTION_RULES, ids=rule_id)
def test_evolution_rule(rule: Rule) -> None:
    assert isinstance(rule.code, int) and not isinstance(rule.subcode, int)
    body = EVOLUTION_BODIES[(rule.code, rule.subcode)]
    result = evolution_answer(httpx.Response(rule.code, json=body, request=REQUEST))
    assert result.outcome is rule.outcome
    assert result.code == str(rule.code)
    assert result.detail and body["error"] in result.detail


@pytest.mark.parametrize("rule", WEBHOOK_RULES, ids=rule_id)
def test_webhook_rule(rule: Rule) -> None:
    for status in sample_codes(rule.code):
        response = httpx.Response(
            status, headers={"Location": "https://elsewhere.example/hook"}, request=REQUEST
        )
        result = webhook_answer(response, "dlv-1")
        assert result.outcome is rule.outcome, status
        assert result.code == str(status)


def status_answer(kind: ProviderKind, status: int) -> httpx.Response:
    """A realistic error answer of ``kind`` with a status no kind-specific row claims."""
    if kind in (K.MESSENGER, K.WHATSAPP):
        body = {"error": {"message": "(#99999) Something new", "type": "OAuthException", "code": 99999}}
        return httpx.Response(status, json=body, request=REQUEST)
    if kind is K.EVOLUTION:
        body = {"status": status, "error": "Error", "response": {"message": ["something failed"]}}
        return httpx.Response(status, json=body, request=REQUEST)
    return httpx.Response(status, text="nope", request=REQUEST)


def classify_http(kind: ProviderKind, response: httpx.Response):
    if kind in (K.MESSENGER, K.WHATSAPP):
        return graph_answer(kind, response, lambda body: None)
    if kind is K.EVOLUTION:
        return evolution_answer(response)
    return webhook_answer(response, "dlv-1")


@pytest.mark.parametrize("rule", HTTP_STATUS_RULES, ids=rule_id)
def test_http_status_rule(rule: Rule) -> None:
    statuses = sample_codes(rule.code)
    if rule.code == range(400, 500):
        statuses = [400, 409, 422]  # 401/403/404 belong to Evolution's own rows
    for kind in sorted(rule.kinds):
        for status in statuses:
            result = classify_http(kind, status_answer(kind, status))
            assert result.outcome is rule.outcome, (kind, status)
            assert not result.maybe_delivered


SMTP_ANSWERS: dict[int | range, aiosmtplib.SMTPException] = {
    421: aiosmtplib.SMTPResponseException(421, "4.7.0 Too many concurrent SMTP connections; slow down"),
    450: aiosmtplib.SMTPRecipientRefused(
        450, "4.2.0 <ana@example.org>: Recipient address rejected: Greylisted", "ana@example.org"
    ),
    454: aiosmtplib.SMTPResponseException(454, "4.7.0 TLS not available due to local problem"),
    451: aiosmtplib.SMTPDataError(451, "4.3.0 Error: queue file write error"),
    452: aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(452, "4.5.3 Insufficient system storage", "ana@example.org")]
    ),
    530: aiosmtplib.SMTPSenderRefused(530, "5.7.0 Authentication required", "news@acme.example"),
    534: aiosmtplib.SMTPAuthenticationError(534, "5.7.9 Application-specific password required"),
    535: aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Username and Password not accepted"),
    range(400, 500): aiosmtplib.SMTPDataError(471, "4.7.1 Try again later, content scan failed"),
    range(500, 600): aiosmtplib.SMTPRecipientRefused(
        550, "5.1.1 <ana@example.org>: User unknown", "ana@example.org"
    ),
}


@pytest.mark.parametrize("rule", SMTP_RULES, ids=rule_id)
def test_smtp_rule(rule: Rule) -> None:
    exc = SMTP_ANSWERS[rule.code]
    result = smtp_error_result(exc)
    assert result.outcome is rule.outcome
    reply = exc.recipients[0] if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) else exc
    assert isinstance(reply, aiosmtplib.SMTPResponseException)
    assert (result.code, result.detail) == (str(reply.code), reply.message)


def test_unknown_graph_code_depends_on_the_status() -> None:
    for kind in (K.MESSENGER, K.WHATSAPP):
        assert classify_http(kind, status_answer(kind, 400)).outcome is Outcome.PERMANENT
        assert classify_http(kind, status_answer(kind, 500)).outcome is Outcome.TRANSIENT
        assert classify_http(kind, status_answer(kind, 429)).outcome is Outcome.THROTTLED


def test_messenger_only_codes_do_not_apply_to_whatsapp() -> None:
    response = graph_error_response(551, None, 400, K.WHATSAPP)
    assert graph_answer(K.WHATSAPP, response, lambda b: None).outcome is Outcome.PERMANENT
    outside_window = graph_error_response(10, 2018278, 400, K.WHATSAPP)
    assert graph_answer(K.WHATSAPP, outside_window, lambda b: None).outcome is Outcome.PAGE_FATAL


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(90.0)
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(earlier, now=now.timestamp()) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_after_reaches_the_result() -> None:
    response = httpx.Response(
        429,
        headers={"Retry-After": "30"},
        json={"error": {"message": "(#130429) Rate limit hit", "code": 130429, "type": "OAuthException"}},
        request=REQUEST,
    )
    result = graph_answer(K.WHATSAPP, response, lambda b: None)
    assert (result.outcome, result.retry_after) == (Outcome.THROTTLED, 30.0)


@pytest.mark.parametrize(
    ("exc", "outcome", "maybe_delivered"),
    [
        (httpx.ConnectTimeout("timed out", request=REQUEST), Outcome.TRANSIENT, False),
        (httpx.PoolTimeout("no free connection", request=REQUEST), Outcome.TRANSIENT, False),
        (httpx.ConnectError("connection refused", request=REQUEST), Outcome.TRANSIENT, False),
        (httpx.WriteError("broken pipe", request=REQUEST), Outcome.TRANSIENT, False),
        (httpx.ReadTimeout("timed out", request=REQUEST), Outcome.TRANSIENT, True),
        (httpx.ReadError("connection reset", request=REQUEST), Outcome.TRANSIENT, True),
        (httpx.RemoteProtocolError("server disconnected", request=REQUEST), Outcome.TRANSIENT, True),
        (httpx.UnsupportedProtocol("ftp", request=REQUEST), Outcome.PAGE_FATAL, False),
        (BlockedDestination("resolves to a private address 10.0.0.5"), Outcome.PAGE_FATAL, False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_transport_failures(exc: httpx.HTTPError, outcome: Outcome, maybe_delivered: bool) -> None:
    result = transport_failure(exc, "webhook")
    assert (result.outcome, result.maybe_delivered) == (outcome, maybe_delivered)
    if isinstance(exc, BlockedDestination):
        assert result.detail == "webhook URL resolves to a private address 10.0.0.5"


def test_redact_covers_raw_and_url_encoded_secrets() -> None:
    secret = "EAAWhatsApp+/=token"
    text = f"bad token {secret} in https://x/?access_token={httpx.QueryParams({'t': secret})['t']}"
    url = str(httpx.URL("https://x/", params={"access_token": secret}))
    redacted = redact(f"{text} {url} {json.dumps(secret)}", [secret, "abc"])
    assert redacted is not None and secret not in redacted and "EAAWhatsApp%2B" not in redacted
    assert redacted.count("[redacted]") == 4


def _echoing_answers(kind: ProviderKind) -> list[httpx.Response | type[Exception] | Exception]:
    """Answers that repeat the page's credentials back, raw and URL-encoded, in every shape we parse."""
    secrets = list(SECRETS[kind].values())
    echo = " ".join(secrets + [quote(s, safe="") for s in secrets])
    return [
        httpx.Response(400, json={"error": {"message": echo, "code": 190, "type": "OAuthException"}}),
        httpx.Response(400, json={"error": {"message": "x", "code": 100, "error_data": {"details": echo}}}),
        httpx.Response(401, json={"status": 401, "error": echo, "response": {"message": [echo]}}),
        httpx.Response(502, html=f"<html><body>{echo}</body></html>"),
        httpx.Response(200, text=echo),
        httpx.Response(404, text=echo),
        httpx.ReadTimeout,
        httpx.ConnectError(f"cannot connect: {echo}"),
    ]


@pytest.mark.parametrize("kind", [K.MESSENGER, K.WHATSAPP, K.EVOLUTION, K.WEBHOOK], ids=str)
def test_no_credential_in_any_detail(kind: ProviderKind) -> None:
    for answer in _echoing_answers(kind):

        def reply(request: httpx.Request, answer=answer) -> httpx.Response:
            if isinstance(answer, httpx.Response):
                return answer
            raise (
                answer(f"failed for {request.url} {request.headers}") if isinstance(answer, type) else answer
            )

        router = respx.Router()
        router.route().mock(side_effect=reply)
        sent = send(router, page(kind))
        verified = verify(router, page(kind))
        assert_no_secret(kind, sent.detail, sent.code, verified.detail, verified.code)


@pytest.mark.parametrize("kind", [K.MESSENGER, K.WHATSAPP, K.EVOLUTION, K.WEBHOOK], ids=str)
def test_excerpts_never_cut_a_credential_in_half(kind: ProviderKind) -> None:
    for secret in SECRETS[kind].values():
        router = respx.Router()
        router.route().mock(return_value=httpx.Response(502, text="x" * 150 + secret))
        detail = send(router, page(kind)).detail
        assert detail and secret[:6] not in detail
