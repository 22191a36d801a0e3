"""SMTP accounts through aiosmtplib (see WIRE.md, "SMTP").

Each message is multipart/alternative text + HTML (a media goes as its link in both) with
``Message-ID``, ``List-Unsubscribe`` (+ ``List-Unsubscribe-Post`` when there is an https link)
and ``X-Crier-Delivery``. An adapter keeps a small pool of logged-in connections
(``settings["pool_size"]``, default 2) and reuses them across sends; a connection that fails is
dropped, and a pooled one found dead before the message went out is replaced once, transparently.

The SMTP host is the tenant's choice, so it passes the SSRF guard: the adapter resolves the
host itself, refuses internal addresses, and hands aiosmtplib a socket already connected to a
checked address (TLS still verifies the host name).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formataddr, formatdate, make_msgid
from typing import ClassVar
from urllib.parse import quote, urlsplit

import aiosmtplib
import httpx

from tasks.metrics import PROVIDER_REQUEST_SECONDS, BatchedHistogram
from tasks.providers.base import (
    Outcome,
    OutgoingMessage,
    PageConnection,
    ProviderKind,
    SendResult,
    VerifyResult,
    redact_result,
    redact_verify,
)
from tasks.providers.classification import classify_smtp_code, verify_failure
from tasks.providers.ssrf import BlockedDestination, UrlGuard

DEFAULT_POOL_SIZE = 2
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 15.0

_CONNECTION_LOST = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, ConnectionError, OSError)


def smtp_reply_result(exc: aiosmtplib.SMTPResponseException) -> SendResult:
    """An SMTP error reply, by its code (see ``SMTP_RULES``)."""
    return SendResult(classify_smtp_code(exc.code).outcome, code=str(exc.code), detail=exc.message)


def smtp_error_result(exc: Exception, *, maybe_delivered: bool = False) -> SendResult:
    """Any failure while connecting or sending: a reply code, a configuration problem, or the network."""
    if isinstance(exc, BlockedDestination):
        return SendResult(Outcome.PAGE_FATAL, code="ssrf", detail=f"SMTP host {exc.reason}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return smtp_reply_result(exc.recipients[0])
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return smtp_reply_result(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SendResult(Outcome.PAGE_FATAL, detail=f"the SMTP server's certificate was refused: {exc}")
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError):
        return SendResult(Outcome.TRANSIENT, detail=f"timed out connecting to the SMTP server: {exc}")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return SendResult(Outcome.TRANSIENT, detail=f"could not connect to the SMTP server: {exc}")
    if isinstance(exc, _CONNECTION_LOST):
        return SendResult(
            Outcome.TRANSIENT,
            detail=f"lost the SMTP connection: {exc or type(exc).__name__}",
            maybe_delivered=maybe_delivered,
        )
    if isinstance(exc, aiosmtplib.SMTPException):
        return SendResult(Outcome.PAGE_FATAL, detail=f"the SMTP server cannot be used as configured: {exc}")
    return SendResult(Outcome.TRANSIENT, detail=f"unexpected SMTP failure ({type(exc).__name__}: {exc})")


def setting_flag(value: object, default: bool) -> bool:
    """A yes/no setting: a bool, or text as the page form stores it ("false", "no", "0", "off" are no)."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "0", "off")
    return bool(value)


def text_to_html(text: str) -> str:
    paragraphs = (html.escape(p).replace("\n", "<br>\n") for p in text.split("\n\n"))
    return (
        "<!doctype html>\n<html><body>\n"
        + "\n".join(f"<p>{p}</p>" for p in paragraphs)
        + "\n</body></html>\n"
    )


def with_media_link(text: str, html_part: str | None, url: str) -> tuple[str, str]:
    """The text and HTML parts with the media's link added: on its own line after the text, and as
    a link before the HTML's ``</body>`` (at its end when there is none)."""
    plain = f"{text.rstrip()}\n\n{url}" if text.strip() else url
    if html_part is None:
        html_part = text_to_html(text.rstrip())
    escaped = html.escape(url)
    link = f'<p><a href="{escaped}">{escaped}</a></p>\n'
    end = html_part.lower().rfind("</body>")
    html_part = html_part[:end] + link + html_part[end:] if end >= 0 else f"{html_part}\n{link}"
    return plain, html_part


