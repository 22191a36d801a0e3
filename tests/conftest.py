"""Fixtures: a fresh PostgreSQL database and Redis prefix per run, an app, users, and real processes.

Defaults are the local services; override with CRIER_TEST_POSTGRES (an admin URL) and
CRIER_TEST_REDIS.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from flask import Flask

from tasks.sandbox.process import SandboxProcess, free_port

pytest_plugins = ["tests.browsers"]  # the Chromium fixtures of the browser tests

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CRIER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CRIER_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = secrets.token_hex(4)
DATABASE_NAME = f"crier_test_{RUN_ID}"
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
PASSWORD = "correct horse battery"
SANDBOX_PORT, SANDBOX_SMTP_PORT = free_port(), free_port()
# Crier's own mail goes to a sandbox of its own in tests, so provider ledgers count only campaign sends
MAILBOX_PORT, MAILBOX_SMTP_PORT = free_port(), free_port()
LINK = re.compile(r"https?://[^\s<>\"]+")
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def _database_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def pytest_configure(config: pytest.Config) -> None:
    """Point every process of this run at its own database and Redis prefix, before the app is imported."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    os.environ.update(
        CRIER_ENV="test",
        DATABASE_URL=_database_url(DATABASE_NAME),
        REDIS_URL=REDIS_URL,
        REDIS_PREFIX=f"crier-test-{RUN_ID}",
        SECRET_KEY=secrets.token_hex(32),
        CRIER_INSTANCE_PATH=tempfile.mkdtemp(prefix="crier-instance-"),
        CRIER_SANDBOX_URL=f"http://127.0.0.1:{SANDBOX_PORT}",
        CRIER_SANDBOX_SMTP_PORT=str(SANDBOX_SMTP_PORT),
        CRIER_MAIL_URL=f"smtp://crier:mailbox@127.0.0.1:{MAILBOX_SMTP_PORT}",
    )
    from flask_migrate import upgrade

    from webapp import create_app

    with create_app().app_context():
        from tenants.db import db

        upgrade()
        db.engine.dispose()


def pytest_unconfigure(config: pytest.Config) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}" WITH (FORCE)')
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"crier-test-{RUN_ID}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Let fixtures see whether the test body failed (``request.node.failed``)."""
    report = yield
    if report.when == "call":
        item.failed = report.failed
    return report


@contextmanager
def built_app(**config) -> Iterator[Flask]:
    """An app for this run's database, its connections closed afterwards."""
    from tenants.db import db
    from webapp import create_app

    # In-process apps enqueue under their own prefix: the session's real worker must not race the test.
    prefix = f"{os.environ['REDIS_PREFIX']}-inproc"
    app = create_app({"TESTING": True, "REDIS_PREFIX": prefix, **config})
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app() -> Iterator[Flask]:
    with built_app() as app:
        yield app


@pytest.fixture(autouse=True)
def _clean_database() -> Iterator[None]:
    """Every test starts from empty tables, whichever processes wrote to them.

    A worker's sweeper may be reading several tables in one transaction meanwhile; when PostgreSQL
    breaks the resulting deadlock against the TRUNCATE, the TRUNCATE is simply run again.
    """
    yield
    from tenants.db import db

    tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        for attempt in range(5):
            try:
                conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
                return
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
                time.sleep(0.2)


@pytest.fixture(autouse=True)
def _forget_mail_throttles() -> Iterator[None]:
    """Each test may email an address again at once (webapp.account counts emails per address in Redis)."""
    yield
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"crier-test-{RUN_ID}*:throttle:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def csrf_token(html: str) -> str:
    found = CSRF_META.search(html) or CSRF_INPUT.search(html)
    assert found, "page has no CSRF token"
    return found.group(1)


def mark_verified(email: str) -> None:
    """Count ``email``'s account as verified, as if its owner had opened the emailed link."""
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("UPDATE users SET email_verified_at = now() WHERE email = %s", (email.strip().lower(),))


class Auth:
    """What a person does at the door: sign up, sign in, sign out."""

    def __init__(self, client):
        self.client = client

    def token(self, path: str = "/login") -> str:
        return csrf_token(self.client.get(path).get_data(as_text=True))

    def signup(
        self,
        email="owner@acme.example",
        workspace="Acme",
        password=PASSWORD,
        timezone="UTC",
        verified=True,
        **kw,
    ):
        """Sign up; ``verified``: then count the address as verified (most tests send campaigns to more
        than a test audience; tests of verification itself pass False)."""
        data = {
            "csrf_token": self.token("/signup"),
            "email": email,
            "workspace_name": workspace,
            "password": password,
            "timezone": timezone,
        }
        response = self.client.post("/signup", data=data, **kw)
        if verified:
            mark_verified(email)
        return response

    def login(self, email="owner@acme.example", password=PASSWORD, **kw):
        data = {"csrf_token": self.token("/login"), "email": email, "password": password}
        return self.client.post("/login", data=data, **kw)

    def logout(self):
        return self.client.post("/logout", data={"csrf_token": self.token("/dashboard")})

    def post(self, path: str, data: dict | None = None, **kw):
        """POST as the signed-in user, with the CSRF token a page would carry."""
        return self.client.post(path, data={"csrf_token": self.token("/dashboard"), **(data or {})}, **kw)


@pytest.fixture
def auth(client) -> Auth:
    return Auth(client)


