"""SMTP adapter against an in-process aiosmtpd server: the message, pooled connections, reply codes."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tasks.providers import adapter_for, smtp
from tasks.providers.base import (
    Outcome,
    OutgoingMessage,
    PageConnection,
    ProviderKind,
    SendResult,
    VerifyResult,
)
from tasks.providers.smtp import SmtpAdapter
from tasks.providers.ssrf import UrlGuard
from tests.providers import (
    SECRETS,
    assert_no_secret,
    page,
    run,
)

KIND = ProviderKind.SMTP
USERNAME = SECRETS[KIND]["username"]
PASSWORD = SECRETS[KIND]["password"]


def mail(recipient: str = "ana@example.org", reference: str = "dlv-42", **fields: object) -> OutgoingMessage:
    return OutgoingMessage(
        reference=reference,
        recipient=recipient,
        text=str(fields.pop("text", "Hi Ana,\n\nYour order shipped.")),
        subject=str(fields.pop("subject", "Your order")),
        **fields,  # type: ignore[arg-type]
    )


@dataclass
class Mailbox:
    """The server's behaviour and what it saw."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    connections: list[SMTPServer] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_delay: float = 0.0

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        assert envelope.mail_from is not None and isinstance(envelope.original_content, bytes)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return f"250 2.0.0 Ok: queued as Q{len(self.received)}"

    def drop_connections(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()


def authenticate(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USERNAME.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@asynccontextmanager
async def smtp_server(mailbox: Mailbox) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()

    def connection() -> SMTPServer:
        protocol = SMTPServer(
            mailbox,
            hostname="mx.test",
            loop=loop,
            authenticator=authenticate,
            auth_require_tls=False,
            auth_required=False,
        )
        mailbox.connections.append(protocol)
        return protocol

    server = await loop.create_server(connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        mailbox.drop_connections()
        server.close()
        await server.wait_closed()


def smtp_page(port: int, **settings: object) -> PageConnection:
    return page(KIND, base_url=f"smtp://127.0.0.1:{port}", **settings)


def sandbox(port: int, connection: PageConnection | None = None, **settings: object) -> SmtpAdapter:
    """An adapter for the local server, which the SSRF guard lets through."""
    guard = UrlGuard(allowed_hosts=[f"127.0.0.1:{port}"])
    return SmtpAdapter(connection or smtp_page(port, **settings), guard=guard)


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def test_sends_a_multipart_message_with_the_crier_headers() -> None:
    mailbox = Mailbox()
    message = mail(html="<p>Hi <b>Ana</b></p>", unsubscribe_url="https://crier.example/u/tok123")

    async def scenario() -> SendResult:
        async with smtp_server(mailbox) as port:
            adapter = adapter_for(smtp_page(port), guard=UrlGuard(allowed_hosts=[f"127.0.0.1:{port}"]))
            try:
                return await adapter.send(message)
            finally:
                await adapter.aclose()

    result = run(scenario())
    assert result.outcome is Outcome.SENT
    assert result.detail == "2.0.0 Ok: queued as Q1"
    [(sender, recipients, raw)] = mailbox.received
    assert (sender, recipients) == ("news@acme.example", ["ana@example.org"])
    sent = parsed(raw)
    assert sent["From"] == "Acme <news@acme.example>"
    assert sent["To"] == "ana@example.org"
    assert sent["Subject"] == "Your order"
    assert sent["Message-ID"] == result.provider_message_id
    assert sent["Message-ID"].endswith("@acme.example>")
    assert sent["X-Crier-Delivery"] == "dlv-42"
    assert sent["List-Unsubscribe"] == (
        "<mailto:news@acme.example?subject=unsubscribe%20dlv-42>, <https://crier.example/u/tok123>"
    )
    assert sent["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert sent["Date"]
    assert sent.get_content_type() == "multipart/alternative"
    plain, html = sent.get_body(("plain",)), sent.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().startswith("Hi Ana,")
    assert html.get_content().strip() == "<p>Hi <b>Ana</b></p>"


def test_html_is_made_from_the_text_and_one_click_needs_https() -> None:
    adapter = SmtpAdapter(smtp_page(2525))
    built = adapter.build(mail(text="Hi <Ana>\n\nBye", unsubscribe_url="http://insecure.example/u"))
    html = built.get_body(("html",))
    assert html is not None and "<p>Hi &lt;Ana&gt;</p>" in html.get_content()
    assert built["List-Unsubscribe"] == "<mailto:news@acme.example?subject=unsubscribe%20dlv-42>"
    assert built["List-Unsubscribe-Post"] is None


def test_header_injection_is_a_permanent_failure() -> None:
    async def scenario() -> SendResult:
        adapter = SmtpAdapter(smtp_page(2525))
        try:
            return await adapter.send(mail(subject="Hello\r\nBcc: everyone@example.org"))
        finally:
            await adapter.aclose()

    assert run(scenario()).outcome is Outcome.PERMANENT


def test_one_connection_is_reused_and_logged_in_once() -> None:
    mailbox = Mailbox()

    async def scenario() -> list[SendResult]:
        async with smtp_server(mailbox) as port:
            adapter = sandbox(port)
            try:
                return [await adapter.send(mail(reference=f"dlv-{i}")) for i in range(5)]
            finally:
                await adapter.aclose()

    results = run(scenario())
    assert [r.outcome for r in results] == [Outcome.SENT] * 5
    assert len({r.provider_message_id for r in results}) == 5
    assert len(mailbox.received) == 5
    assert len(mailbox.connections) == 1


def test_concurrent_sends_share_a_small_pool() -> None:
    mailbox = Mailbox(data_delay=0.02)

    async def scenario() -> list[SendResult]:
        async with smtp_server(mailbox) as port:
            adapter = sandbox(port, pool_size=2)
            try:
                return await asyncio.gather(*(adapter.send(mail(reference=f"dlv-{i}")) for i in range(8)))
            finally:
                await adapter.aclose()

    results = run(scenario())
    assert [r.outcome for r in results] == [Outcome.SENT] * 8
    assert len(mailbox.connections) == 2


def test_refused_recipients_keep_the_connection_usable() -> None:
    mailbox = Mailbox(
        rcpt_replies={
            "nobody@example.org": "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown",
            "grey@example.org": "450 4.2.0 <grey@example.org>: Recipient address rejected: Greylisted",
            "full@example.org": "452 4.2.2 Mailbox full",
        }
    )

    async def scenario() -> list[SendResult]:
        async with smtp_server(mailbox) as port:
            adapter = sandbox(port)
            try:
                return [
                    await adapter.send(mail(recipient))
                    for recipient in (
                        "nobody@example.org",
                        "grey@example.org",
                        "full@example.org",
                        "ana@example.org",
                    )
                ]
            finally:
                await adapter.aclose()

    unknown, greylisted, full, delivered = run(scenario())
    assert (unknown.outcome, unknown.code) == (Outcome.PERMANENT, "550")
    assert unknown.detail and "User unknown" in unknown.detail
    assert (greylisted.outcome, greylisted.code) == (Outcome.THROTTLED, "450")
    assert (full.outcome, full.code) == (Outcome.TRANSIENT, "452")
    assert delivered.outcome is Outcome.SENT
    assert len(mailbox.connections) == 1
    assert [recipients for _, recipients, _ in mailbox.received] == [["ana@example.org"]]


def test_a_421_closes_the_connection_and_the_next_send_reconnects() -> None:
    mailbox = Mailbox(rcpt_replies={"busy@example.org": "421 4.7.0 Too many messages, slow down"})

    async def scenario() -> list[SendResult]:
        async with smtp_server(mailbox) as port:
            adapter = sandbox(port)
            try:
                return [await adapter.send(mail("busy@example.org")), await adapter.send(mail())]
            finally:
                await adapter.aclose()

    busy, delivered = run(scenario())
    assert (busy.outcome, busy.code) == (Outcome.THROTTLED, "421")
    assert delivered.outcome is Outcome.SENT
    assert len(mailbox.connections) == 2


def test_a_connection_the_server_dropped_is_replaced() -> None:
    mailbox = Mailbox()

    async def scenario() -> list[SendResult]:
        async with smtp_server(mailbox) as port:
            adapter = sandbox(port)
            try:
                first = await adapter.send(mail(reference="dlv-1"))
                mailbox.drop_connections()
                await asyncio.sleep(0.05)
                return [first, await adapter.send(mail(reference="dlv-2"))]
            finally:
                await adapter.aclose()

    results = run(scenario())
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert len(mailbox.connections) == 2


def test_a_stale_connection_found_dead_on_use_is_replaced_once() -> None:
    """The pooled connection looks alive but the server is gone: reconnect before anything was sent."""
    mailbox = Mailbox()

    async def scenario() -> list[SendResult]:
        async with smtp_server(mailbox) as port:
            adapter = sandbox(port)
            try:
                first = await adapter.send(mail(reference="dlv-1"))
                [pooled] = adapter._pool._idle
                original_mail = pooled.mail

                async def dead(*args: object, **kwargs: object) -> object:
                    raise aiosmtplib.SMTPServerDisconnected("Connection lost")

                pooled.mail = dead  # type: ignore[method-assign]
                second = await adapter.send(mail(reference="dlv-2"))
                pooled.mail = original_mail  # type: ignore[method-assign]
                return [first, second]
            finally:
                await adapter.aclose()

    results = run(scenario())
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert len(mailbox.received) == 2 and len(mailbox.connections) == 2


def test_a_timeout_after_data_may_have_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp, "COMMAND_TIMEOUT", 0.2)
    mailbox = Mailbox(data_delay=0.6)

    async def scenario() -> SendResult:
        async with smtp_server(mailbox) as port:
            adapter = sandbox(port)
            try:
                return await adapter.send(mail())
            finally:
                await adapter.aclose()
                await asyncio.sleep(0.5)

    result = run(scenario())
    assert (result.outcome, result.maybe_delivered) == (Outcome.TRANSIENT, True)


def test_wrong_password_is_page_fatal_and_never_shown() -> None:
    mailbox = Mailbox()

    async def scenario() -> tuple[SendResult, VerifyResult]:
        async with smtp_server(mailbox) as port:
            connection = smtp_page(port)
            connection.credentials["password"] = "not-the-password"
            adapter = sandbox(port, connection)
            try:
                return await adapter.send(mail()), await adapter.verify()
            finally:
                await adapter.aclose()

    sent, verified = run(scenario())
    assert (sent.outcome, sent.code) == (Outcome.PAGE_FATAL, "535")
    assert (verified.ok, verified.code) == (False, "535")
    for text in (sent.detail, verified.detail):
        assert text and "not-the-password" not in text
        assert_no_secret(KIND, text)
    assert mailbox.received == []


def test_verify_connects_and_logs_in() -> None:
    mailbox = Mailbox()

    async def scenario() -> VerifyResult:
        async with smtp_server(mailbox) as port:
            adapter = sandbox(port)
            try:
                return await adapter.verify()
            finally:
                await adapter.aclose()

    result = run(scenario())
    assert result.ok, result.detail
    assert result.detail.startswith("connected to 127.0.0.1:") and "logged in" in result.detail
    assert_no_secret(KIND, result.detail)


def test_an_unreachable_server_is_transient_and_not_delivered() -> None:
    async def scenario() -> tuple[SendResult, VerifyResult]:
        async with smtp_server(Mailbox()) as port:
            pass
        adapter = sandbox(port)
        try:
            return await adapter.send(mail()), await adapter.verify()
        finally:
            await adapter.aclose()

    sent, verified = run(scenario())
    assert (sent.outcome, sent.maybe_delivered) == (Outcome.TRANSIENT, False)
    assert not verified.ok


def test_starttls_required_but_not_offered_is_page_fatal() -> None:
    async def scenario() -> SendResult:
        async with smtp_server(Mailbox()) as port:
            adapter = sandbox(port, starttls=True)
            try:
                return await adapter.send(mail())
            finally:
                await adapter.aclose()

    result = run(scenario())
    assert result.outcome is Outcome.PAGE_FATAL
    assert result.detail and "STARTTLS" in result.detail


def test_base_url_forms() -> None:
    implicit = SmtpAdapter(page(KIND, base_url="smtps://mail.example.com"))
    assert (implicit.host, implicit.port) == ("mail.example.com", 465)
    submission = SmtpAdapter(page(KIND, base_url="smtp://mail.example.com"))
    assert (submission.host, submission.port) == ("mail.example.com", 587)
    with pytest.raises(ValueError, match="smtp://"):
        SmtpAdapter(page(KIND, base_url="https://mail.example.com"))


@pytest.mark.parametrize(
    ("host", "detail"),
    [
        ("10.0.0.5:25", "SMTP host resolves to a private address 10.0.0.5"),
        ("169.254.169.254:25", "SMTP host resolves to a link-local address 169.254.169.254"),
        ("[::1]:{port}", "SMTP host resolves to a loopback address ::1"),
        ("localhost:{port}", "SMTP host resolves to a loopback address"),
        ("127.0.0.1:{port}", "SMTP host resolves to a loopback address 127.0.0.1"),
    ],
)
def test_internal_smtp_hosts_are_refused(host: str, detail: str) -> None:
    mailbox = Mailbox()

    async def scenario() -> tuple[SendResult, VerifyResult]:
        async with smtp_server(mailbox) as port:
            adapter = adapter_for(page(KIND, base_url=f"smtp://{host.format(port=port)}"))
            try:
                return await adapter.send(mail()), await adapter.verify()
            finally:
                await adapter.aclose()

    sent, verified = run(scenario())
    assert (sent.outcome, sent.code) == (Outcome.PAGE_FATAL, "ssrf")
    assert sent.detail and sent.detail.startswith(detail)
    assert not verified.ok and verified.detail.startswith(detail)
    assert mailbox.connections == []
