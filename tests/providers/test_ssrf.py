"""The SSRF guard: the address rules, the pre-request check, and enforcement at connection time.

Only IP literals, ``localhost`` (the hosts file) and fake resolvers are used: no DNS query
leaves the machine.
"""

from __future__ import annotations

import socket

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from tasks.providers import adapter_for, make_client
from tasks.providers.base import Outcome, PageConnection, ProviderKind, SendResult
from tasks.providers.ssrf import (
    BlockedAddressError,
    BlockedDestination,
    UrlGuard,
    address_category,
    allowed_private_hosts,
)
from tests.providers import (
    MESSAGE,
    SECRETS,
    local_http_server,
    page,
    run,
)

PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.5", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),
        ("64:ff9b::a00:5", "private"),
        (PUBLIC, None),
        ("2606:4700:4700::1111", None),
        ("::ffff:93.184.216.34", None),
    ],
)
def test_address_categories(address: str, category: str | None) -> None:
    assert address_category(address) == category


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost/", "loopback address"),
        ("http://LOCALHOST:8080/", "loopback address"),
        ("http://127.1/", "loopback address 127.0.0.1"),
        ("http://2130706433/", "loopback address 127.0.0.1"),
        ("http://[::1]/", "loopback address ::1"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("http://10.0.0.5/", "private address 10.0.0.5"),
        ("https://[::ffff:127.0.0.1]/", "loopback address 127.0.0.1 (::ffff:7f00:1)"),
        ("http://[fe80::1]:9000/", "link-local address fe80::1"),
        ("http://0.0.0.0:5000/", "unspecified address 0.0.0.0"),
        ("ftp://93.184.216.34/", "must use http or https"),
        ("file:///etc/passwd", "must use http or https"),
        ("http:///nohost", "has no host"),
    ],
)
def test_check_refuses_internal_destinations(url: str, reason: str) -> None:
    with pytest.raises(BlockedDestination) as refused:
        run(UrlGuard().check(url))
    assert reason in refused.value.reason


def test_check_allows_public_addresses() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return {"hooks.example.com": [PUBLIC, "2606:2800:220:1::1"]}[host]

    guard = UrlGuard(resolve=resolve)
    run(guard.check(f"https://{PUBLIC}/hook"))
    run(guard.check("https://hooks.example.com/hook"))


def test_a_name_with_any_internal_address_is_refused() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return [PUBLIC, "10.1.2.3"]

    with pytest.raises(BlockedDestination, match=r"private address 10\.1\.2\.3"):
        run(UrlGuard(resolve=resolve).check("https://mixed.example.com/"))


def test_allow_list_is_exact_host_and_port() -> None:
    guard = UrlGuard(allowed_hosts=["127.0.0.1:8025", "localhost:9000", "[::1]:7000"])
    run(guard.check("http://127.0.0.1:8025/sandbox"))
    run(guard.check("http://localhost:9000/"))
    run(guard.check("http://[::1]:7000/"))
    for url in (
        "http://127.0.0.1:8026/",
        "http://localhost:9001/",
        "http://127.0.0.1/",
        "http://[::1]:7001/",
    ):
        with pytest.raises(BlockedDestination):
            run(guard.check(url))


def test_allow_list_entries_need_a_port() -> None:
    with pytest.raises(ValueError, match="host:port"):
        UrlGuard(allowed_hosts=["127.0.0.1"])


def test_socket_factory_refuses_internal_endpoints() -> None:
    guard = UrlGuard(allowed_hosts=["127.0.0.1:8025"])
    with pytest.raises(BlockedAddressError, match=r"private address 10\.0\.0\.5"):
        guard.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 80)))
    with pytest.raises(BlockedAddressError, match="loopback"):
        guard.socket_factory((socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 8025, 0, 0)))
    for address in (("127.0.0.1", 8025), (PUBLIC, 443)):
        sock = guard.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", address))
        sock.close()


