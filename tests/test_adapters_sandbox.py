"""Every provider adapter against the sandbox, over real HTTP and SMTP, one outcome class at a time.

The sandbox (``sandbox`` fixture: reset before each test) is configured through
``PUT /_sandbox/config``; each test sends through ``adapter_for(...)`` with a shared
``make_client(guard=UrlGuard(allowed_hosts))`` client, exactly as a worker does, and checks the
adapter's :class:`SendResult` against what the sandbox recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import httpx
import pytest

from tasks.providers import adapter_for, make_client
from tasks.providers.base import (
    Outcome,
    OutgoingMessage,
    PageConnection,
    ProviderAdapter,
    ProviderKind,
    SendResult,
    TemplateRef,
    VerifyResult,
)
from tasks.providers.ssrf import UrlGuard
from tasks.sandbox import SandboxProcess
from tasks.sandbox.wire import page_id_for_token

T = TypeVar("T")

TOKEN = "EAAG-sandbox-token"
PHONE_NUMBER_ID = "106540352242922"
EVOLUTION_KEY = "evolution-key-B6D711FC"
SMTP_USER = "news@acme.example"
SHORT_READ = httpx.Timeout(connect=5.0, read=0.15, write=5.0, pool=5.0)
K = ProviderKind


@pytest.fixture(name="_clean_database", autouse=True)
def no_database_cleanup() -> Iterator[None]:
    """These tests never touch the database; skip the suite's per-test TRUNCATE."""
    yield


@dataclass(frozen=True)
class Provider:
    """One adapter as a test case: its page, a recipient, and what the sandbox makes of them."""

    name: str
    kind: ProviderKind
    recipient: str
    ledger_recipient: str
    permanent_recipient: str
    permanent: tuple[str, str]  # (code, a piece of the provider's text) for a recipient that always fails
    transient_code: str
    throttled_code: str
    template: TemplateRef | None = None
    carries_reference: bool = True
    subject: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name

    def message(self, reference: str = "dlv-1", *, recipient: str | None = None, text: str = "Hi Ana"):
        return OutgoingMessage(
            reference=reference,
            recipient=recipient or self.recipient,
            text=text,
            subject=self.subject,
            template=self.template,
        )

    def body(self, text: str = "Hi Ana") -> str:
        if self.template is not None:
            return f"[template {self.template.name}/{self.template.language}] " + " | ".join(
                self.template.body_parameters
            )
        return f"{self.subject}\n{text}" if self.subject else text

    def account(self) -> str:
        return {
            K.MESSENGER: page_id_for_token(TOKEN),
            K.WHATSAPP: PHONE_NUMBER_ID,
            K.EVOLUTION: "acme",
            K.WEBHOOK: "acme",
            K.SMTP: SMTP_USER,
        }[self.kind]

    def connection(
        self,
        sandbox: SandboxProcess,
        *,
        credentials: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        base_url: str | None = None,
        allowed: bool = True,
    ) -> PageConnection:
        """A page of this kind on ``sandbox``, allowed past the SSRF guard unless ``allowed=False``."""
        http = f"127.0.0.1:{sandbox.port}"
        defaults: dict[ProviderKind, tuple[str, dict[str, str], dict[str, Any]]] = {
            K.MESSENGER: (
                sandbox.url,
                {"page_access_token": TOKEN, "app_secret": "app-secret-1", "verify_token": "verify-1"},
                {"api_version": "v21.0", "page_id": page_id_for_token(TOKEN)},
            ),
            K.WHATSAPP: (
                sandbox.url,
                {"access_token": TOKEN, "app_secret": "app-secret-1", "verify_token": "verify-1"},
                {"api_version": "v21.0", "phone_number_id": PHONE_NUMBER_ID, "waba_id": "2001"},
            ),
            K.EVOLUTION: (
                sandbox.url,
                {"api_key": EVOLUTION_KEY, "webhook_token": "evo-webhook-token"},
                {"instance": "acme"},
            ),
            K.WEBHOOK: (f"{sandbox.url}/webhook/acme", {"signing_secret": "whsec_tenant-secret"}, {}),
            K.SMTP: (
                f"smtp://127.0.0.1:{sandbox.smtp_port}",
                {"username": SMTP_USER, "password": "smtp-secret"},
                {"from_address": SMTP_USER, "from_name": "Acme", "starttls": "false"},
            ),
        }
        default_url, default_credentials, default_settings = defaults[self.kind]
        hosts = {http, f"127.0.0.1:{sandbox.smtp_port}"} if self.kind is K.SMTP else {http}
        return PageConnection(
            kind=self.kind,
            base_url=base_url or default_url,
            credentials={**default_credentials, **(credentials or {})},
            settings={**default_settings, **self.settings, **(settings or {})},
            allowed_hosts=frozenset(hosts) if allowed else frozenset(),
        )


