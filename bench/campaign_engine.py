"""The campaign engine end to end, driven like an operator would: throughput, rate accuracy, worker memory.

    .venv/bin/python bench/campaign_engine.py [--recipients 100000] [--quick] [--threads 4] \\
        [--latency-ms 50] [--rate-seconds 15] [--log-dir DIR] [--worker-verbose] [--json]
    make bench        # runs it (full) after the other benchmarks: about 5 minutes

Everything is a real process: a sandbox child (``tasks.sandbox.SandboxProcess``, WhatsApp Cloud API
answering after ``--latency-ms``, no receipts), a fresh PostgreSQL database ``crier_bench_<hex>``
migrated with ``flask db upgrade`` (dropped at the end), a Redis prefix ``crier-bench-<hex>``
(deleted at the end), ``flask crier demo`` / ``flask crier campaign create|start|status`` for the
set-up, and ``dramatiq worker:broker --processes 1 --threads N`` workers started before each
campaign and stopped after it. The engine's own settings are its defaults: ``CRIER_*``,
``DATABASE_URL``, ``REDIS_*`` and ``dramatiq_*`` variables of the caller's environment are dropped.

Phases, in this order (small contact lists first: regenerating the demo list deletes the previous
contacts, which costs more the more deliveries exist):

1. Baselines, from ``bench/send_baselines.py``, before any worker runs: (a) *direct*, batches of 50
   in parallel with a 100 ms pause, no queue; (b) the *ceiling*, a bare aiohttp client as fast as it
   can (best of several concurrencies). Each checked against the sandbox's stats.
2. Rate accuracy at 80/s and 1,000/s with TWO worker processes (two ``dramatiq`` commands):
   ``rate x --rate-seconds`` recipients at a page rate of ``rate``. *Achieved* is the rate over the
   steady part (the ledger's acceptance times between the 10th and 90th percentile of messages);
   *max in 1 s* is the sandbox's ``by_account[<phone_number_id>].max_in_any_1s_window``. Passes when
   max in 1 s <= rate + max(1, int(0.05 x rate)) and achieved >= 0.95 x rate.
3. Worker memory: a campaign of ``--memory-recipients`` (10,000) with ONE fresh worker process.
4. Throughput: a campaign of ``--recipients`` (100,000) at a page rate of 100,000/s ("no limit")
   with ONE fresh worker process; seconds from ``campaign start`` returning to the campaign's
   ``finished_at`` (it becomes ``completed``). Passes at >= ``--min-rate`` (1,000) messages/s;
   reported as a ratio to the direct and ceiling baselines. This worker's peak is the memory
   figure for ``--recipients``.

Peak memory is ``VmHWM`` of each dramatiq worker *process* (the children the ``dramatiq`` command
forks; the parent only supervises), read from ``/proc`` just before the workers are stopped, in
MiB (2^20 bytes). Passes when each is <= 150 MiB and the larger is within 10% of the smaller.

Every campaign is also checked: the sandbox accepted exactly one message per recipient
(``accepted == recipients``, ``duplicates == 0``, nothing rejected) and ``campaign status`` says
``completed`` with ``sent == total == recipients``. Worker logs are scanned for warnings and
errors (listed under the tables). ``--quick`` is a smoke run: 10,000 and 1,000 recipients, 5 s
rate tests, smaller baselines. Prints markdown tables (``--json`` also prints every figure); exits 1
naming each requirement that failed, 2 when a phase could not run at all.

The figures depend on the machine and on what else runs on it (the worker, PostgreSQL, Redis and the
sandbox share its cores): the header line shows the load average, and the engine's commit (with a
fingerprint of uncommitted changes to ``tasks/``, ``tenants/``, ``webapp/``), flagged when it
changed during the run. ``--log-dir`` keeps every worker's log and each campaign's ledger times
(``ledger-*.json``, epoch seconds of each acceptance); ``--worker-verbose`` adds dramatiq's debug
lines (when each dispatch slice was received and how long it ran).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
BIN = Path(sys.executable).parent

PHONE_NUMBER_ID = "100000000000001"  # the demo WhatsApp page's phone_number_id (tenants/demo.py)
MESSAGE = "Hi {{first_name}} from {{city}}"
NO_LIMIT = 100_000  # messages/s: the page rate of the throughput runs
RATE_TESTS = (80, 1000)
BURST_FRACTION = 0.05  # tasks/limits.py: a sliding second may hold rate + max(1, int(0.05 * rate))
ACHIEVED_SHARE = 0.95  # the steady rate must reach this share of the target
MEMORY_LIMIT_MIB = 150.0
MEMORY_SPREAD = 0.10  # "nearly the same": the larger peak within 10% of the smaller
PAIR_INTERVAL = 6.5  # WhatsApp pacing marks (6 s per recipient) must lapse between two phases
STEADY = (0.10, 0.90)
POLL_SECONDS = 0.1
PROGRESS_EVERY = 5.0
DROPPED_ENV = re.compile(r"^(CRIER_|DATABASE_URL$|REDIS_|dramatiq_)")
LOG_PROBLEM = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|^Traceback")


class BenchError(RuntimeError):
    """The bench could not run a phase (not a failed requirement: those are reported in the table)."""


# --------------------------------------------------------------------------- processes and /proc


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, grandchildren, ...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def peak_rss_mib(pid: int) -> float | None:
    """``VmHWM`` (peak resident set) of ``pid`` in MiB, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time ``pid`` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class WorkerFigures:
    """What one ``dramatiq`` command's processes used, read just before it was stopped."""

    parent_pid: int
    parent_peak_mib: float | None
    process_peaks_mib: dict[int, float]
    process_cpu_seconds: dict[int, float]


