"""The shared async HTTP client every HTTP adapter of a worker uses.

``make_client()`` returns an :class:`httpx.AsyncClient` over ``httpx_aiohttp.AiohttpTransport``.
``bench/transport.py`` chose it: under hundreds of requests in flight httpx's default transport
(httpcore 1.0) slows to a crawl, its pool doing work per waiting request on every event
(encode/httpx#3215); the figures are in docs/decisions.md. Build one client per worker event
loop, hand it to every adapter, and close it when the loop ends.

How the settings land on aiohttp:

* ``timeout.connect`` -> ``sock_connect`` (TCP + TLS handshake of one connection attempt);
* ``timeout.read`` -> ``sock_read`` (any gap while waiting for or reading the answer);
* ``timeout.pool`` -> aiohttp's ``connect`` (waiting for a free connection *plus* connecting),
  so keep it at least ``timeout.connect``; ``timeout.write`` is not enforced by aiohttp (our
  bodies are a few KB and go straight into the socket buffer);
* ``max_connections`` / ``max_connections_per_host`` -> the connector's ``limit`` /
  ``limit_per_host``; ``keepalive_expiry`` -> ``keepalive_timeout``.

The transport also corrects httpx_aiohttp's exception mapping, which reports a server that
hung up mid-answer as a ``ConnectTimeout``: here only failures before the request could reach
the server are ``ConnectError``/``ConnectTimeout``; a lost or stalled answer is
``ReadError``/``ReadTimeout``, so the adapters can tell "not sent" from "maybe delivered".
"""

from __future__ import annotations

import functools
import json
import logging
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, NamedTuple

import aiohttp
import aiohttp.abc
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from tasks.metrics import PROVIDER_REQUEST_SECONDS, BatchedHistogram
from tasks.providers.base import (
    REDACTED,
    OutgoingMessage,
    PageConnection,
    ProviderKind,
    SendResult,
    VerifyResult,
    redact_result,
    redact_verify,
    secret_forms,
)
from tasks.providers.classification import transport_failure
from tasks.providers.ssrf import BlockedDestination, UrlGuard, find_blocked

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=15.0, pool=10.0)
DEFAULT_MAX_CONNECTIONS = 500
DEFAULT_KEEPALIVE_EXPIRY = 30.0
USER_AGENT = "Crier/0.1"

_GUARDS: weakref.WeakKeyDictionary[httpx.AsyncClient, UrlGuard] = weakref.WeakKeyDictionary()


def make_client(
    *,
    guard: UrlGuard | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_host: int = 0,
    keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """A pooled client for provider requests; with ``guard``, every connection passes the SSRF guard.

    Safe to call outside an event loop: the aiohttp session is created on first use.
    """
    transport = CrierAiohttpTransport(
        verify=default_ssl_context() if verify is True else verify,
        limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=keepalive_expiry),
        max_connections_per_host=max_connections_per_host,
        guard=guard,
    )
    client = httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )
    if guard is not None:
        _GUARDS[client] = guard
    return client


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """The verifying TLS context every client shares (loading the CA bundle takes ~0.1 s)."""
    return httpx.create_ssl_context(verify=True, trust_env=False)


def guard_of(client: httpx.AsyncClient) -> UrlGuard | None:
    """The SSRF guard ``client`` enforces at connection time, if it was built with one."""
    return _GUARDS.get(client)


def guard_for(
    connection: PageConnection, client: httpx.AsyncClient | None, guard: UrlGuard | None = None
) -> UrlGuard:
    """The guard for a tenant-chosen host: ``guard``, else the client's, else one allowing only
    ``connection.allowed_hosts``."""
    return guard or (guard_of(client) if client is not None else None) or UrlGuard(connection.allowed_hosts)