MESSENGER = Provider(
    "messenger",
    K.MESSENGER,
    recipient="24021984",
    ledger_recipient="24021984",
    permanent_recipient="1230000",
    permanent=("100/2018001", "(#100) No matching user found"),
    transient_code="2",
    throttled_code="613/1893016",
)
WHATSAPP = Provider(
    "whatsapp",
    K.WHATSAPP,
    recipient="+55 11 96123-4567",
    ledger_recipient="5511961234567",
    permanent_recipient="+5511960000000",
    permanent=("131026", "(#131026) Message undeliverable — Unable to deliver message."),
    transient_code="131000",
    throttled_code="130429",
)
WHATSAPP_TEMPLATE = replace(
    WHATSAPP, name="whatsapp-template", template=TemplateRef("order_update", "pt_BR", ("Ana", "#1042"))
)
EVOLUTION = Provider(
    "evolution",
    K.EVOLUTION,
    recipient="+5511961234567",
    ledger_recipient="5511961234567",
    permanent_recipient="+5511960000000",
    permanent=("400", "Bad Request — {'exists': False"),
    transient_code="500",
    throttled_code="429",
    carries_reference=False,
)
WEBHOOK = Provider(
    "webhook",
    K.WEBHOOK,
    recipient="contact-17",
    ledger_recipient="contact-17",
    permanent_recipient="contact-0000",
    permanent=("422", 'HTTP 422: {"error":"recipient rejected"}'),
    transient_code="500",
    throttled_code="429",
)
SMTP = Provider(
    "smtp",
    K.SMTP,
    recipient="ana@example.com",
    ledger_recipient="ana@example.com",
    permanent_recipient="user0000@example.com",
    permanent=("550", "Recipient address rejected: User unknown"),
    transient_code="451",
    throttled_code="421",
    subject="Your order",
)

PROVIDERS = [MESSENGER, WHATSAPP, WHATSAPP_TEMPLATE, EVOLUTION, WEBHOOK, SMTP]
HTTP_PROVIDERS = [MESSENGER, WHATSAPP, EVOLUTION, WEBHOOK]
each_provider = pytest.mark.parametrize("provider", PROVIDERS, ids=str)


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control(sandbox_process: SandboxProcess) -> Iterator[httpx.Client]:
    """A client of the sandbox's ``/_sandbox`` endpoints (one per module: building one costs ~50 ms)."""
    with httpx.Client(base_url=sandbox_process.url, timeout=5) as client:
        yield client


def configure(control: httpx.Client, **changes: Any) -> None:
    response = control.put("/_sandbox/config", json=changes)
    assert response.status_code == 200, response.text


def stats(control: httpx.Client) -> dict[str, Any]:
    return control.get("/_sandbox/stats").json()


def ledger(control: httpx.Client) -> list[dict[str, Any]]:
    return control.get("/_sandbox/ledger", params={"limit": 10_000}).json()["entries"]


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def _using(
    connection: PageConnection, use: Callable[[ProviderAdapter], Awaitable[T]], timeout: httpx.Timeout | None
) -> T:
    """Run ``use`` with the page's adapter over a fresh shared client; close both afterwards."""
    options = {"timeout": timeout} if timeout is not None else {}
    client = make_client(guard=UrlGuard(connection.allowed_hosts), **options)
    try:
        adapter = adapter_for(connection, client)
        try:
            return await use(adapter)
        finally:
            await adapter.aclose()
    finally:
        await client.aclose()


