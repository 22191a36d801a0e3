"""Two baselines for the campaign engine's send rate, against the sandbox's WhatsApp Cloud API.

    .venv/bin/python bench/send_baselines.py [--messages 20000] [--direct-messages 5000] \\
        [--latency-ms 50] [--concurrency 200,500,1000] [--sandbox-url http://127.0.0.1:8025]

- ``direct``: what users script by hand, no queue: batches of 50 sends in parallel
  (``asyncio.gather`` over one shared ``httpx.AsyncClient`` with its default transport),
  then a 100 ms pause, until all are sent. At most 50 / (latency + 100 ms) messages/s, and
  less: httpx's pool keeps 20 of the 50 connections, and httpcore 1.0.9 costs ~2 ms CPU per
  request here (a failed ``import sniffio`` per lock since anyio dropped sniffio,
  encode/httpcore#1103, plus a scan of the pool per request); 183/s at 50 ms on 2 cores.
- ``ceiling``: a bare ``aiohttp.ClientSession`` (``TCPConnector(limit=1000)``, keep-alive)
  with a bounded number of sends in flight, back to back, after a warm-up that opens the
  connections; each ``--concurrency`` value is measured and the best one reported.

Both send real ``POST {sandbox}/v21.0/{phone_number_id}/messages`` requests (tasks/providers/WIRE.md)
with a unique ``to`` and ``biz_opaque_callback_data`` per message, reset the sandbox first
and check its stats after: every message accepted exactly once (``accepted == messages``,
``duplicates == 0``). Without ``--sandbox-url`` a sandbox child process is started with
``--latency-ms`` (default 50) and no receipts; with it, ``--latency-ms`` (if given) is applied
after each reset. Prints one JSON object; exits 1 when a check fails.
Importable: :func:`run_direct`, :func:`run_ceiling` (sync; ``direct``/``ceiling`` are the coroutines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent

PHONE_NUMBER_ID = "100200300400500"
TOKEN = "bench-token"
API_PATH = f"/v21.0/{PHONE_NUMBER_ID}/messages"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
DIRECT_BATCH = 50
DIRECT_PAUSE_SECONDS = 0.1
DIRECT_NAME = "direct batches of 50 + 100 ms pause"
CEILING_NAME = "bare aiohttp ceiling"
CEILING_CONCURRENCY = (200, 500, 1000)
CONNECTOR_LIMIT = 1000


def recipient(n: int) -> str:
    """A unique Brazilian mobile number for message ``n`` (ends in 1, so never a ``0000`` suffix)."""
    return f"55119{n:07d}1"


def payload(n: int, tag: str) -> dict[str, Any]:
    """The Cloud API text message ``n`` of run ``tag``."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": recipient(n),
        "type": "text",
        "text": {"preview_url": False, "body": f"Hi there, this is message {n} of the {tag} baseline"},
        "biz_opaque_callback_data": f"{tag}-{n}",
    }


def prepare(sandbox_url: str, config: Mapping[str, Any] | None = None) -> None:
    """Reset the sandbox (ledger, stats, startup config), then apply ``config`` if any."""
    with httpx.Client(base_url=sandbox_url, timeout=10) as client:
        client.post("/_sandbox/reset").raise_for_status()
        if config:
            client.put("/_sandbox/config", json=dict(config)).raise_for_status()


def check(sandbox_url: str, messages: int, result: dict[str, Any]) -> dict[str, Any]:
    """Add the sandbox's ``accepted``/``duplicates``/``rejected`` counts and ``verified`` to ``result``."""
    stats = httpx.get(f"{sandbox_url}/_sandbox/stats", timeout=10).raise_for_status().json()
    rejected = {kind: count for kind, count in stats.get("rejected", {}).items() if count}
    result |= {"accepted": stats["accepted"], "duplicates": stats["duplicates"], "rejected": rejected}
    result["verified"] = stats["accepted"] == messages and stats["duplicates"] == 0 and not rejected
    return result


async def direct(sandbox_url: str, messages: int) -> dict[str, Any]:
    """Send ``messages`` the hand-scripted way; the timing only (no sandbox reset or check)."""
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=sandbox_url, headers=HEADERS) as client:

        async def send(n: int) -> int:
            response = await client.post(API_PATH, json=payload(n, "direct"))
            return response.status_code

        started = time.perf_counter()
        for first in range(0, messages, DIRECT_BATCH):
            batch = range(first, min(first + DIRECT_BATCH, messages))
            statuses.update(await asyncio.gather(*(send(n) for n in batch)))
            if batch.stop < messages:
                await asyncio.sleep(DIRECT_PAUSE_SECONDS)
        seconds = time.perf_counter() - started
    return _figures(DIRECT_NAME, messages, seconds, statuses)