class WorkerCommand:
    """One ``dramatiq worker:broker --processes 1 --threads N`` command in its own session."""

    def __init__(
        self, env: Mapping[str, str], threads: int, log: Path, processes: int = 1, verbose: bool = False
    ) -> None:
        self.env = dict(env)
        self.threads = threads
        self.processes = processes
        self.verbose = verbose
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        dramatiq = BIN / "dramatiq"
        head = [str(dramatiq)] if dramatiq.exists() else [sys.executable, "-m", "dramatiq"]
        command = [*head, "worker:broker", "--processes", str(self.processes), "--threads", str(self.threads)]
        return [*command, "--verbose"] if self.verbose else command

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self.command(),
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"the worker exited before it was ready:\n{tail(self.log)}")
        return self.log.read_text(errors="replace").count("is ready for action") >= self.processes

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def figures(self) -> WorkerFigures:
        assert self.process is not None
        pid = self.process.pid
        peaks: dict[int, float] = {}
        cpu: dict[int, float] = {}
        for child in descendants(pid):
            peak, used = peak_rss_mib(child), cpu_seconds(child)
            if peak is not None and used is not None:
                peaks[child], cpu[child] = round(peak, 1), round(used, 1)
        parent = peak_rss_mib(pid)
        return WorkerFigures(pid, None if parent is None else round(parent, 1), peaks, cpu)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (dramatiq passes it on and finishes what it is doing), SIGKILL its group if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def log_problems(paths: Sequence[Path], width: int = 160) -> list[str]:
    """Warning/error lines of worker logs, counted by their message (timestamps and pids dropped)."""
    counts: Counter[str] = Counter()
    for path in paths:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for line in lines:
            if LOG_PROBLEM.search(line):
                message = re.sub(r"^\[[^]]*\] \[PID \d+\] \[[^]]*\] ", "", line)
                message = re.sub(r"0x[0-9a-f]+", "0x…", message)
                counts[message[:width]] += 1
    return [f"{count} x {message}" for message, count in counts.most_common()]


# --------------------------------------------------------------------------- figures


def steady_rate(times: Sequence[float]) -> float | None:
    """Messages per second between the 10th and 90th percentile message (by acceptance time)."""
    if len(times) < 10:
        return None
    first, last = int(len(times) * STEADY[0]), int(len(times) * STEADY[1]) - 1
    span = times[last] - times[first]
    return (last - first) / span if span > 0 else None


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most acceptance times in any half-open sliding window of ``window`` seconds."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def allowed_in_window(rate: float) -> int:
    return int(rate + max(1, int(rate * BURST_FRACTION)))


