"""Driving the campaign engine with real processes: workers, the sandbox, PostgreSQL and Redis.

Each :class:`EngineRun` has its own Redis prefix, so its workers consume only its queues.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import ExitStack, suppress
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tenants.accounts import sign_up
from tenants.campaigns import Campaign, Delivery, apply_campaign_form, summary
from tenants.db import db
from tenants.demo import _demo_list
from tenants.models import Tenant
from tenants.pages import DeliveryPolicy, Page, ProviderKind, apply_form
from tenants.scoping import tenant
from tests.conftest import _start, _stop, _wait_until, built_app

ENGINE_SETTINGS = {
    "CRIER_SWEEP_SECONDS": "0.5",
    "CRIER_LEASE_SECONDS": "6",
    "CRIER_STALE_DISPATCH_SECONDS": "5",
    "CRIER_RETRY_BASE_SECONDS": "0.2",
    "CRIER_DISPATCH_SLICE_SECONDS": "1",
}


class EngineRun:
    """One test's engine: an in-process app to set things up, and worker processes to send."""

    def __init__(self, sandbox, redis_url: str | None = None, **settings: str):
        self.sandbox = sandbox
        self.prefix = f"{os.environ['REDIS_PREFIX']}-engine-{secrets.token_hex(3)}"
        self.env = {**ENGINE_SETTINGS, **settings, "REDIS_PREFIX": self.prefix}
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.stack = ExitStack()
        config = {"REDIS_PREFIX": self.prefix}
        if redis_url:
            config["REDIS_URL"] = redis_url
        self.app = self.stack.enter_context(built_app(**config))
        self.context = self.app.app_context()
        self.context.push()
        self.workers: list[subprocess.Popen] = []
        self.logs: list = []

    def close(self) -> None:
        for process in self.workers:
            _stop(process)
        db.session.remove()
        self.context.pop()
        self.stack.close()

    # ---- processes

    def worker(self, name: str = "engine-worker", threads: int = 4) -> subprocess.Popen:
        args = [
            sys.executable,
            "-m",
            "dramatiq",
            "worker:broker",
            "--processes",
            "1",
            "--threads",
            str(threads),
        ]
        process, log = _start(f"{self.prefix[-6:]}-{name}-{len(self.workers)}", args, self.env)
        self.logs.append(log)
        _wait_until(lambda: "ready for action" in log.read_text(), 60, name, process, log)
        self.workers.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """kill -9 the worker and its forked worker processes (no chance to clean up)."""
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in [process.pid, *map(int, children)]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)

    # ---- data

    def setup(
        self,
        contacts: int,
        rate: float = 1000,
        policy: DeliveryPolicy = DeliveryPolicy.AT_MOST_ONCE,
        quota: int = 1_000_000,
        tenant_rate: int = 100_000,
        email: str = "owner@engine.example",
    ) -> tuple[int, int, int]:
        """A tenant with a WhatsApp page on the sandbox and ``contacts`` contacts in a list."""
        owner, workspace = sign_up(email, "correct horse battery", "Engine Co")
        owner.email_verified_at = owner.created_at  # may send beyond a test audience
        workspace.daily_message_quota = quota
        workspace.max_send_rate = tenant_rate
        workspace.max_recipients_per_campaign = max(contacts, 100_000)
        tenant_id = workspace.id
        db.session.commit()
        with tenant(db.session, tenant_id):
            page = apply_form(
                Page(kind=ProviderKind.WHATSAPP),
                name="Engine WhatsApp",
                base_url=self.sandbox.url,
                send_rate=rate,
                daily_cap=None,
                credentials={
                    "access_token": "engine-token-123",
                    "app_secret": "engine-secret",
                    "verify_token": "vt",
                },
                settings={"phone_number_id": f"1{secrets.randbelow(10**14):014d}", "waba_id": "2"},
                delivery_policy=policy,
            )
            db.session.add(page)
            db.session.flush()
            contact_list = _demo_list(contacts)
            db.session.commit()
            return tenant_id, page.id, contact_list.id

    def account(self, page_id: int, tenant_id: int) -> str:
        with tenant(db.session, tenant_id):
            return db.session.get(Page, page_id).settings["phone_number_id"]

    def campaign(
        self, tenant_id: int, page_id: int, list_id: int, text: str = "Hi {{first_name}}", **fields
    ) -> int:
        with tenant(db.session, tenant_id):
            workspace = db.session.get(Tenant, tenant_id)
            campaign = apply_campaign_form(
                Campaign(),
                {"name": "Engine test", "page_id": page_id, "list_ids": [list_id], "body": text, **fields},
                workspace,
            )
            db.session.add(campaign)
            db.session.commit()
            return campaign.id

    def start(self, tenant_id: int, campaign_id: int) -> None:
        """Start the campaign as the campaign page's button does (tasks.lifecycle)."""
        from tasks import lifecycle

        with tenant(db.session, tenant_id):
            campaign = db.session.get(Campaign, campaign_id)
            started = lifecycle.start_campaign(campaign)
            assert started.running and started.problem is None

    def act(self, tenant_id: int, campaign_id: int, action: str) -> Any:
        """Pause, resume, cancel or resend as the campaign page's buttons do (tasks.lifecycle)."""
        from tasks import lifecycle

        do = {
            "pause": lambda campaign: lifecycle.pause_campaign(campaign, by_user_id=None),
            "resume": lifecycle.resume_campaign,
            "cancel": lifecycle.cancel_campaign,
            "resend": lifecycle.resend_campaign,
        }[action]
        with tenant(db.session, tenant_id):
            return do(db.session.get(Campaign, campaign_id))

    def status(self, tenant_id: int, campaign_id: int) -> dict[str, Any]:
        with tenant(db.session, tenant_id):
            campaign = db.session.get(Campaign, campaign_id)
            db.session.refresh(campaign)
            data = summary(campaign)
            db.session.commit()
            return data

    def wait(
        self, tenant_id: int, campaign_id: int, states: Iterable[str] = ("completed",), timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        data = self.status(tenant_id, campaign_id)
        while data["state"] not in states:
            if time.monotonic() > deadline:
                logs = "\n".join(
                    line
                    for log in self.logs
                    for line in log.read_text().splitlines()
                    if "alembic" not in line and "[INFO]" not in line
                )[-5000:]
                pytest.fail(f"campaign {campaign_id} still {data} after {timeout}s\n{logs}")
            time.sleep(0.2)
            data = self.status(tenant_id, campaign_id)
        return data

    def wait_for(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not happen within {timeout}s")
            time.sleep(0.05)

    def deliveries(self, tenant_id: int, campaign_id: int) -> list[Delivery]:
        with tenant(db.session, tenant_id):
            rows = db.session.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id)).all()
            db.session.expunge_all()
            db.session.commit()
            return list(rows)

    def states(self, tenant_id: int, campaign_id: int) -> dict[str, int]:
        with tenant(db.session, tenant_id):
            rows = db.session.execute(
                select(Delivery.state, func.count())
                .where(Delivery.campaign_id == campaign_id)
                .group_by(Delivery.state)
            ).all()
            db.session.commit()
            return {state.value: count for state, count in rows}

    # ---- the sandbox

    def configure(self, **config: Any) -> None:
        httpx.put(f"{self.sandbox.url}/_sandbox/config", json=config, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.sandbox.url}/_sandbox/stats", timeout=5).json()

    def ledger(self) -> list[dict[str, Any]]:
        entries, after = [], 0
        while True:
            page = httpx.get(
                f"{self.sandbox.url}/_sandbox/ledger", params={"after": after, "limit": 5000}, timeout=10
            )
            data = page.json()
            batch = data["entries"] if isinstance(data, dict) else data
            if not batch:
                return entries
            entries.extend(batch)
            after = batch[-1]["seq"]


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most entries in any sliding window of ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
