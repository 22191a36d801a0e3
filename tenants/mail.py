"""Crier's own mail (invitations, password resets, address checks) through one SMTP server.

``CRIER_MAIL_URL`` names the server: ``smtp://user:password@host:port`` (plain, the usual port 25),
``smtp+tls://…`` (STARTTLS, port 587) or ``smtps://…`` (TLS from the start, port 465). Outside
production, with no URL set, mail goes to the sandbox's SMTP sink, where ``flask crier mail`` shows
it. Sending happens in the caller's thread with a short timeout; a failure is logged and reported
as False, never raised, so the page can say the email could not be sent.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import current_app

log = logging.getLogger(__name__)

SANDBOX_MAIL_LOGIN = "crier"  # the account the sandbox sink files Crier's own mail under
SECURITY_BY_SCHEME = {"smtp": "plain", "smtp+tls": "starttls", "smtp+starttls": "starttls", "smtps": "tls"}
DEFAULT_PORTS = {"plain": 25, "starttls": 587, "tls": 465}


class MailConfigError(ValueError):
    """``CRIER_MAIL_URL`` cannot be understood; the message says why."""


@dataclass(frozen=True)
class MailServer:
    host: str
    port: int
    username: str | None
    password: str | None
    security: str  # plain, starttls or tls


def parse_mail_url(url: str) -> MailServer:
    """The server an ``smtp://``, ``smtp+tls://`` or ``smtps://`` URL names."""
    parts = urlsplit(url)
    security = SECURITY_BY_SCHEME.get(parts.scheme)
    if security is None or not parts.hostname:
        raise MailConfigError(
            f"CRIER_MAIL_URL must look like smtp://user:password@host:port (or smtp+tls://, smtps://), "
            f"not {parts.scheme or 'no scheme'}://{parts.hostname or ''}"
        )
    try:
        port = parts.port or DEFAULT_PORTS[security]
    except ValueError as exc:
        raise MailConfigError(f"CRIER_MAIL_URL has a bad port: {exc}") from None
    return MailServer(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        security=security,
    )


def mail_server(config: Mapping[str, Any]) -> MailServer | None:
    """The configured server; outside production without one, the sandbox's sink; else None."""
    if config.get("MAIL_URL"):
        return parse_mail_url(config["MAIL_URL"])
    if config.get("CRIER_ENV") == "production":
        return None
    return MailServer("127.0.0.1", int(config["SANDBOX_SMTP_PORT"]), SANDBOX_MAIL_LOGIN, "sandbox", "plain")


def compose(to: str, subject: str, text: str, html: str | None = None) -> EmailMessage:
    """A plain-text email (with an HTML alternative when given) from ``MAIL_FROM``."""
    message = EmailMessage()
    message["From"] = current_app.config["MAIL_FROM"]
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="crier")
    message.set_content(text)
    if html:
        message.add_alternative(html, subtype="html")
    return message


def deliver(message: EmailMessage, config: Mapping[str, Any]) -> bool:
    """Hand ``message`` to the server; False (and a log line) when it could not be sent."""
    to = message["To"]
    try:
        server = mail_server(config)
    except MailConfigError as exc:
        log.error("mail to %s not sent: %s", to, exc)
        return False
    if server is None:
        log.error("mail to %s not sent: no mail server is configured (set CRIER_MAIL_URL)", to)
        return False
    timeout = float(config.get("MAIL_TIMEOUT", 5))
    try:
        if server.security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                server.host, server.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(server.host, server.port, timeout=timeout)
        with smtp:
            if server.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if server.username:
                smtp.login(server.username, server.password or "")
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("mail to %s not sent through %s:%s: %s", to, server.host, server.port, exc)
        return False
    return True


def send(to: str, subject: str, text: str, html: str | None = None) -> bool:
    """Compose and send now; True when the server took it."""
    return deliver(compose(to, subject, text, html), current_app.config)


def send_soon(to: str, subject: str, text: str, html: str | None = None) -> None:
    """Compose now and send from a thread, so the request's time does not depend on the mail server
    (a password reset must cost the same whether or not the address has an account)."""
    message = compose(to, subject, text, html)
    config = dict(current_app.config)
    threading.Thread(target=deliver, args=(message, config), name="crier-mail", daemon=True).start()
