"""The sandbox provider, black-box: real HTTP and SMTP against ``python -m tasks.sandbox``."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import queue
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tasks.sandbox import SandboxProcess

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PHONE_NUMBER_ID = "106540352242922"
TOKEN = "EAAG-sandbox-token"
APP_SECRET = "app-secret-for-tests"
VERIFY_TOKEN = "verify-me"
WEBHOOK_TOKEN = "evolution-webhook-token"


@pytest.fixture(scope="module")
def sandbox_process() -> Iterator[SandboxProcess]:
    ARTIFACTS.mkdir(exist_ok=True)
    with SandboxProcess(log=ARTIFACTS / "sandbox.log") as process:
        yield process


@pytest.fixture
def sandbox(sandbox_process: SandboxProcess) -> Iterator[httpx.Client]:
    """A client of a freshly reset sandbox."""
    with httpx.Client(base_url=sandbox_process.url, timeout=10) as client:
        client.post("/_sandbox/reset").raise_for_status()
        yield client


def configure(sandbox: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = sandbox.put("/_sandbox/config", json=changes)
    assert response.status_code == 200, response.text
    return response.json()


def stats(sandbox: httpx.Client) -> dict[str, Any]:
    return sandbox.get("/_sandbox/stats").json()


def ledger(sandbox: httpx.Client) -> list[dict[str, Any]]:
    return sandbox.get("/_sandbox/ledger", params={"limit": 10_000}).json()["entries"]


def whatsapp(
    sandbox: httpx.Client,
    to: str = "5511961234567",
    text: str = "Hi Ana",
    reference: str | None = "delivery-1",
    *,
    account: str = PHONE_NUMBER_ID,
    token: str | None = TOKEN,
    **kw: Any,
) -> httpx.Response:
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": False, "body": text},
    }
    if reference is not None:
        payload["biz_opaque_callback_data"] = reference
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return sandbox.post(f"/v21.0/{account}/messages", json=payload, headers=headers, **kw)


def messenger(
    sandbox: httpx.Client,
    psid: str = "24021984",
    text: str = "Hi Ana",
    reference: str | None = "delivery-1",
    *,
    token: str | None = TOKEN,
) -> httpx.Response:
    message: dict[str, Any] = {"text": text}
    if reference is not None:
        message["metadata"] = reference
    payload = {
        "recipient": {"id": psid},
        "messaging_type": "MESSAGE_TAG",
        "tag": "ACCOUNT_UPDATE",
        "message": message,
    }
    params = {"access_token": token} if token else {}
    return sandbox.post("/v21.0/me/messages", params=params, json=payload)


def evolution(
    sandbox: httpx.Client,
    number: str = "5511961234567",
    text: str = "Hi Ana",
    *,
    instance: str = "acme",
    api_key: str = "evolution-key",
) -> httpx.Response:
    return sandbox.post(
        f"/message/sendText/{instance}", json={"number": number, "text": text}, headers={"apikey": api_key}
    )


def webhook(
    sandbox: httpx.Client, recipient: str = "contact-17", reference: str = "delivery-1", *, name: str = "acme"
) -> httpx.Response:
    payload = {
        "delivery": reference,
        "recipient": recipient,
        "text": "Hi Ana",
        "subject": None,
        "variables": {},
    }
    return sandbox.post(f"/webhook/{name}", json=payload)


def page_id(sandbox: httpx.Client, token: str = TOKEN) -> str:
    return sandbox.get("/v21.0/me", params={"access_token": token}).json()["id"]


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def graph_error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert error["type"] == "OAuthException" and error["fbtrace_id"]
    return error


# --- success formats -------------------------------------------------------------------------


def test_whatsapp_send_answers_like_the_cloud_api_and_is_recorded(sandbox):
    response = whatsapp(sandbox, to="+5511961234567", reference="delivery-42")

    assert response.status_code == 200
    answer = response.json()
    assert answer["messaging_product"] == "whatsapp"
    assert answer["contacts"] == [{"input": "5511961234567", "wa_id": "5511961234567"}]
    message_id = answer["messages"][0]["id"]
    assert message_id.startswith("wamid.")
    [entry] = ledger(sandbox)
    assert entry["seq"] == 1 and entry["at"] == pytest.approx(time.time(), abs=5)
    assert {
        key: entry[key] for key in ("kind", "account", "recipient", "body", "reference", "message_id")
    } == {
        "kind": "whatsapp",
        "account": PHONE_NUMBER_ID,
        "recipient": "5511961234567",
        "body": "Hi Ana",
        "reference": "delivery-42",
        "message_id": message_id,
    }


def test_whatsapp_template_message_is_recorded_with_its_parameters(sandbox):
    payload = {
        "messaging_product": "whatsapp",
        "to": "5511961234567",
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "pt_BR"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}],
        },
    }
    response = sandbox.post(
        f"/v21.0/{PHONE_NUMBER_ID}/messages", json=payload, headers={"Authorization": f"Bearer {TOKEN}"}
    )

    assert response.status_code == 200, response.text
    assert ledger(sandbox)[0]["body"] == "[template order_update/pt_BR] Ana"


def test_messenger_send_accepts_the_token_in_the_query_or_as_bearer(sandbox):
    by_query = messenger(sandbox, psid="24021984", reference="delivery-7")
    by_bearer = sandbox.post(
        "/v21.0/me/messages",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"recipient": {"id": "777"}, "messaging_type": "RESPONSE", "message": {"text": "Yo"}},
    )

    assert by_query.status_code == by_bearer.status_code == 200
    assert by_query.json()["recipient_id"] == "24021984"
    assert by_query.json()["message_id"].startswith("m_")
    first, second = ledger(sandbox)
    assert first["kind"] == "messenger" and first["account"] == second["account"] == page_id(sandbox)
    assert (first["recipient"], first["body"], first["reference"]) == ("24021984", "Hi Ana", "delivery-7")
    assert first["message_id"] == by_query.json()["message_id"]
    assert second["reference"] is None


def test_graph_verify_endpoints_describe_the_page_and_the_number(sandbox):
    me = sandbox.get("/v21.0/me", params={"fields": "id,name", "access_token": TOKEN})
    number = sandbox.get(
        f"/v21.0/{PHONE_NUMBER_ID}",
        params={"fields": "verified_name,display_phone_number,quality_rating"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    assert me.status_code == 200 and set(me.json()) == {"id", "name"}
    assert me.json()["id"].isdigit() and me.json()["id"] == page_id(sandbox)
    assert page_id(sandbox, "another-token") != me.json()["id"]
    assert number.status_code == 200
    assert number.json()["id"] == PHONE_NUMBER_ID and number.json()["quality_rating"] == "GREEN"
    assert number.json()["display_phone_number"].startswith("+1 555-") and number.json()["verified_name"]


def test_evolution_send_and_connection_state(sandbox):
    response = evolution(sandbox, number="5511961234567", text="Olá Ana")
    state = sandbox.get("/instance/connectionState/acme", headers={"apikey": "evolution-key"})

    assert response.status_code == 201
    answer = response.json()
    assert answer["key"]["remoteJid"] == "5511961234567@s.whatsapp.net" and answer["key"]["fromMe"] is True
    assert answer["message"] == {"extendedTextMessage": {"text": "Olá Ana"}}
    assert answer["status"] == "PENDING" and answer["messageTimestamp"].isdigit()
    [entry] = ledger(sandbox)
    assert (entry["kind"], entry["account"], entry["body"]) == ("evolution", "acme", "Olá Ana")
    assert entry["message_id"] == answer["key"]["id"] and entry["reference"] is None
    assert state.json() == {"instance": {"instanceName": "acme", "state": "open"}}


def test_evolution_refuses_a_bad_key_and_an_unknown_instance(sandbox):
    bad_key = evolution(sandbox, api_key="invalid-key")
    no_key = evolution(sandbox, api_key="")
    missing = evolution(sandbox, instance="missing")
    missing_state = sandbox.get("/instance/connectionState/missing", headers={"apikey": "k"})

    assert bad_key.status_code == no_key.status_code == 401
    assert bad_key.json() == {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}}
    assert missing.status_code == missing_state.status_code == 404
    assert missing.json() == {
        "status": 404,
        "error": "Not Found",
        "response": {"message": ['The "missing" instance does not exist']},
    }
    assert ledger(sandbox) == []
    rejected = stats(sandbox)["rejected"]
    assert (rejected["unauthorized"], rejected["not_found"]) == (2, 1)


def test_webhook_receiver_answers_an_id_and_records_the_delivery(sandbox):
    response = webhook(sandbox, recipient="contact-17", reference="delivery-9")
    missing = webhook(sandbox, name="missing")

    assert response.status_code == 200 and response.json()["id"]
    [entry] = ledger(sandbox)
    assert (entry["kind"], entry["account"], entry["recipient"]) == ("webhook", "acme", "contact-17")
    assert (entry["reference"], entry["body"], entry["message_id"]) == (
        "delivery-9",
        "Hi Ana",
        response.json()["id"],
    )
    assert missing.status_code == 404


def test_webhook_receiver_answers_a_signed_ping_without_recording_it(sandbox):
    response = sandbox.post("/webhook/acme", json={"type": "ping"})

    assert response.status_code == 200
    assert ledger(sandbox) == [] and stats(sandbox)["accepted"] == 0


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("send", [whatsapp, messenger], ids=["whatsapp", "messenger"])
@pytest.mark.parametrize(
    ("token", "subcode"), [(None, None), ("invalid-token", None), ("expired-token", 463)], ids=str
)
def test_graph_refuses_missing_invalid_and_expired_tokens_with_code_190(sandbox, send, token, subcode):
    response = send(sandbox, token=token)

    assert response.status_code == 401
    error = graph_error(response)
    assert error["code"] == 190 and error.get("error_subcode") == subcode
    assert ledger(sandbox) == [] and stats(sandbox)["rejected"]["unauthorized"] == 1


def test_malformed_graph_requests_get_code_100(sandbox):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    path = f"/v21.0/{PHONE_NUMBER_ID}/messages"
    not_json = sandbox.post(path, content=b"{not json", headers=headers)
    no_to = sandbox.post(path, json={"messaging_product": "whatsapp", "text": {"body": "x"}}, headers=headers)
    no_body = sandbox.post(
        path,
        json={"messaging_product": "whatsapp", "to": "5511", "type": "text", "text": {}},
        headers=headers,
    )
    no_recipient = sandbox.post(
        "/v21.0/me/messages",
        params={"access_token": TOKEN},
        json={"messaging_type": "RESPONSE", "message": {"text": "x"}},
    )

    for response in (not_json, no_to, no_body, no_recipient):
        assert response.status_code == 400
        assert graph_error(response)["code"] == 100
    assert "to is required" in no_to.json()["error"]["message"]
    assert ledger(sandbox) == [] and stats(sandbox)["rejected"]["bad_request"] == 4


def test_malformed_evolution_and_webhook_requests_get_400(sandbox):
    no_text = sandbox.post("/message/sendText/acme", json={"number": "5511"}, headers={"apikey": "k"})
    no_recipient = sandbox.post("/webhook/acme", json={"delivery": "d-1", "text": "x"})

    assert no_text.status_code == 400 and no_text.json()["error"] == "Bad Request"
    assert no_recipient.status_code == 400
    assert stats(sandbox)["rejected"]["bad_request"] == 2


def test_permanent_recipients_fail_the_way_each_provider_says_it(sandbox):
    wa = whatsapp(sandbox, to="5511960000000")
    fb = messenger(sandbox, psid="1230000")
    evo = evolution(sandbox, number="5511960000000")
    hook = webhook(sandbox, recipient="contact-0000")

    assert wa.status_code == 400 and graph_error(wa)["code"] == 131026
    assert "undeliverable" in wa.json()["error"]["message"]
    assert fb.status_code == 400
    assert (graph_error(fb)["code"], fb.json()["error"]["error_subcode"]) == (100, 2018001)
    assert evo.status_code == 400
    assert evo.json()["response"]["message"] == [
        {"exists": False, "jid": "5511960000000@s.whatsapp.net", "number": "5511960000000"}
    ]
    assert hook.status_code == 422
    summary = stats(sandbox)
    assert summary["accepted"] == 0 and summary["rejected"]["permanent"] == 4
    assert summary["by_account"][PHONE_NUMBER_ID]["rejected"] == {"permanent": 1}


def test_a_transient_share_of_one_fails_every_send(sandbox):
    configure(sandbox, transient_share=1.0)

    wa, fb, evo, hook = whatsapp(sandbox), messenger(sandbox), evolution(sandbox), webhook(sandbox)

    assert wa.status_code == 500 and graph_error(wa)["code"] == 131000
    assert fb.status_code == 500 and graph_error(fb)["code"] == 2
    assert evo.status_code == 500 and evo.json()["status"] == 500
    assert hook.status_code == 500
    assert stats(sandbox)["rejected"]["transient"] == 4 and ledger(sandbox) == []


def test_a_transient_share_fails_about_that_share_reproducibly(sandbox):
    configure(sandbox, transient_share=0.3, seed=7)
    first = [whatsapp(sandbox, reference=f"d-{n}").status_code for n in range(40)]
    configure(sandbox, seed=7)
    second = [whatsapp(sandbox, reference=f"e-{n}").status_code for n in range(40)]

    assert first == second
    assert 4 <= first.count(500) <= 20


def test_rate_limit_answers_like_each_provider_and_caps_every_second(sandbox):
    configure(sandbox, rate_limit=5)

    wa = [whatsapp(sandbox, to=f"55119612345{n:02d}", reference=f"d-{n}") for n in range(8)]
    fb = [messenger(sandbox, psid=f"77{n}", reference=f"d-{n}") for n in range(6)]
    evo = [evolution(sandbox, number=f"55119612345{n:02d}", text=f"t{n}") for n in range(6)]
    hook = [webhook(sandbox, reference=f"d-{n}") for n in range(6)]

    assert [r.status_code for r in wa] == [200] * 5 + [429] * 3
    throttled = wa[-1]
    assert graph_error(throttled)["code"] == 130429 and int(throttled.headers["Retry-After"]) >= 1
    assert graph_error(fb[-1])["code"] == 613 and [r.status_code for r in fb[:5]] == [200] * 5
    assert evo[-1].status_code == 429 and int(evo[-1].headers["Retry-After"]) >= 1
    assert hook[-1].status_code == 429 and int(hook[-1].headers["Retry-After"]) >= 1
    summary = stats(sandbox)
    assert summary["rejected"]["throttled"] == 3 + 1 + 1 + 1
    accounts = summary["by_account"]
    assert accounts[PHONE_NUMBER_ID]["max_in_any_1s_window"] == 5
    assert accounts["evolution:acme"]["accepted"] == accounts["webhook:acme"]["accepted"] == 5
    assert len(ledger(sandbox)) == 20


def test_pair_rate_limit_refuses_the_same_recipient_with_131056(sandbox):
    configure(sandbox, pair_limit=2)

    same = [whatsapp(sandbox, to="5511961234567", reference=f"d-{n}") for n in range(3)]
    other = whatsapp(sandbox, to="5511967654321", reference="d-9")

    assert [r.status_code for r in same] == [200, 200, 400]
    assert graph_error(same[-1])["code"] == 131056
    assert other.status_code == 200
    assert stats(sandbox)["rejected"]["recipient_paced"] == 1


def test_hung_requests_answer_late_and_are_accepted_anyway(sandbox):
    configure(sandbox, hang_share=1.0, hang_seconds=0.6)

    with pytest.raises(httpx.ReadTimeout):
        whatsapp(sandbox, reference="gave-up", timeout=0.2)
    started = time.monotonic()
    waited = whatsapp(sandbox, reference="waited")

    assert waited.status_code == 200 and time.monotonic() - started >= 0.55
    summary = stats(sandbox)
    assert summary["hung"] == 2 and summary["accepted"] == 2
    assert {entry["reference"] for entry in ledger(sandbox)} == {"gave-up", "waited"}


def test_latency_and_jitter_delay_every_answer(sandbox):
    configure(sandbox, latency_ms=150, jitter_ms=50)

    started = time.monotonic()
    response = whatsapp(sandbox)

    assert response.status_code == 200 and 0.15 <= time.monotonic() - started < 1.0


def test_malformed_html_is_a_load_balancers_502_and_the_message_is_not_accepted(sandbox):
    configure(sandbox, malformed_share=1.0, malformed_kind="html")

    wa, hook = whatsapp(sandbox), webhook(sandbox)

    for response in (wa, hook):
        assert response.status_code == 502
        assert response.headers["Content-Type"].startswith("text/html")
        assert "<title>502 Bad Gateway</title>" in response.text
    summary = stats(sandbox)
    assert (summary["accepted"], summary["malformed"], summary["rejected"]["transient"]) == (0, 2, 2)
    assert ledger(sandbox) == []


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_malformed_2xx_answers_are_garbled_but_the_message_is_accepted(sandbox, kind):
    configure(sandbox, malformed_share=1.0, malformed_kind=kind)

    wa, evo = whatsapp(sandbox, reference="delivery-3"), evolution(sandbox)
    configure(sandbox, malformed_share=0.0)
    intact = whatsapp(sandbox, reference="delivery-4")

    assert (wa.status_code, evo.status_code) == (200, 201)
    for response in (wa, evo):
        if kind == "empty":
            assert response.content == b""
        else:
            assert response.content and response.content[:1] == b"{"
            with pytest.raises(json.JSONDecodeError):
                response.json()
    if kind == "truncated":
        wa_id = ledger(sandbox)[0]["message_id"]
        whole = intact.text.replace(intact.json()["messages"][0]["id"], wa_id)
        assert whole.startswith(wa.text) and len(wa.content) == len(whole.encode()) // 2
    summary = stats(sandbox)
    assert (summary["accepted"], summary["malformed"], summary["duplicates"]) == (3, 2, 0)
    assert [entry["reference"] for entry in ledger(sandbox)] == ["delivery-3", None, "delivery-4"]


def test_malformed_share_spares_refusals_pings_and_is_validated(sandbox):
    configure(sandbox, malformed_share=1.0, malformed_kind="truncated", rate_limit=1)

    accepted, throttled = whatsapp(sandbox, reference="d-1"), whatsapp(sandbox, reference="d-2")
    ping = sandbox.post("/webhook/acme", json={"type": "ping"})
    bad_kind = sandbox.put("/_sandbox/config", json={"malformed_kind": "xml"})
    bad_share = sandbox.put("/_sandbox/config", json={"malformed_share": 1.5})

    assert accepted.status_code == 200 and accepted.content.startswith(b'{"messaging_product"')
    assert throttled.status_code == 429 and graph_error(throttled)["code"] == 130429
    assert ping.json() == {"ok": True}
    assert bad_kind.status_code == bad_share.status_code == 400
    assert "html, empty, truncated" in bad_kind.json()["error"]
    assert stats(sandbox)["malformed"] == 1


def test_a_malformed_share_garbles_about_that_share_reproducibly(sandbox):
    configure(sandbox, malformed_share=0.25, malformed_kind="empty", seed=3)
    first = [len(whatsapp(sandbox, reference=f"d-{n}").content) for n in range(40)]
    configure(sandbox, seed=3)
    second = [len(whatsapp(sandbox, reference=f"e-{n}").content) for n in range(40)]

    assert [size == 0 for size in first] == [size == 0 for size in second]
    assert 3 <= first.count(0) <= 18
    assert stats(sandbox)["accepted"] == 80


# --- ledger and statistics ------------------------------------------------------------------


def test_duplicates_count_the_same_reference_to_the_same_recipient(sandbox):
    whatsapp(sandbox, reference="delivery-1")
    whatsapp(sandbox, reference="delivery-1")
    assert stats(sandbox)["duplicates"] == 1

    sandbox.post("/_sandbox/reset")
    whatsapp(sandbox, text="Same text", reference="delivery-1")
    whatsapp(sandbox, text="Same text", reference="delivery-2")
    whatsapp(sandbox, to="5511967654321", text="Same text", reference="delivery-1")
    summary = stats(sandbox)
    assert (summary["accepted"], summary["duplicates"]) == (3, 0)


def test_without_a_reference_duplicates_are_judged_by_the_body(sandbox):
    evolution(sandbox, text="Hi Ana")
    evolution(sandbox, text="Hi Ana")
    evolution(sandbox, text="Hi again")

    summary = stats(sandbox)
    assert (summary["accepted"], summary["duplicates"]) == (3, 1)
    assert summary["by_account"]["acme"]["duplicates"] == 1


def test_max_in_any_1s_window_is_the_busiest_second_per_account(sandbox):
    for n in range(3):
        whatsapp(sandbox, reference=f"a-{n}")
    webhook(sandbox, reference="w-1")
    time.sleep(1.05)
    for n in range(2):
        whatsapp(sandbox, reference=f"b-{n}")

    accounts = stats(sandbox)["by_account"]
    assert accounts[PHONE_NUMBER_ID]["max_in_any_1s_window"] == 3
    assert accounts[PHONE_NUMBER_ID]["accepted"] == 5
    assert accounts["acme"] == {
        "kind": "webhook",
        "accepted": 1,
        "duplicates": 0,
        "max_in_any_1s_window": 1,
        "rejected": {},
    }


def test_ledger_pages_with_after_and_limit(sandbox):
    for n in range(5):
        whatsapp(sandbox, reference=f"d-{n}")

    pages, after = [], 0
    while True:
        page = sandbox.get("/_sandbox/ledger", params={"after": after, "limit": 2}).json()
        if not page["entries"]:
            break
        pages.append([entry["seq"] for entry in page["entries"]])
        after = page["next"]

    assert pages == [[1, 2], [3, 4], [5]]
    assert after == 5


def test_config_is_read_and_partially_updated_at_run_time(sandbox):
    defaults = sandbox.get("/_sandbox/config").json()
    updated = configure(sandbox, latency_ms=5, permanent_suffixes=["9999"])
    unknown = sandbox.put("/_sandbox/config", json={"latency_ms": 1, "colour": "blue"})
    out_of_range = sandbox.put("/_sandbox/config", json={"transient_share": 2})

    assert defaults["hang_seconds"] == 30 and defaults["permanent_suffixes"] == ["0000"]
    assert defaults["delivered_after_ms"] == 200 and defaults["read_after_ms"] == 1000
    assert defaults["read_share"] == 0.5
    assert updated == {**defaults, "latency_ms": 5, "permanent_suffixes": ["9999"]}
    assert unknown.status_code == out_of_range.status_code == 400
    assert "colour" in unknown.json()["error"]
    assert sandbox.get("/_sandbox/config").json()["latency_ms"] == 5
    assert whatsapp(sandbox, to="5511960000000").status_code == 200
    assert whatsapp(sandbox, to="5511969999").status_code == 400


def test_reset_forgets_messages_counters_and_run_time_config(sandbox):
    defaults = sandbox.get("/_sandbox/config").json()
    configure(sandbox, rate_limit=1)
    whatsapp(sandbox)
    whatsapp(sandbox)

    sandbox.post("/_sandbox/reset").raise_for_status()

    summary = stats(sandbox)
    assert (summary["accepted"], summary["rejected"]["throttled"], summary["by_account"]) == (0, 0, {})
    assert ledger(sandbox) == [] and sandbox.get("/_sandbox/config").json() == defaults


def test_startup_options_set_the_config_that_reset_returns_to():
    options = {
        "latency_ms": 5.0,
        "rate_limit": 80.0,
        "permanent_suffixes": ["99", "98"],
        "callbacks": False,
        "malformed_share": 0.25,
        "malformed_kind": "truncated",
    }
    with (
        SandboxProcess(log=ARTIFACTS / "sandbox-options.log", **options) as configured,
        httpx.Client(base_url=configured.url) as client,
    ):
        configure(client, latency_ms=0, callbacks=True, malformed_share=0.0, malformed_kind="html")
        client.post("/_sandbox/reset").raise_for_status()
        config = client.get("/_sandbox/config").json()

    assert {name: config[name] for name in options} == options


# --- SMTP ------------------------------------------------------------------------------------


def mail(to: str = "ana@example.com", reference: str = "delivery-5") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Acme <news@acme.example>"
    message["To"] = to
    message["Subject"] = "Your order"
    message["X-Crier-Delivery"] = reference
    message.set_content("Hi Ana, it shipped.")
    message.add_alternative("<p>Hi Ana, it shipped.</p>", subtype="html")
    return message


@pytest.fixture
def smtp(sandbox_process: SandboxProcess, sandbox: httpx.Client) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP("127.0.0.1", sandbox_process.smtp_port, timeout=10) as client:
        yield client


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtp_records_authenticated_mail(smtp, sandbox, mechanism):
    smtp.ehlo()
    smtp.user, smtp.password = "news@acme.example", "secret"
    code, _ = smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))
    assert code == 235

    refused = smtp.send_message(mail(reference="delivery-5"))

    assert refused == {}
    [entry] = ledger(sandbox)
    assert (entry["kind"], entry["account"], entry["recipient"]) == (
        "smtp",
        "news@acme.example",
        "ana@example.com",
    )
    assert entry["reference"] == "delivery-5" and entry["body"] == "Your order\nHi Ana, it shipped."


def test_smtp_refuses_the_password_invalid_with_535(smtp, sandbox):
    smtp.ehlo()
    smtp.user, smtp.password = "news@acme.example", "invalid"
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        smtp.auth("PLAIN", smtp.auth_plain)
    assert refused.value.smtp_code == 535
    assert stats(sandbox)["rejected"]["unauthorized"] == 1


def test_smtp_requires_authentication(smtp, sandbox):
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.send_message(mail())
    assert refused.value.smtp_code == 530


def test_smtp_rejects_recipients_ending_in_0000_with_550(smtp, sandbox):
    smtp.login("news@acme.example", "secret")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp.send_message(mail(to="user0000@example.com"))

    assert refused.value.recipients["user0000@example.com"][0] == 550
    assert ledger(sandbox) == [] and stats(sandbox)["rejected"]["permanent"] == 1


def test_smtp_throttles_with_421_over_the_rate_limit(smtp, sandbox):
    configure(sandbox, rate_limit=1)
    smtp.login("news@acme.example", "secret")
    smtp.send_message(mail(reference="d-1"))

    with pytest.raises(smtplib.SMTPDataError) as throttled:
        smtp.send_message(mail(reference="d-2"))

    assert throttled.value.smtp_code == 421
    assert stats(sandbox)["rejected"]["throttled"] == 1


# --- subscriptions, receipts and incoming messages -------------------------------------------


class Receiver:
    """A tenant's webhook endpoint: answers Meta's handshake and records every POST."""

    def __init__(self, answer_challenge: bool = True) -> None:
        self.answer_challenge = answer_challenge
        self.posts: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                ok = query.get("hub.mode") == ["subscribe"] and query.get("hub.verify_token") == [
                    VERIFY_TOKEN
                ]
                answer = query["hub.challenge"][0] if ok and receiver.answer_challenge else "nope"
                self._reply(200 if ok else 403, answer.encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.put((dict(self.headers), body))
                self._reply(200, b"EVENT_RECEIVED")

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def collect(self, enough: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> list[dict]:
        """Payloads received until ``enough`` of them arrived (each checked for its credentials)."""
        payloads: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not enough(payloads):
            headers, body = self.posts.get(timeout=max(0.01, deadline - time.monotonic()))
            if "X-Hub-Signature-256" in headers:
                expected = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
                assert headers["X-Hub-Signature-256"] == expected
            else:
                assert headers["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
            payloads.append(json.loads(body))
        return payloads


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A page's webhook endpoint, listening until the block ends."""
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as receiver:
        yield receiver