@dataclass
class CampaignRun:
    """One campaign from ``start`` to ``completed``, and what the sandbox and the workers saw."""

    label: str
    recipients: int
    page_rate: float
    worker_processes: int
    campaign_id: int = 0
    start_command_seconds: float = 0.0  # how long ``campaign start`` took (it creates the deliveries)
    seconds: float | None = None  # from ``campaign start`` returning to ``finished_at``
    rate: float | None = None
    send_span_seconds: float | None = None  # first to last acceptance at the sandbox
    steady_rate: float | None = None
    max_in_1s: int | None = None  # the sandbox's own count for the page's account
    max_in_1s_ledger: int | None = None  # the same from the ledger's wall-clock times
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    workers: list[WorkerFigures] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # correctness failures

    @property
    def peak_mib(self) -> float | None:
        peaks = [peak for worker in self.workers for peak in worker.process_peaks_mib.values()]
        return max(peaks) if peaks else None

    @property
    def cpu_seconds(self) -> list[float]:
        return [cpu for worker in self.workers for cpu in worker.process_cpu_seconds.values()]


# --------------------------------------------------------------------------- the bench


class Bench:
    """One run: its database, Redis prefix, sandbox and environment."""

    def __init__(
        self, arguments: argparse.Namespace, sandbox_url: str, smtp_port: int, log_dir: Path
    ) -> None:
        self.arguments = arguments
        self.tag = secrets.token_hex(4)
        self.database = f"crier_bench_{self.tag}"
        self.prefix = f"crier-bench-{self.tag}"
        self.sandbox_url = sandbox_url
        self.log_dir = log_dir
        self.instance = log_dir / "instance"
        self.instance.mkdir(parents=True, exist_ok=True)
        self.admin_url = arguments.postgres
        base, _, _ = arguments.postgres.rpartition("/")
        self.database_url = f"{base}/{self.database}"
        self.env = {key: value for key, value in os.environ.items() if not DROPPED_ENV.match(key)}
        self.env |= {
            "DATABASE_URL": self.database_url.replace("postgresql://", "postgresql+psycopg://", 1),
            "REDIS_URL": arguments.redis,
            "REDIS_PREFIX": self.prefix,
            "CRIER_INSTANCE_PATH": str(self.instance),
            "CRIER_ENV": "test",
            "CRIER_SANDBOX_URL": sandbox_url,
            "CRIER_SANDBOX_SMTP_PORT": str(smtp_port),
        }
        self.sandbox = httpx.Client(base_url=sandbox_url, timeout=30)
        self.sandbox_config = {"latency_ms": arguments.latency_ms, "callbacks": False}
        self.last_sends_at = 0.0  # monotonic time the previous campaign finished

    # ---- database, Redis

    def create_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')  # our own hex name
        self.flask("db", "upgrade")

    def drop_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def clean_redis(self) -> None:
        client = redis.Redis.from_url(self.arguments.redis)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for first in range(0, len(keys), 500):
                client.delete(*keys[first : first + 500])
        finally:
            client.close()

    # ---- the operator's commands

    def flask(self, *arguments: str, timeout: float = 600) -> str:
        flask = BIN / "flask"
        head = [str(flask)] if flask.exists() else [sys.executable, "-m", "flask"]
        done = subprocess.run(
            [*head, "--app", "wsgi", *arguments],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise BenchError(
                f"flask {' '.join(arguments)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )
        return done.stdout

    def crier_json(self, *arguments: str) -> dict[str, Any]:
        lines = [line for line in self.flask("crier", *arguments).splitlines() if line.startswith("{")]
        if not lines:
            raise BenchError(f"flask crier {' '.join(arguments)} printed no JSON")
        return json.loads(lines[-1])

    def prepare_demo(self, contacts: int, rate: float) -> dict[str, Any]:
        started = time.monotonic()
        demo = self.crier_json(
            "demo", "--contacts", str(contacts), "--provider", "whatsapp", "--rate", f"{rate:g}", "--json"
        )
        if demo["contacts"] != contacts:
            raise BenchError(f"the demo list has {demo['contacts']} contacts, not {contacts}")
        note(f"demo list of {contacts:,} contacts at {rate:g}/s ready in {time.monotonic() - started:.1f} s")
        return demo

    # ---- sandbox

    def reset_sandbox(self) -> None:
        self.sandbox.post("/_sandbox/reset").raise_for_status()
        self.sandbox.put("/_sandbox/config", json=self.sandbox_config).raise_for_status()

    def sandbox_stats(self) -> dict[str, Any]:
        return self.sandbox.get("/_sandbox/stats").raise_for_status().json()

    def ledger_times(self) -> list[float]:
        times: list[float] = []
        after = 0
        while True:
            page = self.sandbox.get("/_sandbox/ledger", params={"after": after, "limit": 10_000})
            body = page.raise_for_status().json()
            if not body["entries"]:
                return sorted(times)
            times += [entry["at"] for entry in body["entries"] if entry["account"] == PHONE_NUMBER_ID]
            after = body["next"]

    # ---- workers

    @contextlib.contextmanager
    def workers(self, commands: int, label: str) -> Iterator[list[WorkerCommand]]:
        started = []
        try:
            for number in range(commands):
                slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
                log = self.log_dir / f"worker-{slug}-{number + 1}.log"
                worker = WorkerCommand(
                    self.env, self.arguments.threads, log, verbose=self.arguments.worker_verbose
                )
                worker.start()
                started.append(worker)
            deadline = time.monotonic() + 90
            while not all(worker.ready() for worker in started):
                if time.monotonic() > deadline:
                    raise BenchError(f"the workers were not ready in 90 s:\n{tail(started[-1].log)}")
                time.sleep(0.1)
            yield started
        finally:
            for worker in started:
                worker.stop()

    # ---- one campaign

    def run_campaign(self, label: str, recipients: int, page_rate: float, commands: int) -> CampaignRun:
        """Set up, start and follow one campaign to the end with ``commands`` fresh worker processes."""
        run = CampaignRun(label, recipients, page_rate, commands)
        demo = self.prepare_demo(recipients, page_rate)
        created = self.crier_json(
            "campaign",
            "create",
            "--tenant",
            demo["slug"],
            "--page",
            str(demo["page_id"]),
            "--list",
            str(demo["list_id"]),
            "--text",
            MESSAGE,
            "--name",
            f"bench {label}",
        )
        run.campaign_id = int(created["id"])
        with self.workers(commands, label) as workers:
            time.sleep(max(0.0, self.last_sends_at + PAIR_INTERVAL - time.monotonic()))
            self.reset_sandbox()
            started = time.monotonic()
            state = self.crier_json("campaign", "start", str(run.campaign_id))
            returned_wall = time.time()
            run.start_command_seconds = round(time.monotonic() - started, 2)
            if state.get("state") != "running":
                raise BenchError(f"campaign {run.campaign_id} did not start: {state}")
            finished = self.wait_for_end(run, returned_wall, workers)
            self.last_sends_at = time.monotonic()
            run.workers = [worker.figures() for worker in workers]
        run.log_problems = log_problems([worker.log for worker in workers])
        self.collect(run, finished, returned_wall)
        return run

    def wait_for_end(
        self, run: CampaignRun, returned_wall: float, workers: Sequence[WorkerCommand]
    ) -> float | None:
        """Poll PostgreSQL until the campaign leaves ``running``; its ``finished_at`` (epoch seconds).

        None when it did not complete in time or a worker command exited meanwhile.
        """
        expected = run.recipients / min(run.page_rate, self.arguments.min_rate)
        deadline = time.monotonic() + self.arguments.timeout_factor * expected + 60
        next_note = time.monotonic() + PROGRESS_EVERY
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT state, finished_at FROM campaigns WHERE id = %s", (run.campaign_id,)
                ).fetchone()
                if row is None:
                    raise BenchError(f"campaign {run.campaign_id} is gone")
                state, finished_at = row
                if state != "running":
                    if state != "completed":
                        run.problems.append(f"{run.label}: the campaign ended {state}, not completed")
                    return finished_at.timestamp() if finished_at is not None else None
                now = time.monotonic()
                exited = [worker for worker in workers if worker.exited()]
                if exited:
                    run.problems.append(f"{run.label}: a worker exited:\n{tail(exited[0].log, 1500)}")
                    return None
                if now > deadline:
                    run.problems.append(
                        f"{run.label}: not completed after {time.time() - returned_wall:.0f} s"
                    )
                    return None
                if now >= next_note:
                    next_note = now + PROGRESS_EVERY
                    accepted = self.sandbox_stats()["accepted"]
                    note(f"  {run.label}: {accepted:,}/{run.recipients:,} accepted by the sandbox")
                time.sleep(POLL_SECONDS)

    def collect(self, run: CampaignRun, finished: float | None, returned_wall: float) -> None:
        """The sandbox's and the ledger's figures, ``campaign status``, and the correctness checks."""
        stats = self.sandbox_stats()
        account = stats["by_account"].get(PHONE_NUMBER_ID, {})
        run.accepted, run.duplicates = stats["accepted"], stats["duplicates"]
        run.rejected = {kind: count for kind, count in stats["rejected"].items() if count}
        run.max_in_1s = account.get("max_in_any_1s_window")
        times = self.ledger_times()
        if self.arguments.log_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9]+", "-", run.label).strip("-")
            (self.log_dir / f"ledger-{slug}.json").write_text(json.dumps(times))
        if times:
            run.send_span_seconds = round(times[-1] - times[0], 3)
            run.max_in_1s_ledger = max_in_window(times)
            steady = steady_rate(times)
            run.steady_rate = None if steady is None else round(steady, 1)
        if finished is not None:
            run.seconds = round(finished - returned_wall, 3)
            run.rate = round(run.recipients / run.seconds, 1) if run.seconds > 0 else None
        run.status = self.crier_json("campaign", "status", str(run.campaign_id))
        problems = run.problems
        if run.accepted != run.recipients:
            problems.append(f"{run.label}: the sandbox accepted {run.accepted:,}, not {run.recipients:,}")
        if run.duplicates:
            problems.append(f"{run.label}: {run.duplicates:,} duplicate messages")
        if run.rejected:
            problems.append(f"{run.label}: the sandbox rejected {run.rejected}")
        status = run.status
        if status.get("state") != "completed":
            problems.append(f"{run.label}: campaign status says {status.get('state')}, not completed")
        if not (status.get("sent") == status.get("total") == run.recipients):
            problems.append(
                f"{run.label}: sent {status.get('sent')} of total {status.get('total')} "
                f"(expected {run.recipients:,}); failed {status.get('failed')}, "
                f"unknown {status.get('unknown')}"
            )
        if not run.workers or any(not worker.process_peaks_mib for worker in run.workers):
            problems.append(f"{run.label}: no dramatiq worker process was found to measure")