class _Pool:
    """At most ``size`` connections; idle ones are reused, broken ones closed and forgotten."""

    def __init__(self, connect: Callable[[], Awaitable[aiosmtplib.SMTP]], size: int):
        self._connect = connect
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection and whether it was reused from the pool."""
        await self._slots.acquire()
        try:
            while self._idle:
                smtp = self._idle.pop()
                if smtp.is_connected:
                    return smtp, True
                smtp.close()
            return await self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected:
            self._idle.append(smtp)
        else:
            smtp.close()
        self._slots.release()

    def discard(self, smtp: aiosmtplib.SMTP) -> None:
        smtp.close()
        self._slots.release()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for smtp in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit(timeout=2.0)
            smtp.close()


class SmtpAdapter:
    """Sends mail through one SMTP account (``smtp://`` with STARTTLS, or ``smtps://`` implicit TLS)."""

    kind: ClassVar[ProviderKind] = ProviderKind.SMTP
    label: ClassVar[str] = "SMTP"

    def __init__(
        self,
        connection: PageConnection,
        client: httpx.AsyncClient | None = None,
        *,
        guard: UrlGuard | None = None,
    ):
        """``client`` is not used; ``guard`` defaults to one allowing only ``connection.allowed_hosts``."""
        if connection.kind != self.kind:
            raise ValueError(f"SmtpAdapter cannot use a {connection.kind} page")
        url = urlsplit(connection.base_url)
        if url.scheme not in ("smtp", "smtps") or not url.hostname:
            raise ValueError("an SMTP page's base_url must be smtp://host:port or smtps://host:port")
        settings = connection.settings
        self._implicit_tls = url.scheme == "smtps"
        self.host = url.hostname
        self.port = url.port or (465 if self._implicit_tls else 587)
        self._start_tls = False if self._implicit_tls else setting_flag(settings.get("starttls"), True)
        self._username = connection.credentials.get("username") or None
        self._password = connection.credentials.get("password") or None
        self.from_address: str = settings.get("from_address") or self._username or f"crier@{self.host}"
        self._from_name: str | None = settings.get("from_name")
        self._domain = self.from_address.rpartition("@")[2] or self.host
        self._unsubscribe_mailto = settings.get("unsubscribe_mailto") or self.from_address
        self._validate_certs = setting_flag(settings.get("validate_certs"), True)
        self._guard = guard or UrlGuard(connection.allowed_hosts)
        self._pool = _Pool(self._connect, int(settings.get("pool_size") or DEFAULT_POOL_SIZE))
        self._secrets = tuple(value for value in connection.credentials.values() if value)
        self._latency = BatchedHistogram(PROVIDER_REQUEST_SECONDS.labels(channel=self.kind.value))

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """The MIME message for ``message`` (raises ValueError for headers with line breaks)."""
        email = EmailMessage(policy=SMTP_POLICY)
        email["From"] = (
            formataddr((self._from_name, self.from_address)) if self._from_name else self.from_address
        )
        email["To"] = message.recipient
        email["Subject"] = message.subject or ""
        email["Date"] = formatdate(usegmt=True)
        email["Message-ID"] = make_msgid(domain=self._domain)
        mailto = f"mailto:{self._unsubscribe_mailto}?subject={quote(f'unsubscribe {message.reference}')}"
        links = [mailto]
        if message.unsubscribe_url and message.unsubscribe_url.startswith("https://"):
            links.append(message.unsubscribe_url)
        email["List-Unsubscribe"] = ", ".join(f"<{link}>" for link in links)
        if len(links) > 1:
            email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        email["X-Crier-Delivery"] = message.reference
        if message.media_url:
            text, html_part = with_media_link(message.text, message.html, message.media_url)
            email.set_content(text)
            email.add_alternative(html_part, subtype="html")
        else:
            email.set_content(message.text)
            email.add_alternative(message.html or text_to_html(message.text), subtype="html")
        return email

    async def _open_socket(self) -> socket.socket:
        """A socket connected to a checked address of the host (no second DNS lookup)."""
        loop = asyncio.get_running_loop()
        try:
            addresses = await self._guard.checked_addresses(self.host, self.port)
        except OSError as exc:
            raise aiosmtplib.SMTPConnectError(f"cannot resolve {self.host}: {exc.strerror or exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (address, self.port)), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                sock.close()
                failure = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        if isinstance(failure, TimeoutError):
            raise aiosmtplib.SMTPConnectTimeoutError(
                f"Timed out connecting to {self.host} on port {self.port}"
            )
        raise aiosmtplib.SMTPConnectError(f"Error connecting to {self.host} on port {self.port}: {failure}")

    async def _connect(self) -> aiosmtplib.SMTP:
        """A connected, greeted, (STARTTLS-upgraded) and logged-in SMTP session."""
        sock = await self._open_socket()
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            sock=sock,
            username=self._username,
            password=self._password,
            local_hostname=self._domain,
            timeout=COMMAND_TIMEOUT,
            use_tls=self._implicit_tls,
            start_tls=self._start_tls,
            validate_certs=self._validate_certs,
        )
        try:
            await smtp.connect(timeout=CONNECT_TIMEOUT)
        except BaseException:
            smtp.close()
            sock.close()
            raise
        return smtp

    async def send(self, message: OutgoingMessage) -> SendResult:
        try:
            email = self.build(message)
        except ValueError as exc:
            return SendResult(Outcome.PERMANENT, detail=f"cannot build the email: {exc}")
        data = email.as_bytes(policy=SMTP_POLICY)
        return redact_result(
            await self._deliver(message.recipient, data, str(email["Message-ID"])), self._secrets
        )

    async def _deliver(self, recipient: str, data: bytes, message_id: str) -> SendResult:
        for attempt in (1, 2):
            try:
                smtp, reused = await self._pool.acquire()
            except Exception as exc:
                return smtp_error_result(exc)
            in_data = False
            started = time.perf_counter()  # one transaction, MAIL FROM to the reply to DATA
            try:
                await smtp.mail(self.from_address)
                await smtp.rcpt(recipient)
                in_data = True
                reply = await smtp.data(data)
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset(smtp)
                return smtp_reply_result(exc)
            except _CONNECTION_LOST as exc:
                self._pool.discard(smtp)
                if reused and not in_data and attempt == 1:
                    continue
                return smtp_error_result(exc, maybe_delivered=in_data)
            except BaseException:
                self._pool.discard(smtp)
                raise
            finally:
                self._latency.observe(time.perf_counter() - started)
            self._pool.release(smtp)
            return SendResult(Outcome.SENT, provider_message_id=message_id, detail=reply.message or None)
        raise AssertionError("unreachable")

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        """Clear a refused transaction so the connection can be reused, or drop it."""
        try:
            if smtp.is_connected:
                await smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self._pool.discard(smtp)
        else:
            self._pool.release(smtp)

    async def verify(self) -> VerifyResult:
        """Connect, EHLO, STARTTLS if configured, and log in; then say goodbye."""
        try:
            smtp = await self._connect()
        except Exception as exc:
            return redact_verify(verify_failure(smtp_error_result(exc)), self._secrets)
        try:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()
        finally:
            smtp.close()
        security = "TLS" if self._implicit_tls else "STARTTLS" if self._start_tls else "no TLS"
        login = "logged in" if self._username else "no login"
        detail = f"connected to {self.host}:{self.port} ({security}, {login})"
        return redact_verify(VerifyResult(ok=True, detail=detail), self._secrets)

    def flush_metrics(self) -> None:
        self._latency.flush()

    async def aclose(self) -> None:
        self._latency.flush()
        await self._pool.aclose()

    def __repr__(self) -> str:
        return f"SmtpAdapter({self.host}:{self.port}, from={self.from_address})"