def subscribe(
    sandbox: httpx.Client, receiver: Receiver, kind: str, account: str, **more: str
) -> httpx.Response:
    credentials = (
        {"webhook_token": WEBHOOK_TOKEN}
        if kind == "evolution"
        else {"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN}
    )
    return sandbox.post(
        "/_sandbox/subscriptions",
        json={"kind": kind, "account": account, "callback_url": receiver.url, **credentials, **more},
    )


@pytest.fixture
def fast_receipts(sandbox: httpx.Client) -> None:
    configure(sandbox, delivered_after_ms=30, read_after_ms=80, read_share=1.0, callback_flush_ms=20)


def whatsapp_statuses(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        status
        for payload in payloads
        for entry in payload["entry"]
        for change in entry["changes"]
        for status in change["value"].get("statuses", [])
    ]


def test_subscription_refused_when_the_handshake_does_not_echo_the_challenge(sandbox, receiver):
    receiver.answer_challenge = False
    refused = subscribe(sandbox, receiver, "whatsapp", PHONE_NUMBER_ID)
    wrong_token = sandbox.post(
        "/_sandbox/subscriptions",
        json={
            "kind": "whatsapp",
            "account": PHONE_NUMBER_ID,
            "callback_url": receiver.url,
            "app_secret": APP_SECRET,
            "verify_token": "not-the-one",
        },
    )

    assert refused.status_code == wrong_token.status_code == 400
    assert "does not match challenge" in refused.json()["error"]
    assert sandbox.get("/_sandbox/subscriptions").json() == {"subscriptions": []}


def test_whatsapp_receipts_arrive_signed_with_the_reference(sandbox, receiver, fast_receipts):
    assert subscribe(sandbox, receiver, "whatsapp", PHONE_NUMBER_ID).json()["subscribed"] is True
    ids = {
        whatsapp(sandbox, to=f"551196123456{n}", reference=f"delivery-{n}").json()["messages"][0]["id"]: n
        for n in range(2)
    }

    statuses = whatsapp_statuses(receiver.collect(lambda got: len(whatsapp_statuses(got)) >= 4))

    assert sorted((status["id"], status["status"]) for status in statuses) == sorted(
        (message_id, status) for message_id in ids for status in ("delivered", "read")
    )
    for status in statuses:
        n = ids[status["id"]]
        assert status["biz_opaque_callback_data"] == f"delivery-{n}"
        assert status["recipient_id"] == f"551196123456{n}" and status["timestamp"].isdigit()
    assert eventually(lambda: stats(sandbox)["callbacks"]["statuses"] == 4)


def test_messenger_receipts_carry_mids_and_a_read_watermark(sandbox, receiver, fast_receipts):
    page = page_id(sandbox)
    assert subscribe(sandbox, receiver, "messenger", page).status_code == 200
    mid = messenger(sandbox, psid="24021984").json()["message_id"]

    payloads = receiver.collect(
        lambda got: (
            {key for p in got for e in p["entry"] for m in e["messaging"] for key in m}
            >= {"delivery", "read"}
        )
    )

    events = [event for payload in payloads for entry in payload["entry"] for event in entry["messaging"]]
    assert all(payload["object"] == "page" and payload["entry"][0]["id"] == page for payload in payloads)
    delivery = next(event for event in events if "delivery" in event)
    read = next(event for event in events if "read" in event)
    assert delivery["delivery"]["mids"] == [mid] and delivery["sender"] == {"id": "24021984"}
    assert delivery["recipient"] == {"id": page}
    assert read["read"]["watermark"] >= delivery["delivery"]["watermark"] - 1000


def test_evolution_receipts_are_message_updates_with_the_bearer_token(sandbox, receiver, fast_receipts):
    assert subscribe(sandbox, receiver, "evolution", "acme").status_code == 200
    key_id = evolution(sandbox).json()["key"]["id"]

    payloads = receiver.collect(lambda got: len(got) >= 2)

    assert sorted(payload["data"]["status"] for payload in payloads) == ["DELIVERY_ACK", "READ"]
    for payload in payloads:
        assert (payload["event"], payload["instance"]) == ("messages.update", "acme")
        assert payload["data"]["keyId"] == key_id
        assert payload["data"]["remoteJid"] == "5511961234567@s.whatsapp.net"


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    """Another page's webhook endpoint (another workspace), on its own callback URL."""
    with running_receiver() as receiver:
        yield receiver


@pytest.mark.parametrize("kind", ["whatsapp", "evolution"])
def test_two_pages_with_the_same_account_each_get_the_receipts_of_their_own_messages(
    sandbox, receiver, second_receiver, fast_receipts, kind
):
    account = PHONE_NUMBER_ID if kind == "whatsapp" else "acme"
    tokens = {receiver: "token-of-workspace-a", second_receiver: "token-of-workspace-b"}
    for page, token in tokens.items():
        answer = subscribe(sandbox, page, kind, account, access_token=token)
        assert answer.status_code == 200
    listed = sandbox.get("/_sandbox/subscriptions").json()["subscriptions"]
    assert sorted(item["callback_url"] for item in listed) == sorted(page.url for page in tokens)

    sent = {}
    for page, token in tokens.items():
        if kind == "whatsapp":
            sent[page] = whatsapp(sandbox, token=token, reference=None).json()["messages"][0]["id"]
        else:
            sent[page] = evolution(sandbox, instance=account, api_key=token).json()["key"]["id"]

    for page in tokens:
        payloads = page.collect(lambda got: len(got) >= (1 if kind == "whatsapp" else 2))
        if kind == "whatsapp":
            ids = {status["id"] for status in whatsapp_statuses(payloads)}
        else:
            ids = {payload["data"]["keyId"] for payload in payloads}
        assert ids == {sent[page]}
    assert eventually(lambda: stats(sandbox)["callbacks"]["statuses"] == 4)
    time.sleep(0.2)
    for page in tokens:  # nothing of the other page's message came later either
        while not page.posts.empty():
            _, body = page.posts.get()
            assert sent[page] in body.decode() and all(
                other not in body.decode() for other in sent.values() if other != sent[page]
            )


def test_no_receipts_when_callbacks_are_off(sandbox, receiver, fast_receipts):
    configure(sandbox, callbacks=False)
    subscribe(sandbox, receiver, "evolution", "acme")
    evolution(sandbox)

    time.sleep(0.3)
    assert receiver.posts.empty()


def test_a_failing_callback_is_counted_and_the_sandbox_keeps_serving(sandbox, fast_receipts):
    sandbox.post(
        "/_sandbox/subscriptions",
        json={
            "kind": "evolution",
            "account": "acme",
            "callback_url": "http://127.0.0.1:9/nothing-listens-here",
            "webhook_token": WEBHOOK_TOKEN,
        },
    ).raise_for_status()
    evolution(sandbox)

    assert eventually(lambda: stats(sandbox)["callbacks"]["failed"] == 2)
    assert whatsapp(sandbox).status_code == 200


@pytest.mark.parametrize("kind", ["whatsapp", "messenger", "evolution"])
def test_inbound_messages_reach_the_subscriber_in_the_provider_format(sandbox, receiver, kind):
    account = {"whatsapp": PHONE_NUMBER_ID, "messenger": TOKEN, "evolution": "acme"}[kind]
    assert subscribe(sandbox, receiver, kind, account).status_code == 200

    response = sandbox.post(
        "/_sandbox/inbound",
        json={"kind": kind, "account": account, "sender": "5511961234567", "text": "STOP", "name": "Ana"},
    )

    assert response.status_code == 200 and response.json()["callback_status"] == 200
    [payload] = receiver.collect(lambda got: len(got) >= 1)
    if kind == "whatsapp":
        value = payload["entry"][0]["changes"][0]["value"]
        assert value["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
        assert value["contacts"] == [{"profile": {"name": "Ana"}, "wa_id": "5511961234567"}]
        [message] = value["messages"]
        assert (message["from"], message["type"], message["text"]) == (
            "5511961234567",
            "text",
            {"body": "STOP"},
        )
    elif kind == "messenger":
        [event] = payload["entry"][0]["messaging"]
        assert event["sender"] == {"id": "5511961234567"} and event["recipient"] == {"id": page_id(sandbox)}
        assert event["message"]["text"] == "STOP" and event["message"]["mid"]
    else:
        assert (payload["event"], payload["instance"]) == ("messages.upsert", "acme")
        assert payload["data"]["key"]["remoteJid"] == "5511961234567@s.whatsapp.net"
        assert payload["data"]["message"] == {"conversation": "STOP"}


def test_inbound_without_a_subscription_is_404(sandbox):
    response = sandbox.post(
        "/_sandbox/inbound", json={"kind": "whatsapp", "account": "1", "sender": "55", "text": "hi"}
    )
    assert response.status_code == 404