def code_version() -> str:
    """The commit the engine runs from, with a fingerprint of uncommitted changes to its code."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", "tasks", "tenants", "webapp", "worker.py", "wsgi.py"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+uncommitted:{hashlib.sha256(diff).hexdigest()[:8]}" if diff else head


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    return "\n".join(
        [line(header), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *map(line, rows)]
    )


@dataclass
class Verdict:
    requirement: str
    passed: bool
    detail: str


def evaluate(
    arguments: argparse.Namespace,
    direct: Mapping[str, Any],
    ceiling: Mapping[str, Any],
    throughput: CampaignRun,
    accuracy: Sequence[CampaignRun],
    memory: Sequence[CampaignRun],
) -> list[Verdict]:
    verdicts = [
        Verdict(
            f"Crier end to end >= {arguments.min_rate:,.0f} msg/s "
            f"({throughput.recipients:,} recipients, 1 process)",
            throughput.rate is not None and throughput.rate >= arguments.min_rate,
            f"{fmt(throughput.rate)} msg/s",
        ),
        Verdict(
            "baselines verified by the sandbox (every message once)",
            bool(direct["verified"] and ceiling["verified"]),
            f"direct {direct['verified']}, ceiling {ceiling['verified']}",
        ),
    ]
    for run in accuracy:
        allowed = allowed_in_window(run.page_rate)
        window_ok = run.max_in_1s is not None and run.max_in_1s <= allowed
        rate_ok = run.steady_rate is not None and run.steady_rate >= ACHIEVED_SHARE * run.page_rate
        verdicts.append(
            Verdict(
                f"{run.page_rate:g}/s with 2 processes: max in any 1 s <= {allowed}",
                window_ok,
                f"max {fmt(run.max_in_1s)}",
            )
        )
        verdicts.append(
            Verdict(
                f"{run.page_rate:g}/s with 2 processes: achieved >= {ACHIEVED_SHARE:.0%} of the rate",
                rate_ok,
                f"achieved {fmt(run.steady_rate, 1)}/s",
            )
        )
    peaks = [run.peak_mib for run in memory]
    for run in memory:
        verdicts.append(
            Verdict(
                f"worker peak RSS <= {MEMORY_LIMIT_MIB:.0f} MiB at {run.recipients:,} recipients",
                run.peak_mib is not None and run.peak_mib <= MEMORY_LIMIT_MIB,
                f"{fmt(run.peak_mib, 1)} MiB",
            )
        )
    if len(peaks) == 2 and None not in peaks:
        low, high = sorted(peak for peak in peaks if peak is not None)
        verdicts.append(
            Verdict(
                f"worker peak RSS nearly the same (within {MEMORY_SPREAD:.0%})",
                high <= low * (1 + MEMORY_SPREAD),
                f"{low:.1f} vs {high:.1f} MiB (+{(high / low - 1):.1%})",
            )
        )
    for run in [*accuracy, *memory]:
        verdicts.append(
            Verdict(
                f"{run.label}: every recipient sent exactly once, campaign completed",
                not run.problems,
                "; ".join(run.problems) or f"{run.accepted:,} accepted, 0 duplicates, sent == total",
            )
        )
    return verdicts


def report(
    arguments: argparse.Namespace,
    context: Mapping[str, Any],
    direct: Mapping[str, Any],
    ceiling: Mapping[str, Any],
    throughput: CampaignRun,
    accuracy: Sequence[CampaignRun],
    memory: Sequence[CampaignRun],
    verdicts: Sequence[Verdict],
) -> str:
    crier_rows = [run for run in memory if run is not throughput] + [throughput]
    speed = [
        [
            f"Crier, {run.recipients:,} recipients, 1 process x {arguments.threads} threads",
            f"{run.recipients:,}",
            fmt(run.seconds, 1),
            fmt(run.rate),
            str(run.duplicates),
            ratio(run.rate, direct["rate"]),
            ratio(run.rate, ceiling["rate"]),
            fmt(run.send_span_seconds, 1),
            fmt(run.start_command_seconds, 1),
        ]
        for run in crier_rows
    ]
    tried = ",".join(str(run["concurrency"]) for run in ceiling["runs"])
    speed += [
        [
            "(a) direct: batches of 50 in parallel + 100 ms pause",
            f"{direct['messages']:,}",
            fmt(direct["seconds"], 1),
            fmt(direct["rate"]),
            str(direct["duplicates"]),
            "1.00x",
            ratio(direct["rate"], ceiling["rate"]),
            "",
            "",
        ],
        [
            f"(b) ceiling: bare aiohttp, {ceiling['concurrency']} in flight (best of {tried})",
            f"{ceiling['messages']:,}",
            fmt(ceiling["seconds"], 1),
            fmt(ceiling["rate"]),
            str(ceiling["duplicates"]),
            ratio(ceiling["rate"], direct["rate"]),
            "1.00x",
            "",
            "",
        ],
    ]
    rates = [
        [
            f"{run.page_rate:g}/s",
            f"{run.recipients:,}",
            fmt(run.steady_rate, 1),
            fmt(run.recipients / run.send_span_seconds if run.send_span_seconds else None, 1),
            fmt(run.max_in_1s),
            fmt(run.max_in_1s_ledger),
            str(allowed_in_window(run.page_rate)),
            " / ".join(fmt(cpu, 1) for cpu in run.cpu_seconds),
            fmt(run.start_command_seconds, 1),
        ]
        for run in accuracy
    ]
    memory_rows = [
        [
            f"{run.recipients:,}",
            " / ".join(fmt(peak, 1) for worker in run.workers for peak in worker.process_peaks_mib.values()),
            " / ".join(fmt(worker.parent_peak_mib, 1) for worker in run.workers),
            fmt(run.peak_mib, 1),
            f"{MEMORY_LIMIT_MIB:.0f}",
        ]
        for run in memory
    ]
    parts = [
        f"## Campaign engine ({'quick' if arguments.quick else 'full'} run)",
        "",
        ", ".join(f"{key}: {value}" for key, value in context.items()),
        "",
        f"### Throughput (sandbox latency {arguments.latency_ms:g} ms, no rate limit)",
        "",
        "seconds: from `campaign start` returning to the campaign's `finished_at`; sending: first to last"
        " acceptance at the sandbox; start: how long `campaign start` took (it creates the deliveries).",
        "",
        table(
            [
                "run",
                "messages",
                "seconds",
                "msg/s",
                "duplicates",
                "vs direct",
                "vs ceiling",
                "sending s",
                "start s",
            ],
            speed,
        ),
        "",
        f"### Rate accuracy (2 worker processes x {arguments.threads} threads)",
        "",
        f"achieved: over the steady part (messages {STEADY[0]:.0%}-{STEADY[1]:.0%} by acceptance time);"
        " overall: all messages over first to last acceptance; max in any 1 s: the sandbox's count"
        " (and the same from the ledger's times).",
        "",
        table(
            [
                "target",
                "messages",
                "achieved msg/s",
                "overall msg/s",
                "max in any 1 s",
                "(ledger)",
                "allowed",
                "worker CPU s",
                "start s",
            ],
            rates,
        ),
        "",
        "### Worker peak resident memory (VmHWM in MiB, 1 worker process)",
        "",
        table(["recipients", "worker process", "dramatiq parent", "peak", "limit"], memory_rows),
        "",
        "### Requirements",
        "",
        table(
            ["requirement", "result", "figure"],
            [[v.requirement, "PASS" if v.passed else "FAIL", v.detail] for v in verdicts],
        ),
    ]
    notes = [
        line
        for run in [*accuracy, *memory]
        if run.log_problems
        for line in [f"{run.label}:", *(f"  {problem}" for problem in run.log_problems[:8])]
    ]
    if notes:
        parts += ["", "### Worker log warnings and errors", "", *(f"    {line}" for line in notes)]
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with small numbers")
    parser.add_argument("--recipients", type=int, help="throughput campaign (default 100,000; quick 10,000)")
    parser.add_argument(
        "--memory-recipients", type=int, help="the smaller memory campaign (default 10,000; quick 1,000)"
    )
    parser.add_argument("--rate-seconds", type=float, help="length of each rate test (default 15; quick 5)")
    parser.add_argument("--direct-messages", type=int, help="direct baseline (default 5,000; quick 1,000)")
    parser.add_argument("--ceiling-messages", type=int, help="each ceiling run (default 20,000; quick 5,000)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the sandbox's answer delay")
    parser.add_argument("--min-rate", type=float, default=1000.0, help="required end-to-end msg/s")
    parser.add_argument(
        "--timeout-factor", type=float, default=4.0, help="give up on a campaign after this x expected time"
    )
    parser.add_argument(
        "--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin URL"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--log-dir", type=Path, help="keep worker and sandbox logs and ledger times here (default: temp)"
    )
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    parser.add_argument(
        "--worker-verbose", action="store_true", help="run dramatiq with --verbose (debug logs in --log-dir)"
    )
    arguments = parser.parse_args(argv)
    quick = arguments.quick
    defaults = {
        "recipients": 10_000 if quick else 100_000,
        "memory_recipients": 1_000 if quick else 10_000,
        "rate_seconds": 5.0 if quick else 15.0,
        "direct_messages": 1_000 if quick else 5_000,
        "ceiling_messages": 5_000 if quick else 20_000,
    }
    for name, value in defaults.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_bench(parse(argv))
    except BenchError as exc:
        print(f"\nThe bench could not run: {exc}", file=sys.stderr)
        return 2


def run_bench(arguments: argparse.Namespace) -> int:
    """Every phase, then the report; the exit status."""
    sys.path[:0] = [str(PROJECT_ROOT), str(BENCH_DIR)]
    from send_baselines import run_ceiling, run_direct

    from tasks.sandbox import SandboxProcess

    with contextlib.ExitStack() as stack:
        if arguments.log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crier-bench-")))
        else:
            log_dir = arguments.log_dir.resolve()
            log_dir.mkdir(parents=True, exist_ok=True)
        sandbox = stack.enter_context(
            SandboxProcess(latency_ms=arguments.latency_ms, callbacks=False, log=log_dir / "sandbox.log")
        )
        bench = Bench(arguments, sandbox.url, sandbox.smtp_port, log_dir)
        stack.callback(bench.sandbox.close)
        context: dict[str, Any] = {
            "cores": os.cpu_count(),
            "load at start": " ".join(f"{load:.1f}" for load in os.getloadavg()),
            "database": bench.database,
            "code": code_version(),
        }
        note(f"campaign engine bench: database {bench.database}, sandbox {sandbox.url}, logs {log_dir}")
        bench.create_database()
        stack.callback(bench.clean_redis)
        stack.callback(bench.drop_database)
        started = time.monotonic()
        config = bench.sandbox_config

        note(f"baseline (a) direct, {arguments.direct_messages:,} messages")
        direct = run_direct(sandbox.url, arguments.direct_messages, config=config)
        note(f"baseline (b) ceiling, {arguments.ceiling_messages:,} messages per concurrency")
        ceiling = run_ceiling(sandbox.url, arguments.ceiling_messages, config=config)

        accuracy = []
        for rate in RATE_TESTS:
            recipients = max(1, round(rate * arguments.rate_seconds))
            note(f"rate accuracy at {rate}/s: {recipients:,} recipients, 2 worker processes")
            accuracy.append(bench.run_campaign(f"rate {rate}/s", recipients, rate, commands=2))

        memory = []
        if arguments.memory_recipients != arguments.recipients:
            note(f"memory: {arguments.memory_recipients:,} recipients, 1 worker process")
            memory.append(
                bench.run_campaign(
                    f"{arguments.memory_recipients:,} recipients", arguments.memory_recipients, NO_LIMIT, 1
                )
            )
        note(f"throughput: {arguments.recipients:,} recipients, 1 worker process")
        throughput = bench.run_campaign(
            f"{arguments.recipients:,} recipients", arguments.recipients, NO_LIMIT, 1
        )
        memory.append(throughput)

        context["load at end"] = " ".join(f"{load:.1f}" for load in os.getloadavg())
        if code_version() != context["code"]:
            context["code"] += f" -> {code_version()} (THE ENGINE CHANGED DURING THE RUN)"
        context["bench seconds"] = round(time.monotonic() - started)
        verdicts = evaluate(arguments, direct, ceiling, throughput, accuracy, memory)
        print(report(arguments, context, direct, ceiling, throughput, accuracy, memory, verdicts))
        if arguments.json:
            figures = {
                "context": context,
                "direct": direct,
                "ceiling": ceiling,
                "campaigns": [asdict(run) for run in [*accuracy, *memory]],
                "verdicts": [asdict(verdict) for verdict in verdicts],
            }
            print(json.dumps(figures, indent=2, default=str))
        failed = [verdict for verdict in verdicts if not verdict.passed]
        if failed:
            print("\nFAILED:", file=sys.stderr)
            for verdict in failed:
                print(f"  - {verdict.requirement}: {verdict.detail}", file=sys.stderr)
            return 1
        print("\nAll requirements met.")
        return 0
    raise AssertionError("unreachable")


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)  # clean up (workers, sandbox, database) when stopped
    sys.exit(main())