class ApiClient:
    """A system using the API: every request carries its Bearer token, and no cookie."""

    def __init__(self, app: Flask, secret: str, tenant_id: int) -> None:
        self.client = app.test_client(use_cookies=False)
        self.secret, self.tenant_id = secret, tenant_id

    def request(self, method: str, path: str, headers: dict | None = None, **kw):
        headers = {"Authorization": f"Bearer {self.secret}", **(headers or {})}
        return self.client.open(path, method=method, headers=headers, **kw)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw):
        return self.request("PATCH", path, **kw)

    def put(self, path: str, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)


@pytest.fixture
def api(app, auth) -> ApiClient:
    """Acme's owner signed up (in ``client``) and an admin-scoped API token of Acme."""
    from tests.factories import api_token_for, tenant_named

    auth.signup()
    with app.app_context():
        tenant_id = tenant_named("Acme").id
    return ApiClient(app, api_token_for(app, tenant_id), tenant_id)


@pytest.fixture
def other_client(app):
    """A second browser, for a second user."""
    return app.test_client()


def _wait_until(check, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not start within {timeout}s:\n{log.read_text()[-3000:]}")


def _start(name: str, args: list[str], env_extra: dict | None = None) -> tuple[subprocess.Popen, Path]:
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"{name}.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env_extra or {})},
            start_new_session=True,  # its own process group: _stop can reach the children it forks
        )
    return process, log


def _stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then after ``timeout`` seconds SIGKILL to the whole process group (no orphans)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def web_server(name: str = "web", env_extra: dict | None = None) -> Iterator[str]:
    """A real web process (Flask + Socket.IO) on a free port, once it answers; yields its base URL."""
    port = free_port()
    flask = str(Path(sys.executable).with_name("flask"))
    process, log = _start(name, [flask, "--app", "wsgi", "crier", "serve", "--port", str(port)], env_extra)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_until(healthy, 30, "the web server", process, log)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def live_server() -> Iterator[str]:
    """The real web process on a free port; yields its base URL."""
    with web_server() as url:
        yield url


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[SandboxProcess]:
    """Crier's sandbox provider on the ports this run's app is configured with."""
    ARTIFACTS.mkdir(exist_ok=True)
    with SandboxProcess(SANDBOX_PORT, SANDBOX_SMTP_PORT, log=ARTIFACTS / "sandbox.log") as process:
        yield process


@pytest.fixture
def sandbox(sandbox_process) -> SandboxProcess:
    """The sandbox with an empty ledger, no subscriptions and its start-up behaviour."""
    httpx.post(f"{sandbox_process.url}/_sandbox/reset", timeout=5).raise_for_status()
    return sandbox_process


class Mailbox:
    """The SMTP sink Crier's own mail goes to in tests: what arrived, and the links in it."""

    def __init__(self, process: SandboxProcess) -> None:
        self.url = process.url

    def messages(self, to: str | None = None) -> list[dict[str, str]]:
        """Every email received (to ``to`` only, when given), oldest first: to, subject, text."""
        entries = httpx.get(f"{self.url}/_sandbox/ledger", params={"limit": 10_000}, timeout=5).json()[
            "entries"
        ]
        found = []
        for entry in entries:
            subject, _, text = entry["body"].partition("\n")
            if to is None or entry["recipient"] == to:
                found.append({"to": entry["recipient"], "subject": subject, "text": text})
        return found

    def wait_for(self, to: str, count: int = 1, timeout: float = 10) -> list[dict[str, str]]:
        """The emails to ``to`` once there are at least ``count`` of them (some leave from a thread)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(to)
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"{count} email(s) to {to} expected, {len(found)} arrived"
                return found
            time.sleep(0.05)

    def link(self, to: str, part: str, count: int = 1) -> str:
        """The link containing ``part`` in the latest email to ``to`` (waiting for ``count`` emails)."""
        latest = self.wait_for(to, count)[-1]
        links = [link for link in LINK.findall(latest["text"]) if part in link]
        assert links, f"no link with {part!r} in the email to {to}: {latest['text']!r}"
        return links[0]


def invite_and_join(owner: Auth, invitee: Auth, mailbox: Mailbox, email: str, role: str = "member"):
    """The owner invites ``email``; the invitee, signed in, opens the emailed link and joins."""
    owner.post("/members", {"email": email, "role": role})
    link = mailbox.link(email, "/invitations/")
    page = invitee.client.get(link)
    assert page.status_code == 200, page.get_data(as_text=True)
    return invitee.client.post(link, data={"csrf_token": csrf_token(page.get_data(as_text=True))})


@pytest.fixture(scope="session")
def mailbox_process() -> Iterator[SandboxProcess]:
    ARTIFACTS.mkdir(exist_ok=True)
    with SandboxProcess(MAILBOX_PORT, MAILBOX_SMTP_PORT, log=ARTIFACTS / "mailbox.log") as process:
        yield process


@pytest.fixture
def mailbox(mailbox_process) -> Mailbox:
    """Crier's outgoing mail, empty at the start of the test."""
    httpx.post(f"{mailbox_process.url}/_sandbox/reset", timeout=5).raise_for_status()
    return Mailbox(mailbox_process)


@pytest.fixture(scope="session")
def worker_process() -> Iterator[subprocess.Popen]:
    """A real `dramatiq worker` process consuming this run's queues."""
    process, log = _start(
        "worker", [sys.executable, "-m", "dramatiq", "worker:broker", "--processes", "1", "--threads", "2"]
    )
    _wait_until(lambda: "ready for action" in log.read_text(), 60, "the worker", process, log)
    yield process
    _stop(process)
