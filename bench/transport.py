"""Transport benchmark: which async HTTP stack should the provider adapters use?

Starts a minimal aiohttp server in a subprocess on loopback that answers every POST with a
WhatsApp-style 200 JSON (optionally after a delay), then drives it with three clients:

* ``httpx``          httpx.AsyncClient with its default transport (httpcore)
* ``httpx-aiohttp``  httpx.AsyncClient over ``httpx_aiohttp.AiohttpTransport``
* ``aiohttp``        a bare aiohttp.ClientSession (the ceiling)
* ``crier``          ``tasks.providers.http.make_client()`` as shipped (httpx-aiohttp, our
                     connector settings, exception mapping and the SSRF guard allowing the server)

Each case (client x server latency x concurrency) runs for a bounded time after a short
warm-up and reports requests/s and p50/p99 latency. Run it with::

    .venv/bin/python bench/transport.py            # defaults: 0 and 50 ms, concurrency 50 and 500, 3 s
    .venv/bin/python bench/transport.py --duration 2 --concurrency 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAYLOAD = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": "5511961234567",
    "type": "text",
    "text": {"preview_url": False, "body": "Hi Ana"},
    "biz_opaque_callback_data": "dlv-1",
}
ANSWER = json.dumps(
    {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "5511961234567", "wa_id": "5511961234567"}],
        "messages": [{"id": "wamid.HBgMNTUxMTk2MTIzNDU2NxUCABEYEjQ1"}],
    }
).encode()
TRANSPORTS = ("httpx", "httpx-aiohttp", "aiohttp", "crier")

Post = Callable[[str], Awaitable[None]]


def serve() -> None:
    """Server mode: bind an ephemeral loopback port, print it, answer until killed."""
    from aiohttp import web

    async def messages(request: web.Request) -> web.Response:
        await request.read()
        delay_ms = float(request.query.get("delay_ms", "0"))
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v21.0/{phone_number_id}/messages", messages)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@asynccontextmanager
async def httpx_default(concurrency: int) -> AsyncIterator[Post]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(15.0, connect=5.0)) as client:

        async def post(url: str) -> None:
            response = await client.post(url, json=PAYLOAD, headers={"Authorization": "Bearer x"})
            response.raise_for_status()
            response.json()

        yield post


@asynccontextmanager
async def httpx_over_aiohttp(concurrency: int) -> AsyncIterator[Post]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(15.0, connect=5.0)) as client:

        async def post(url: str) -> None:
            response = await client.post(url, json=PAYLOAD, headers={"Authorization": "Bearer x"})
            response.raise_for_status()
            response.json()

        yield post


@asynccontextmanager
async def bare_aiohttp(concurrency: int) -> AsyncIterator[Post]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(sock_connect=5.0, sock_read=15.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(url: str) -> None:
            async with session.post(url, json=PAYLOAD, headers={"Authorization": "Bearer x"}) as response:
                response.raise_for_status()
                await response.json()

        yield post


@asynccontextmanager
async def crier_client(concurrency: int, port: int) -> AsyncIterator[Post]:
    from tasks.providers.http import make_client
    from tasks.providers.ssrf import UrlGuard

    guard = UrlGuard(allowed_hosts=[f"127.0.0.1:{port}"])
    async with make_client(guard=guard, max_connections=concurrency) as client:

        async def post(url: str) -> None:
            response = await client.post(url, json=PAYLOAD, headers={"Authorization": "Bearer x"})
            response.raise_for_status()
            response.json()

        yield post


CLIENTS: dict[str, Callable[[int, int], AbstractAsyncContextManager[Post]]] = {
    "httpx": lambda concurrency, port: httpx_default(concurrency),
    "httpx-aiohttp": lambda concurrency, port: httpx_over_aiohttp(concurrency),
    "aiohttp": lambda concurrency, port: bare_aiohttp(concurrency),
    "crier": crier_client,
}


@dataclass
class CaseResult:
    transport: str
    latency_ms: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


async def run_case(
    transport: str, port: int, latency_ms: int, concurrency: int, duration: float, max_requests: int
) -> CaseResult:
    """Warm the pool with one request per worker, then measure for ``duration`` seconds."""
    url = f"http://127.0.0.1:{port}/v21.0/1055/messages?delay_ms={latency_ms}"
    latencies: list[float] = []
    errors = 0
    async with CLIENTS[transport](concurrency, port) as post:
        await asyncio.gather(*(post(url) for _ in range(concurrency)))
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) + errors < max_requests:
                t0 = time.perf_counter()
                try:
                    await post(url)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return CaseResult(transport, latency_ms, concurrency, len(latencies), errors, elapsed, latencies)


def start_server() -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.strip().isdigit():
        server.kill()
        raise RuntimeError(f"benchmark server did not start: {line!r}")
    return server, int(line)


def print_table(results: list[CaseResult]) -> None:
    header = (
        f"{'transport':<14} {'latency':>8} {'conc':>5} {'requests':>9} {'err':>4} "
        f"{'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.transport:<14} {r.latency_ms:>6}ms {r.concurrency:>5} {r.requests:>9} {r.errors:>4} "
            f"{r.rps:>8.0f} {r.percentile(50):>8.1f} {r.percentile(99):>8.1f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per case")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap on requests per case")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--latency-ms", type=int, nargs="+", default=[0, 50])
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return

    server, port = start_server()
    results: list[CaseResult] = []
    try:
        for latency_ms in args.latency_ms:
            for concurrency in args.concurrency:
                for transport in args.transports:
                    result = asyncio.run(
                        run_case(transport, port, latency_ms, concurrency, args.duration, args.max_requests)
                    )
                    results.append(result)
                    print(
                        f"  {transport} {latency_ms}ms c={concurrency}: {result.rps:.0f} req/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    print_table(results)


if __name__ == "__main__":
    main()
