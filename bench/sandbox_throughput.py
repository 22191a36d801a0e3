"""How many WhatsApp sends a second the sandbox answers on one core, at zero latency.

    .venv/bin/python bench/sandbox_throughput.py [--seconds 10] [--concurrency 64] [--driver aiohttp|wrk]

Starts the sandbox in a child process pinned to CPU 0 (``taskset``), drives it over
loopback from this process (pinned to CPU 1) with 64 keep-alive aiohttp clients for 10 s,
then prints requests/s and latency percentiles and checks that the ledger accepted exactly
as many messages as got a 200 answer. The aiohttp client costs about as much CPU as the
server; ``--driver wrk`` (``apt-get install wrk``) measures the server's own ceiling, and
then the ledger may hold up to ``--concurrency`` more messages: those wrk had in flight
when it stopped. Exits non-zero on a mismatch or when below ``--expect-rps``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent

PHONE_NUMBER_ID = "100200300400500"
TOKEN = "bench-token"
PATH = f"/v21.0/{PHONE_NUMBER_ID}/messages"
WRK_SCRIPT = """
local counter = 0
local thread_number = 0
local threads = 0
function setup(thread)
  thread:set("thread_number", threads)
  threads = threads + 1
end
request = function()
  counter = counter + 1
  local body = string.format(
    '{"messaging_product":"whatsapp","to":"55119%%08d","type":"text",' ..
    '"text":{"body":"Hello from wrk %%d"},"biz_opaque_callback_data":"wrk-%%d-%%d"}',
    counter, counter, thread_number, counter)
  return wrk.format("POST", "%(path)s", {
    ["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(token)s"}, body)
end
"""


@dataclass
class Measured:
    seconds: float
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    in_flight_at_stop: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)


def _payload(worker: int, n: int) -> bytes:
    return (
        f'{{"messaging_product":"whatsapp","to":"55119{worker:02d}{n:06d}","type":"text",'
        f'"text":{{"body":"Hello from the benchmark, message {n}"}},'
        f'"biz_opaque_callback_data":"bench-{worker}-{n}"}}'
    ).encode()


async def drive_with_aiohttp(url: str, seconds: float, concurrency: int) -> Measured:
    """``concurrency`` keep-alive clients sending back to back for ``seconds``."""
    measured = Measured(seconds)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        url, connector=connector, headers=headers, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    ) as session:
        deadline = time.perf_counter() + seconds

        async def client(worker: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                n += 1
                started = time.perf_counter()
                async with session.post(PATH, data=_payload(worker, n)) as response:
                    await response.read()
                measured.latencies_ms.append((time.perf_counter() - started) * 1000)
                measured.statuses[response.status] = measured.statuses.get(response.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(client(worker) for worker in range(concurrency)))
        measured.seconds = time.perf_counter() - started
    cuts = statistics.quantiles(measured.latencies_ms, n=100)
    measured.p50_ms, measured.p99_ms = cuts[49], cuts[98]
    return measured


def drive_with_wrk(url: str, seconds: float, concurrency: int, cpu: int | None) -> Measured:
    """``wrk`` with one thread; requests still in flight when it stops are not counted by it.

    wrk reports only how many answers were not 2xx; they are counted under status 0.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT % {"path": PATH, "token": TOKEN})
        script.flush()
        command = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{int(seconds)}s",
            "--latency",
            "-s",
            script.name,
            url,
        ]
        if cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(cpu), *command]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print(output)
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    bad = int(non_2xx.group(1)) if non_2xx else 0
    statuses = {200: total - bad, 0: bad} if bad else {200: total}
    measured = Measured(seconds, statuses=statuses, in_flight_at_stop=concurrency)

    def percentile(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    measured.p50_ms, measured.p99_ms = percentile("50"), percentile("99")
    return measured


def main() -> int:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parse.add_argument("--seconds", type=float, default=10.0)
    parse.add_argument("--concurrency", type=int, default=64)
    parse.add_argument("--driver", choices=("aiohttp", "wrk"), default="aiohttp")
    parse.add_argument("--expect-rps", type=float, default=0.0, help="fail below this many requests/s")
    arguments = parse.parse_args()
    if arguments.driver == "wrk" and not shutil.which("wrk"):
        parse.error("wrk is not installed (apt-get install -y wrk)")

    sys.path.insert(0, str(PROJECT_ROOT))
    from tasks.sandbox import SandboxProcess

    several_cpus = (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity")
    with SandboxProcess(cpu=0 if several_cpus else None, callbacks=False, permanent_suffixes=[]) as sandbox:
        driver_cpu = 1 if several_cpus else None
        if driver_cpu is not None:
            os.sched_setaffinity(0, {driver_cpu})
        asyncio.run(drive_with_aiohttp(sandbox.url, 1.0, arguments.concurrency))  # warm-up
        httpx.post(f"{sandbox.url}/_sandbox/reset").raise_for_status()
        if arguments.driver == "wrk":
            measured = drive_with_wrk(sandbox.url, arguments.seconds, arguments.concurrency, driver_cpu)
        else:
            measured = asyncio.run(drive_with_aiohttp(sandbox.url, arguments.seconds, arguments.concurrency))
        time.sleep(0.2)
        stats = httpx.get(f"{sandbox.url}/_sandbox/stats").json()

    rate = measured.requests / measured.seconds
    print(
        f"driver={arguments.driver} concurrency={arguments.concurrency} seconds={measured.seconds:.1f} "
        f"sandbox_cpu={'0' if several_cpus else 'any'} driver_cpu={driver_cpu if several_cpus else 'any'}"
    )
    print(f"requests: {measured.requests}  statuses: {measured.statuses}")
    print(f"throughput: {rate:,.0f} requests/s")
    print(f"latency: p50 {measured.p50_ms:.2f} ms  p99 {measured.p99_ms:.2f} ms")
    print(f"ledger: accepted {stats['accepted']}  duplicates {stats['duplicates']}  200s {measured.ok}")
    failed = False
    unaccounted = stats["accepted"] - measured.ok
    if not 0 <= unaccounted <= measured.in_flight_at_stop:
        print(f"MISMATCH: the ledger accepted {stats['accepted']} messages but {measured.ok} got a 200")
        failed = True
    elif unaccounted:
        print(f"({unaccounted} accepted requests were still in flight when wrk stopped)")
    if rate < arguments.expect_rps:
        print(f"TOO SLOW: {rate:,.0f} < {arguments.expect_rps:,.0f} requests/s")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