def send(
    connection: PageConnection, *messages: OutgoingMessage, timeout: httpx.Timeout | None = None
) -> list[SendResult]:
    """Send ``messages`` concurrently (``asyncio.gather``) over one client and adapter."""

    async def send_all(adapter: ProviderAdapter) -> list[SendResult]:
        return list(await asyncio.gather(*(adapter.send(message) for message in messages)))

    return asyncio.run(_using(connection, send_all, timeout))


def send_one(connection: PageConnection, message: OutgoingMessage, **kw: Any) -> SendResult:
    [result] = send(connection, message, **kw)
    return result


def verify(connection: PageConnection) -> VerifyResult:
    return asyncio.run(_using(connection, lambda adapter: adapter.verify(), None))


def assert_no_credentials(connection: PageConnection, *texts: str | None) -> None:
    for name, secret in connection.credentials.items():
        for text in texts:
            assert len(secret) < 4 or secret not in (text or ""), f"{name} leaked into {text!r}"


# --- one outcome class at a time -------------------------------------------------------------


@each_provider
def test_sent_with_the_provider_id_and_the_reference_in_the_ledger(sandbox, control, provider):
    result = send_one(provider.connection(sandbox), provider.message("dlv-sent-1"))

    assert result.outcome is Outcome.SENT, result
    assert result.provider_message_id and not result.maybe_delivered
    [entry] = ledger(control)
    assert (entry["kind"], entry["account"]) == (provider.kind.value, provider.account())
    assert (entry["recipient"], entry["body"]) == (provider.ledger_recipient, provider.body())
    assert entry["reference"] == ("dlv-sent-1" if provider.carries_reference else None)
    if provider.kind is K.SMTP:
        # The provider id is the Message-ID Crier set; the sink's queue id is in the reply text.
        assert result.provider_message_id.startswith("<") and entry["message_id"] in (result.detail or "")
    else:
        assert entry["message_id"] == result.provider_message_id


@each_provider
def test_a_recipient_that_always_fails_is_permanent_with_the_providers_words(sandbox, control, provider):
    connection = provider.connection(sandbox)
    result = send_one(connection, provider.message(recipient=provider.permanent_recipient))

    code, text = provider.permanent
    assert (result.outcome, result.code, result.maybe_delivered) == (Outcome.PERMANENT, code, False)
    assert text in (result.detail or ""), result.detail
    assert ledger(control) == [] and stats(control)["rejected"]["permanent"] == 1
    assert_no_credentials(connection, result.detail)


@each_provider
def test_a_provider_side_failure_is_transient_and_not_delivered(sandbox, control, provider):
    configure(control, transient_share=1.0)

    result = send_one(provider.connection(sandbox), provider.message())

    assert (result.outcome, result.code) == (Outcome.TRANSIENT, provider.transient_code), result
    assert result.detail and not result.maybe_delivered
    assert ledger(control) == [] and stats(control)["rejected"]["transient"] == 1


@each_provider
def test_a_burst_over_the_rate_limit_is_throttled_with_retry_after(sandbox, control, provider):
    configure(control, rate_limit=2)
    messages = [provider.message(f"dlv-{n}", text=f"Hi Ana {n}") for n in range(5)]

    results = send(provider.connection(sandbox), *messages)

    assert sorted(result.outcome for result in results) == [Outcome.SENT] * 2 + [Outcome.THROTTLED] * 3
    for result in results:
        if result.outcome is Outcome.THROTTLED:
            assert result.code == provider.throttled_code and not result.maybe_delivered
            if provider.kind in (K.MESSENGER, K.SMTP):
                # Graph's 613 and SMTP's 421 carry no Retry-After (WIRE.md): the caller backs off itself.
                assert result.retry_after is None
            else:
                assert result.retry_after is not None and 1.0 <= result.retry_after <= 2.0
    assert len(ledger(control)) == 2 and stats(control)["rejected"]["throttled"] == 3