class HttpAdapter:
    """What the HTTP adapters share: the client, request errors as outcomes, redaction, the SSRF guard.

    Subclasses implement ``_send`` and ``_verify``; everything they return passes through
    :func:`tasks.providers.base.redact_result`, so no credential of the page can reach a
    ``detail``. Without a ``client`` the adapter makes (and on :meth:`aclose` closes) its own.

    Every page's base URL is chosen by its tenant, so each request is first checked by
    :func:`guard_for` (the explicit guard, else the client's, else the connection's allow-list),
    except requests to the provider's own public API (``trusted_base_url``); host names are
    resolved in that check only when the client does not enforce a guard at connection time itself.
    """

    kind: ClassVar[ProviderKind]
    label: ClassVar[str]
    trusted_base_url: ClassVar[str | None] = None

    def __init__(
        self,
        connection: PageConnection,
        client: httpx.AsyncClient | None = None,
        *,
        guard: UrlGuard | None = None,
    ):
        if connection.kind != self.kind:
            raise ValueError(f"{type(self).__name__} cannot use a {connection.kind} page")
        self.connection = connection
        trusted = self.trusted_base_url and connection.base_url.rstrip("/") == self.trusted_base_url
        self.guard: UrlGuard | None = None if trusted else guard_for(connection, client, guard)
        self._owns_client = client is None
        self.client = client if client is not None else make_client(guard=self.guard)
        self._resolve_in_check = guard_of(self.client) is None
        transport = getattr(self.client, "_transport", None)
        self._direct = transport if isinstance(transport, CrierAiohttpTransport) else None
        self._direct_timeout = aiohttp_timeout(self.client.timeout)
        self._secrets = tuple(value for value in connection.credentials.values() if value)
        forms = {form for secret in self._secrets for form in secret_forms(secret)}
        self._secret_forms = tuple(sorted(forms, key=len, reverse=True))  # longest first
        self._checked_urls: set[str] = set()
        self._latency = BatchedHistogram(PROVIDER_REQUEST_SECONDS.labels(channel=self.kind.value))
        self._setup(connection)

    def _setup(self, connection: PageConnection) -> None:
        """Read what the subclass needs from ``connection`` (its URL parts, headers)."""

    async def send(self, message: OutgoingMessage) -> SendResult:
        return redact_result(await self._send(message), self._secrets)

    async def verify(self) -> VerifyResult:
        return redact_verify(await self._verify(), self._secrets)

    def flush_metrics(self) -> None:
        self._latency.flush()

    async def aclose(self) -> None:
        self._latency.flush()
        if self._owns_client:
            await self.client.aclose()

    async def _send(self, message: OutgoingMessage) -> SendResult:
        raise NotImplementedError

    async def _verify(self) -> VerifyResult:
        raise NotImplementedError

    async def _request(self, method: str, url: str, **kwargs: Any) -> Answer | httpx.Response | SendResult:
        """The answer, or the :class:`SendResult` of a request that got none (or was refused); the
        request's time, answered or not, goes to ``crier_provider_request_seconds``."""
        try:
            if self.guard is not None and url not in self._checked_urls:
                await self.guard.check(url, resolve=self._resolve_in_check)
                if not self._resolve_in_check:  # the verdict depends on the URL alone: remember it
                    self._checked_urls.add(url)
            started = time.perf_counter()
            try:
                if self._direct is not None:
                    response = await self._direct.direct_request(method, url, self._direct_timeout, **kwargs)
                else:
                    response = await self.client.request(method, url, **kwargs)
            finally:
                self._latency.observe(time.perf_counter() - started)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return transport_failure(exc, self.label)
        return self._scrubbed(response)

    def _scrubbed(self, response: Answer | httpx.Response) -> Answer | httpx.Response:
        """``response`` with any credential echoed in its body blanked, before excerpts are cut from it."""
        content = response.content
        if not any(form in content for form in self._secret_forms):
            return response
        for form in self._secret_forms:
            content = content.replace(form, REDACTED.encode())
        if isinstance(response, Answer):
            return Answer(response.status_code, response.headers, content, response.url)
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-length"]
        return httpx.Response(
            response.status_code, headers=headers, content=content, request=response.request
        )


