"""The SMTP sink: an aiosmtpd server on the sandbox's event loop that records mail in the ledger.

Any credentials are accepted over AUTH PLAIN or LOGIN (no TLS needed) except the password
``invalid`` (535); mail without AUTH gets 530. Recipients that always fail (local part
ending in ``0000`` by default) get 550 at RCPT. Each mail then gets one verdict like an
HTTP message: 451 transient, 421 throttled, or 250 and one ledger entry per recipient
(reference = ``X-Crier-Delivery``, body = subject and text).
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
from email import message_from_bytes
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tasks.sandbox.behaviour import Verdict
from tasks.sandbox.ledger import SMTP as SMTP_KIND
from tasks.sandbox.ledger import Message

if TYPE_CHECKING:
    from tasks.sandbox.app import Sandbox

REJECTED_PASSWORD = b"invalid"
ANSWERS = {
    Verdict.TRANSIENT: "451 4.3.0 Temporary server error, please try again later",
    Verdict.THROTTLED: "421 4.7.0 Too many messages, slow down",
    Verdict.RECIPIENT_PACED: "450 4.2.1 Too many messages to this recipient, slow down",
    Verdict.PERMANENT: "550 5.1.1 Recipient address rejected: User unknown",
}


class _WithoutLoginDataWarning(logging.Filter):
    """aiosmtpd warns about its own use of ``Session.login_data`` on every successful AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


aiosmtpd_log = logging.getLogger("mail.log")
aiosmtpd_log.setLevel(logging.WARNING)
aiosmtpd_log.addFilter(_WithoutLoginDataWarning())


def _text_of(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        return str(part.get_content()).replace("\r\n", "\n").rstrip("\n")
    except (LookupError, ValueError):
        return ""


class SmtpSink:
    """aiosmtpd handler and authenticator writing into the sandbox's ledger."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or auth_data.password == REJECTED_PASSWORD:
            login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else None
            self.sandbox.ledger.refuse("unauthorized", SMTP_KIND, login)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data.login.decode(errors="replace"))

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if not session.authenticated:
            self.sandbox.ledger.refuse("unauthorized", SMTP_KIND, None)
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.sandbox.behaviour.is_permanent(address):
            self.sandbox.ledger.refuse(Verdict.PERMANENT, SMTP_KIND, session.auth_data)
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        mail = message_from_bytes(envelope.content or b"", policy=email.policy.default)
        assert isinstance(mail, EmailMessage)
        subject = str(mail.get("Subject", "") or "")
        text = _text_of(mail)
        body = f"{subject}\n{text}" if subject else text
        reference = str(mail["X-Crier-Delivery"]) if mail["X-Crier-Delivery"] else None
        messages = [
            Message(SMTP_KIND, str(session.auth_data), recipient, body, reference)
            for recipient in envelope.rcpt_tos
        ]
        verdict, _, message_id = await self.sandbox.submit(messages[0])
        if verdict is not Verdict.ACCEPTED:
            return ANSWERS[verdict]
        for message in messages[1:]:
            self.sandbox.record(message)
        return f"250 2.0.0 Ok: queued as {message_id}"


async def start_smtp(sandbox: Sandbox, host: str, port: int) -> asyncio.Server:
    """Listen for SMTP on ``host:port`` in the running loop."""
    sink = SmtpSink(sandbox)

    def protocol() -> SMTP:
        return SMTP(
            sink,
            authenticator=sink.authenticate,
            auth_require_tls=False,
            hostname="sandbox.crier",
            ident="Crier sandbox ESMTP",
        )

    return await asyncio.get_running_loop().create_server(protocol, host, port)