@pytest.mark.parametrize("provider", [WHATSAPP, WHATSAPP_TEMPLATE], ids=str)
def test_whatsapp_pair_limit_paces_only_that_recipient(sandbox, control, provider):
    configure(control, pair_limit=1)
    connection = provider.connection(sandbox)

    first = send_one(connection, provider.message("dlv-1"))
    again = send_one(connection, provider.message("dlv-2"))
    other = send_one(connection, provider.message("dlv-3", recipient="+5511967654321"))

    assert (first.outcome, other.outcome) == (Outcome.SENT, Outcome.SENT)
    assert (again.outcome, again.code) == (Outcome.RECIPIENT_PACED, "131056")
    assert "pair rate limit hit" in (again.detail or "") and again.retry_after is None
    assert stats(control)["rejected"]["recipient_paced"] == 1


def case(provider: Provider, name: str, code: str | None, **changes: Any) -> Any:
    """A parameter set (provider, ``Provider.connection`` overrides, expected code) with a readable id."""
    return pytest.param(provider, changes, code, id=f"{provider.name}-{name}")


PAGE_FATAL_CASES = [
    case(MESSENGER, "invalid-token", "190", credentials={"page_access_token": "invalid-token"}),
    case(MESSENGER, "expired-token", "190/463", credentials={"page_access_token": "expired-token"}),
    case(WHATSAPP, "invalid-token", "190", credentials={"access_token": "invalid-token"}),
    case(WHATSAPP, "expired-token", "190/463", credentials={"access_token": "expired-token"}),
    case(WHATSAPP_TEMPLATE, "expired-token", "190/463", credentials={"access_token": "expired-token"}),
    case(EVOLUTION, "bad-key", "401", credentials={"api_key": "invalid-key"}),
    case(EVOLUTION, "missing-instance", "404", settings={"instance": "missing"}),
    case(WEBHOOK, "loopback-not-allowed", "ssrf", allowed=False),
    case(SMTP, "password-invalid", "535", credentials={"password": "invalid"}),
]


@pytest.mark.parametrize(("provider", "changes", "code"), PAGE_FATAL_CASES)
def test_unusable_credentials_or_account_are_page_fatal(sandbox, control, provider, changes, code):
    connection = provider.connection(sandbox, **changes)

    result = send_one(connection, provider.message())

    assert (result.outcome, result.code, result.maybe_delivered) == (Outcome.PAGE_FATAL, code, False), result
    assert result.detail
    assert_no_credentials(connection, result.detail)
    assert ledger(control) == []


@each_provider
def test_a_hung_answer_past_the_read_timeout_is_maybe_delivered(sandbox, control, provider, monkeypatch):
    configure(control, hang_share=1.0, hang_seconds=0.5)
    monkeypatch.setattr("tasks.providers.smtp.COMMAND_TIMEOUT", SHORT_READ.read)

    started = time.monotonic()
    result = send_one(provider.connection(sandbox), provider.message("dlv-hung"), timeout=SHORT_READ)

    assert (result.outcome, result.maybe_delivered) == (Outcome.TRANSIENT, True), result
    assert time.monotonic() - started < 0.5
    assert stats(control)["hung"] == 1
    if provider.kind is K.SMTP:
        # The SMTP sink (aiosmtpd) drops a mail whose client left before the reply; a real server
        # may already have queued it, which is why the adapter still says maybe_delivered.
        time.sleep(0.5)
        assert stats(control)["accepted"] == 0
    else:
        # Maybe delivered indeed: the provider accepts it once the hang is over.
        assert eventually(lambda: stats(control)["accepted"] == 1)