class FakeResolver(AbstractResolver):
    """A connection-time resolver whose answers the test decides."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        address = self.answers[host]
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


def webhook(url: str) -> PageConnection:
    return PageConnection(ProviderKind.WEBHOOK, url, dict(SECRETS[ProviderKind.WEBHOOK]))


async def _never_reached(request: web.Request) -> web.Response:
    return web.Response(text="internal secrets")


async def _send(url: str, guard: UrlGuard, *, guarded_client: bool = True) -> SendResult:
    async with make_client(guard=guard if guarded_client else None) as client:
        adapter = adapter_for(webhook(url), client, guard=guard)
        return await adapter.send(MESSAGE)


@pytest.mark.parametrize(
    ("target", "detail"),
    [
        ("http://127.0.0.1:{port}/steal", "webhook URL resolves to a loopback address 127.0.0.1"),
        ("http://localhost:{port}/steal", "webhook URL resolves to a loopback address"),
        ("http://127.1:{port}/steal", "webhook URL resolves to a loopback address 127.0.0.1"),
        ("http://[::1]:{port}/steal", "webhook URL resolves to a loopback address ::1"),
        (
            "http://[::ffff:127.0.0.1]:{port}/",
            "webhook URL resolves to a loopback address 127.0.0.1 (::ffff:7f00:1)",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "webhook URL resolves to a link-local address 169.254.169.254",
        ),
        ("http://10.0.0.5/", "webhook URL resolves to a private address 10.0.0.5"),
    ],
)
def test_a_redirect_to_an_internal_address_is_refused(target: str, detail: str) -> None:
    async def scenario() -> tuple[SendResult, int, list[str]]:
        async with local_http_server(_never_reached) as (internal_port, internal_seen):
            location = target.format(port=internal_port)

            async def redirects(request: web.Request) -> web.Response:
                return web.Response(status=307, headers={"Location": location})

            async with local_http_server(redirects) as (port, seen):
                guard = UrlGuard(allowed_hosts=[f"127.0.0.1:{port}"])
                result = await _send(f"http://127.0.0.1:{port}/hook", guard)
                return result, len(internal_seen), [r.path for r in seen]

    result, internal_requests, hops = run(scenario())
    assert (result.outcome, result.code) == (Outcome.PAGE_FATAL, "ssrf")
    assert result.detail and result.detail.startswith(detail)
    assert internal_requests == 0
    assert hops == ["/hook"]


def test_dns_rebinding_is_caught_at_connection_time() -> None:
    """The check sees a public answer; the connection's own lookup gets 127.0.0.1 and is refused."""

    async def public_answer(host: str, port: int) -> list[str]:
        return [PUBLIC]

    rebinding = FakeResolver({"hooks.example.com": "127.0.0.1"})

    async def scenario() -> tuple[SendResult, int]:
        async with local_http_server(_never_reached) as (port, seen):
            url = f"http://hooks.example.com:{port}/hook"
            guard = UrlGuard(resolve=public_answer, connect_resolver=lambda: rebinding)
            await guard.check(url)
            return await _send(url, guard), len(seen)

    result, internal_requests = run(scenario())
    assert (result.outcome, result.detail) == (
        Outcome.PAGE_FATAL,
        "webhook URL resolves to a loopback address 127.0.0.1",
    )
    assert internal_requests == 0
    assert rebinding.asked == ["hooks.example.com"]


def test_a_guarded_client_does_not_resolve_twice() -> None:
    """With the guard in the connector, the pre-request check leaves name lookups to it."""

    async def must_not_be_called(host: str, port: int) -> list[str]:
        raise AssertionError("the pre-request check resolved a name")

    connect_time = FakeResolver({"hooks.example.com": "10.9.8.7"})
    guard = UrlGuard(resolve=must_not_be_called, connect_resolver=lambda: connect_time)
    result = run(_send("http://hooks.example.com/hook", guard))
    assert (result.outcome, result.detail) == (
        Outcome.PAGE_FATAL,
        "webhook URL resolves to a private address 10.9.8.7",
    )


