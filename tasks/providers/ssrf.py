"""Keep tenant-supplied URLs (webhooks, self-hosted Evolution servers) away from internal addresses.

A tenant chooses where Crier sends requests for some pages, so a URL such as
``http://169.254.169.254/latest/meta-data`` or ``http://10.0.0.5:6379`` must be refused.
:class:`UrlGuard` enforces that in two places:

* **before each request** (:meth:`UrlGuard.check`): the scheme must be http(s), the host must
  be present, and an IP literal — or, when the client is not guarded, every address the host
  resolves to — must be public;
* **at connection time**, inside the aiohttp transport built by
  :func:`tasks.providers.http.make_client`: :meth:`UrlGuard.resolver` refuses host names that
  resolve to a non-public address, and :meth:`UrlGuard.socket_factory` refuses to open a socket
  to one. The socket factory sees the exact address being connected to, so DNS rebinding
  (a public answer for the check, a private one for the connection) and redirects cannot slip
  past it.

``allowed_hosts`` ("host:port" strings, for the sandbox in development and tests) bypasses
the check for exactly those hosts and ports; :func:`allowed_private_hosts` is the one rule
that decides them from the configuration, for every outbound call (campaigns, Verify, Test send).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LEGACY_IPV4 = re.compile(r"[0-9][0-9a-fA-FxX.]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BlockedDestination(httpx.ConnectError):
    """A request was refused because of where it would go; ``reason`` completes "<label> URL ..."."""

    def __init__(self, reason: str, *, address: str | None = None, request: httpx.Request | None = None):
        super().__init__(f"URL {reason}", request=request)
        self.reason = reason
        self.address = address


class BlockedAddressError(OSError):
    """Raised inside the connector (resolver or socket factory) for a non-public address."""

    def __init__(self, address: str, category: str):
        super().__init__(errno.EACCES, f"refused by the SSRF guard: {category} address {describe(address)}")
        self.address = address
        self.category = category


def allowed_private_hosts(config: Mapping[str, Any]) -> frozenset[str]:
    """The internal "host:port" endpoints pages may reach despite the guard, from the app's config.

    Always the operator's ``EXTRA_ALLOWED_HOSTS`` (``CRIER_ALLOWED_PRIVATE_HOSTS``); outside
    production also the local sandbox, over HTTP and SMTP, although it is on loopback. A
    campaign, Verify and Test send all ask this, so what one may reach the others may too.
    """
    extra = {str(host) for host in config.get("EXTRA_ALLOWED_HOSTS") or ()}
    if config["CRIER_ENV"] == "production":
        return frozenset(extra)
    sandbox = urlsplit(config["SANDBOX_URL"])
    http_port = sandbox.port or _DEFAULT_PORTS.get(sandbox.scheme, 80)
    sandbox_hosts = {f"{sandbox.hostname}:{http_port}", f"{sandbox.hostname}:{config['SANDBOX_SMTP_PORT']}"}
    return frozenset(sandbox_hosts | extra)


def address_category(address: str | IPAddress) -> str | None:
    """Why ``address`` must not be reached ("loopback", "private", ...), or None if it is public.

    IPv6 forms that embed an IPv4 address (IPv4-mapped, 6to4, NAT64) are judged by the
    embedded address.
    """
    ip = _embedded_ipv4(ipaddress.ip_address(address) if isinstance(address, str) else address)
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "non-public"),
    )
    return next((category for matched, category in checks if matched), None)


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, 6to4 or NAT64 IPv6 address; else ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour or ip


def describe(address: str) -> str:
    """``address`` for a message: an embedded IPv4 address is shown first (``127.0.0.1 (::ffff:7f00:1)``)."""
    plain = address.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(plain)
    except ValueError:
        return address
    embedded = _embedded_ipv4(ip)
    return f"{embedded} ({address})" if embedded != ip else address


def _parse_ip(host: str) -> IPAddress | None:
    """``host`` as an address: canonical IPv4/IPv6, or a legacy IPv4 form (``127.1``, ``2130706433``)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _host_port(entry: str) -> tuple[str, int]:
    parts = urlsplit(f"//{entry}")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"allowed host must be 'host:port', got {entry!r}")
    return parts.hostname.lower(), parts.port


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class UrlGuard:
    """The SSRF policy: public addresses only, except the "host:port" entries of ``allowed_hosts``.

    ``resolve`` (host, port) -> addresses is what :meth:`check` looks names up with, and
    ``connect_resolver`` what the guarded connector resolves with (default: aiohttp's
    ``ThreadedResolver``, i.e. the system resolver); tests pass fakes.
    """

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        resolve: Resolve | None = None,
        connect_resolver: Callable[[], AbstractResolver] | None = None,
    ):
        self.allowed_hosts: frozenset[tuple[str, int]] = frozenset(_host_port(e) for e in allowed_hosts)
        self._resolve = resolve or _getaddrinfo
        self._connect_resolver = connect_resolver or ThreadedResolver
        self._approved_endpoints: set[tuple[str, int]] = {
            (str(ip), port) for host, port in self.allowed_hosts if (ip := _parse_ip(host)) is not None
        }

    def allows_host(self, host: str, port: int) -> bool:
        return (host.lower().strip("[]"), port) in self.allowed_hosts

    async def check(self, url: str | httpx.URL, *, resolve: bool = True) -> None:
        """Raise :class:`BlockedDestination` unless ``url`` may be requested.

        With ``resolve=False`` a host name is not looked up here (the connection-time guard
        does it); IP literals are always checked.
        """
        target = httpx.URL(str(url))
        if target.scheme not in _DEFAULT_PORTS:
            raise BlockedDestination(f"must use http or https, not {target.scheme or 'no scheme'!r}")
        host = target.host
        if not host:
            raise BlockedDestination("has no host")
        port = target.port or _DEFAULT_PORTS[target.scheme]
        if self.allows_host(host, port):
            return
        ip = _parse_ip(host)
        if ip is not None:
            self._refuse_if_internal(str(ip))
        elif resolve:
            try:
                await self.checked_addresses(host, port)
            except OSError as exc:
                raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc

    async def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to, all of them public unless ``host:port`` is allow-listed.

        Raises :class:`BlockedDestination` for an internal address and ``OSError`` when the name
        does not resolve. Connecting to one of these addresses leaves no DNS-rebinding gap.
        """
        ip = _parse_ip(host)
        addresses = [str(ip)] if ip is not None else await self._resolve(host, port)
        if not self.allows_host(host, port):
            for address in addresses:
                self._refuse_if_internal(address)
        return addresses

    def _refuse_if_internal(self, address: str) -> None:
        category = address_category(address.split("%", 1)[0])
        if category is not None:
            raise BlockedDestination(f"resolves to a {category} address {describe(address)}", address=address)

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp ``socket_factory``: open a socket only towards a public or allow-listed endpoint."""
        family, type_, proto, _, sockaddr = addr_info
        address, port = str(sockaddr[0]), int(sockaddr[1])
        if (address, port) not in self._approved_endpoints:
            category = address_category(address.split("%", 1)[0])
            if category is not None:
                raise BlockedAddressError(address, category)
        return socket.socket(family=family, type=type_, proto=proto)

    def resolver(self) -> AbstractResolver:
        """aiohttp resolver that refuses names resolving to a non-public address."""
        return _GuardedResolver(self, self._connect_resolver())

    def _approve(self, results: Iterable[ResolveResult], port: int) -> None:
        self._approved_endpoints.update((str(r["host"]), port) for r in results)


class _GuardedResolver(AbstractResolver):
    def __init__(self, guard: UrlGuard, inner: AbstractResolver):
        self._guard = guard
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._guard.allows_host(host, port):
            self._guard._approve(results, port)
            return results
        for result in results:
            category = address_category(str(result["host"]).split("%", 1)[0])
            if category is not None:
                raise BlockedAddressError(str(result["host"]), category)
        return results

    async def close(self) -> None:
        await self._inner.close()


def find_blocked(exc: BaseException) -> BlockedDestination | None:
    """The guard's refusal behind a transport error, as a :class:`BlockedDestination`, if any."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    marked = False
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BlockedDestination):
            return current
        if isinstance(current, BlockedAddressError):
            return BlockedDestination(
                f"resolves to a {current.category} address {describe(current.address)}",
                address=current.address,
            )
        marked = marked or "refused by the SSRF guard" in str(current)
        pending.extend((current.__cause__, current.__context__, getattr(current, "os_error", None)))
    if marked:
        return BlockedDestination("resolves to a non-public address (refused by the SSRF guard)")
    return None