@pytest.mark.parametrize("malformed", ["html", "empty", "truncated"])
@pytest.mark.parametrize("provider", HTTP_PROVIDERS, ids=str)
def test_malformed_answers_are_transient_and_maybe_delivered_on_2xx(sandbox, control, provider, malformed):
    configure(control, malformed_share=1.0, malformed_kind=malformed)

    result = send_one(provider.connection(sandbox), provider.message("dlv-garbled"))

    summary = stats(control)
    assert summary["malformed"] == 1
    if malformed == "html":
        assert (result.outcome, result.code, result.maybe_delivered) == (Outcome.TRANSIENT, "502", False)
        assert "502 Bad Gateway" in (result.detail or "")
        assert summary["accepted"] == 0 and summary["rejected"]["transient"] == 1
        return
    assert summary["accepted"] == 1
    if provider.kind is K.WEBHOOK:
        # A webhook's body is free-form (WIRE.md): any 2xx is sent, the id falls back to the reference.
        assert (result.outcome, result.provider_message_id) == (Outcome.SENT, "webhook-dlv-garbled")
        return
    status = "201" if provider.kind is K.EVOLUTION else "200"
    assert (result.outcome, result.code, result.maybe_delivered) == (Outcome.TRANSIENT, status, True)
    assert result.provider_message_id is None and result.detail
    if malformed == "empty":
        assert "(empty body)" in result.detail


# --- verify ----------------------------------------------------------------------------------


VERIFY_OK = {
    "messenger": f"Sandbox Page {page_id_for_token(TOKEN)[-4:]} (page {page_id_for_token(TOKEN)})",
    "whatsapp": "Sandbox 2922 (+1 555-2922) quality GREEN",
    "whatsapp-template": "Sandbox 2922 (+1 555-2922) quality GREEN",
    "evolution": "instance acme is connected (state open)",
    "webhook": "the webhook answered the signed ping with HTTP 200",
    "smtp": "connected to 127.0.0.1:{port} (no TLS, logged in)",
}


@each_provider
def test_verify_ok(sandbox, control, provider):
    result = verify(provider.connection(sandbox))

    assert result.ok, result
    assert result.detail == VERIFY_OK[provider.name].format(port=sandbox.smtp_port)
    assert ledger(control) == [] and stats(control)["accepted"] == 0


VERIFY_FAILURES = [
    case(MESSENGER, "expired-token", "190/463", credentials={"page_access_token": "expired-token"}),
    case(MESSENGER, "other-page", None, settings={"page_id": "1234"}),
    case(WHATSAPP, "invalid-token", "190", credentials={"access_token": "invalid-token"}),
    case(WHATSAPP, "unknown-number", "100/33", settings={"phone_number_id": "missing"}),
    case(EVOLUTION, "bad-key", "401", credentials={"api_key": "invalid-key"}),
    case(EVOLUTION, "missing-instance", "404", settings={"instance": "missing"}),
    case(WEBHOOK, "missing", "404", base_url="{url}/webhook/missing"),
    case(WEBHOOK, "loopback-not-allowed", "ssrf", allowed=False),
    case(SMTP, "password-invalid", "535", credentials={"password": "invalid"}),
]


@pytest.mark.parametrize(("provider", "changes", "code"), VERIFY_FAILURES)
def test_verify_not_ok(sandbox, provider, changes, code):
    if "base_url" in changes:
        changes = {**changes, "base_url": changes["base_url"].format(url=sandbox.url)}
    connection = provider.connection(sandbox, **changes)

    result = verify(connection)

    assert (result.ok, result.code) == (False, code), result
    assert result.detail
    assert_no_credentials(connection, result.detail)


# --- duplicates ------------------------------------------------------------------------------


@each_provider
def test_a_concurrent_burst_has_no_duplicates_and_a_resend_is_counted(sandbox, control, provider):
    connection = provider.connection(sandbox)
    messages = [provider.message(f"dlv-{n}", text=f"Hi Ana, #{n}") for n in range(200)]

    results = send(connection, *messages)

    assert {result.outcome for result in results} == {Outcome.SENT}
    assert len({result.provider_message_id for result in results}) == 200
    summary = stats(control)
    assert (summary["accepted"], summary["duplicates"]) == (200, 0)
    if provider.carries_reference:
        references = sorted(entry["reference"] for entry in ledger(control))
        assert references == sorted(message.reference for message in messages)

    again = send_one(connection, messages[17])

    assert again.outcome is Outcome.SENT
    summary = stats(control)
    assert (summary["accepted"], summary["duplicates"]) == (201, 1)