class Answer:
    """A provider's answer, read whole: what the adapters and classifiers read of an
    :class:`httpx.Response` (status, case-insensitive headers, body, URL), without building one.

    Building an ``httpx.Request`` and ``httpx.Response`` per send cost as much of the dispatch send
    loop as aiohttp's own request; this is a few attribute stores.
    """

    __slots__ = ("content", "headers", "status_code", "url")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes, url: httpx.URL):
        self.status_code = status_code
        self.headers = headers  # case-insensitive (aiohttp's CIMultiDictProxy)
        self.content = content
        self.url = url

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def is_redirect(self) -> bool:
        return self.status_code in (301, 302, 303, 307, 308) and "location" in self.headers

    @property
    def text(self) -> str:
        charset = _CHARSET.search(self.headers.get("content-type") or "")
        try:
            return self.content.decode(charset.group(1) if charset else "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<Answer [{self.status_code}]>"


_CHARSET = re.compile(r"charset=[\"']?([\w.:-]+)", re.IGNORECASE)


class CrierAiohttpTransport(AiohttpTransport):
    """``AiohttpTransport`` with our connector settings, the SSRF guard and exact exception mapping."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits,
        max_connections_per_host: int = 0,
        guard: UrlGuard | None = None,
    ):
        super().__init__(verify=verify, limits=limits, trust_env=False, client=self._new_session)
        self._limit_per_host = max_connections_per_host
        self.guard = guard
        self._resolver: aiohttp.abc.AbstractResolver | None = None
        self._urls: dict[tuple[str, tuple | None], _Target] = {}

    def _new_session(self) -> aiohttp.ClientSession:
        guard_options: dict[str, Any] = {}
        if self.guard is not None:
            self._resolver = self.guard.resolver()
            guard_options = {"resolver": self._resolver, "socket_factory": self.guard.socket_factory}
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            limit_per_host=self._limit_per_host,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            **guard_options,
        )
        # no cookie jar: provider APIs use none, and one session serves every tenant's pages
        jar = aiohttp.DummyCookieJar()
        return aiohttp.ClientSession(connector=connector, trust_env=False, cookie_jar=jar)

    async def direct_request(
        self,
        method: str,
        url: str,
        timeout: aiohttp.ClientTimeout,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
    ) -> Answer:
        """One request straight on the aiohttp session: what ``client.request`` would answer (as an
        :class:`Answer`) or raise.

        httpx's client machinery (request building, header merging, auth and redirect hooks, the
        stream wrappers, the request and response objects) cost several times aiohttp's own work
        per request; the dispatch send loop spent most of its time there. The answer is read whole,
        as the adapters read it anyway.
        """
        parsed = self._parsed_url(url, params)
        body = content if json is None else _json_bytes(json)
        sent_headers = _JSON_HEADERS.copy() if json is not None else _PLAIN_HEADERS.copy()
        if headers:
            sent_headers.update(headers)
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        try:
            with map_aiohttp_exceptions():
                async with self.client.request(
                    method,
                    parsed.target,
                    data=body,
                    headers=sent_headers,
                    allow_redirects=False,
                    timeout=timeout,
                ) as answer:
                    data = await answer.read()
                    return Answer(answer.status, answer.headers, data, parsed.url)
        except httpx.TransportError as exc:
            raise _corrected(exc, httpx.Request(method, parsed.url)) from exc.__cause__

    def _parsed_url(self, url: str, params: dict[str, str] | None) -> _Target:
        """``url`` with ``params``, parsed once: an adapter sends to the same few URLs again and again."""
        key = (url, tuple(params.items()) if params else None)
        parsed = self._urls.get(key)
        if parsed is None:
            if len(self._urls) >= 256:
                self._urls.clear()
            full = httpx.URL(url, params=params)
            parsed = self._urls[key] = _Target(full, yarl.URL(str(full), encoded=True))
        return parsed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _corrected(exc, request) from exc.__cause__
        response.stream = _CorrectedStream(response.stream, request)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        await super().aclose()
        if self._resolver is not None:
            await self._resolver.close()


class _Target(NamedTuple):
    url: httpx.URL  # what answers and errors report
    target: yarl.URL  # what aiohttp sends to (already encoded: it skips parsing it again)


_PLAIN_HEADERS = {"User-Agent": USER_AGENT}
_JSON_HEADERS = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}


def _json_bytes(value: Any) -> bytes:
    """JSON as httpx encodes a ``json=`` body."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def aiohttp_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """httpx's timeout as the aiohttp transport applies it (see the module docstring)."""
    return aiohttp.ClientTimeout(sock_connect=timeout.connect, sock_read=timeout.read, connect=timeout.pool)


class _CorrectedStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, request: httpx.Request):
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            raise _corrected(exc, self._request) from exc.__cause__

    async def aclose(self) -> None:
        await self._inner.aclose()


def _corrected(exc: httpx.TransportError, request: httpx.Request) -> httpx.TransportError:
    """Map the aiohttp error behind ``exc`` to the httpx error of the phase it happened in."""
    blocked = find_blocked(exc)
    if blocked is not None:
        return BlockedDestination(blocked.reason, address=blocked.address, request=request)
    cause = exc.__cause__
    message = str(cause) if cause is not None else str(exc)
    corrected: httpx.TransportError
    if isinstance(cause, aiohttp.ClientConnectorError):
        corrected = httpx.ConnectError(message, request=request)
    elif isinstance(cause, aiohttp.ConnectionTimeoutError):
        corrected = httpx.ConnectTimeout(message or "timed out connecting", request=request)
    elif isinstance(cause, aiohttp.SocketTimeoutError):
        corrected = httpx.ReadTimeout(message or "timed out waiting for the answer", request=request)
    elif isinstance(cause, aiohttp.ServerDisconnectedError):
        corrected = httpx.RemoteProtocolError(message, request=request)
    elif isinstance(cause, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        corrected = httpx.ReadError(message, request=request)
    else:
        return exc
    return corrected


class _RedactQueryCredentials(logging.Filter):
    """Scrub ``access_token=...`` from httpx's "HTTP Request: POST <url>" log lines."""

    _pattern = re.compile(r"(access_token=)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._pattern.sub(r"\1[redacted]", str(arg)) if isinstance(arg, httpx.URL | str) else arg
                for arg in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self._pattern.sub(r"\1[redacted]", record.msg)
        return True


def _install_log_filter() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactQueryCredentials) for f in logger.filters):
        logger.addFilter(_RedactQueryCredentials())


_install_log_filter()