def test_without_a_guarded_client_the_check_resolves_names() -> None:
    async def scenario() -> tuple[SendResult, int]:
        async with local_http_server(_never_reached) as (port, seen):
            result = await _send(f"http://localhost:{port}/", UrlGuard(), guarded_client=False)
            return result, len(seen)

    result, internal_requests = run(scenario())
    assert result.outcome is Outcome.PAGE_FATAL
    assert result.detail and result.detail.startswith("webhook URL resolves to a loopback address")
    assert internal_requests == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_allow_listed_sandbox_is_reachable(host: str) -> None:
    async def sandbox(request: web.Request) -> web.Response:
        return web.json_response({"id": "sandbox-1"})

    async def scenario() -> SendResult:
        async with local_http_server(sandbox) as (port, _):
            return await _send(f"http://{host}:{port}/hook", UrlGuard(allowed_hosts=[f"{host}:{port}"]))

    result = run(scenario())
    assert (result.outcome, result.provider_message_id) == (Outcome.SENT, "sandbox-1")


def test_adapters_default_to_a_strict_guard() -> None:
    async def scenario() -> SendResult:
        async with make_client() as client:
            return await adapter_for(webhook("http://192.168.0.10:8080/hook"), client).send(MESSAGE)

    result = run(scenario())
    assert (result.outcome, result.detail) == (
        Outcome.PAGE_FATAL,
        "webhook URL resolves to a private address 192.168.0.10",
    )


def test_the_connection_can_allow_the_sandbox_but_page_settings_cannot() -> None:
    async def sandbox(request: web.Request) -> web.Response:
        return web.json_response({"id": "sandbox-2"})

    async def scenario() -> tuple[SendResult, SendResult]:
        async with local_http_server(sandbox) as (port, _), make_client() as client:
            url, allowed = f"http://127.0.0.1:{port}/hook", frozenset({f"127.0.0.1:{port}"})
            secrets = dict(SECRETS[ProviderKind.WEBHOOK])
            by_server = PageConnection(ProviderKind.WEBHOOK, url, secrets, allowed_hosts=allowed)
            by_tenant = PageConnection(
                ProviderKind.WEBHOOK, url, secrets, settings={"allowed_hosts": allowed}
            )
            return (
                await adapter_for(by_server, client).send(MESSAGE),
                await adapter_for(by_tenant, client).send(MESSAGE),
            )

    allowed, refused = run(scenario())
    assert (allowed.outcome, allowed.provider_message_id) == (Outcome.SENT, "sandbox-2")
    assert (refused.outcome, refused.code) == (Outcome.PAGE_FATAL, "ssrf")


@pytest.mark.parametrize("kind", [ProviderKind.WHATSAPP, ProviderKind.MESSENGER])
def test_meta_pages_pointed_at_an_internal_host_are_refused(kind: ProviderKind) -> None:
    connection = page(kind, base_url="http://169.254.169.254")
    result = run(_send_with(adapter_for(connection, make_client())))
    assert result.outcome is Outcome.PAGE_FATAL and "169.254.169.254" in (result.detail or "")


def test_the_providers_own_api_host_is_not_checked() -> None:
    adapter = adapter_for(page(ProviderKind.WHATSAPP, base_url="https://graph.facebook.com"), make_client())
    assert adapter.guard is None
    run(adapter.client.aclose())


async def _send_with(adapter) -> SendResult:
    try:
        return await adapter.send(MESSAGE)
    finally:
        await adapter.client.aclose()


@pytest.mark.parametrize(
    ("environment", "allowed"),
    [
        ("development", {"127.0.0.1:8025", "127.0.0.1:8026", "mail.internal:25"}),
        ("test", {"127.0.0.1:8025", "127.0.0.1:8026", "mail.internal:25"}),
        ("production", {"mail.internal:25"}),
    ],
)
def test_one_rule_says_which_private_hosts_pages_may_reach(environment, allowed):
    """The sandbox (HTTP and SMTP) outside production, and the operator's CRIER_ALLOWED_PRIVATE_HOSTS."""
    config = {
        "CRIER_ENV": environment,
        "SANDBOX_URL": "http://127.0.0.1:8025",
        "SANDBOX_SMTP_PORT": 8026,
        "EXTRA_ALLOWED_HOSTS": ["mail.internal:25"],
    }
    assert allowed_private_hosts(config) == allowed