async def ceiling(
    sandbox_url: str, messages: int, concurrency: int, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Send ``messages`` with ``concurrency`` in flight over one aiohttp session; the timing only.

    A warm-up of ``concurrency`` sends opens the connections and is followed by a sandbox
    reset (and ``config``, if any), so the timed run has a clean ledger and warm connections.
    """
    tag = f"ceiling{concurrency}"
    bodies = [json.dumps(payload(n, tag), separators=(",", ":")).encode() for n in range(messages)]
    headers = {**HEADERS, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=max(CONNECTOR_LIMIT, concurrency))
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(
        sandbox_url, connector=connector, headers=headers, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:

        async def worker(queue: Iterator[bytes]) -> None:
            for body in queue:
                async with session.post(API_PATH, data=body) as response:
                    await response.read()
                    statuses[response.status] += 1

        warm_up = iter(json.dumps(payload(n, "warm-up")).encode() for n in range(concurrency))
        await asyncio.gather(*(worker(warm_up) for _ in range(concurrency)))
        async with session.post("/_sandbox/reset") as response:
            response.raise_for_status()
        if config:
            async with session.put("/_sandbox/config", json=dict(config)) as response:
                response.raise_for_status()
        statuses.clear()

        queue = iter(bodies)
        started = time.perf_counter()
        await asyncio.gather(*(worker(queue) for _ in range(min(concurrency, messages))))
        seconds = time.perf_counter() - started
    return _figures(CEILING_NAME, messages, seconds, statuses) | {"concurrency": concurrency}


def _figures(name: str, messages: int, seconds: float, statuses: Counter[int]) -> dict[str, Any]:
    return {
        "name": name,
        "messages": messages,
        "seconds": round(seconds, 3),
        "rate": round(messages / seconds, 1),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
    }


def run_direct(sandbox_url: str, messages: int, *, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Baseline (a): reset the sandbox, send the hand-scripted way, check the sandbox's stats.

    Returns ``{"name", "messages", "seconds", "rate", "statuses", "accepted", "duplicates",
    "rejected", "verified"}``; ``config`` is applied to the sandbox after the reset.
    """
    prepare(sandbox_url, config)
    result = asyncio.run(direct(sandbox_url, messages))
    return check(sandbox_url, messages, result)


def run_ceiling(
    sandbox_url: str,
    messages: int,
    *,
    concurrency: Sequence[int] = CEILING_CONCURRENCY,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Baseline (b): the best of one bare-aiohttp run per ``concurrency``, each reset and checked.

    Returns the best run's ``{"name", "messages", "seconds", "rate", "statuses", "accepted",
    "duplicates", "rejected", "verified", "concurrency"}`` plus ``"runs"``: every run's
    ``concurrency``/``seconds``/``rate``/``verified``; ``verified`` is true only if all runs were.
    """
    runs = []
    for value in concurrency:
        prepare(sandbox_url, config)
        result = asyncio.run(ceiling(sandbox_url, messages, value, config))
        runs.append(check(sandbox_url, messages, result))
    best = max(runs, key=lambda run: run["rate"])
    summary = [{key: run[key] for key in ("concurrency", "seconds", "rate", "verified")} for run in runs]
    return best | {"verified": all(run["verified"] for run in runs), "runs": summary}


def main(argv: Sequence[str] | None = None) -> int:
    """Run both baselines (starting a sandbox unless ``--sandbox-url``) and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages of each ceiling run")
    parser.add_argument("--direct-messages", type=int, default=5_000, help="messages of the direct run")
    parser.add_argument(
        "--latency-ms", type=float, default=None, help="sandbox latency (default 50 for its own sandbox)"
    )
    parser.add_argument(
        "--concurrency",
        default=",".join(map(str, CEILING_CONCURRENCY)),
        help="comma-separated in-flight limits tried for the ceiling",
    )
    parser.add_argument("--sandbox-url", help="use this running sandbox instead of starting one")
    arguments = parser.parse_args(argv)
    concurrency = [int(value) for value in arguments.concurrency.split(",") if value.strip()]

    def measure(sandbox_url: str, config: Mapping[str, Any] | None, latency_ms: float | None) -> int:
        figures: dict[str, Any] = {"sandbox_url": sandbox_url, "latency_ms": latency_ms}
        figures["direct"] = run_direct(sandbox_url, arguments.direct_messages, config=config)
        figures["ceiling"] = run_ceiling(
            sandbox_url, arguments.messages, concurrency=concurrency, config=config
        )
        figures["verified"] = figures["direct"]["verified"] and figures["ceiling"]["verified"]
        print(json.dumps(figures, indent=2))
        return 0 if figures["verified"] else 1

    if arguments.sandbox_url:
        latency = arguments.latency_ms
        config = None if latency is None else {"latency_ms": latency}
        return measure(arguments.sandbox_url.rstrip("/"), config, latency)

    sys.path.insert(0, str(PROJECT_ROOT))
    from tasks.sandbox import SandboxProcess

    latency = 50.0 if arguments.latency_ms is None else arguments.latency_ms
    with SandboxProcess(latency_ms=latency, callbacks=False) as sandbox:
        return measure(sandbox.url, None, latency)


if __name__ == "__main__":
    sys.exit(main())
