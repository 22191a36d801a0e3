"""Crier's own mail: the configured server, the sandbox sink by default, absolute links, failures
that say so instead of breaking, and `flask crier mail` for a developer's inbox."""

from __future__ import annotations

import httpx
import pytest

from tenants.mail import MailConfigError, MailServer, mail_server, parse_mail_url
from tests.conftest import Auth, built_app, free_port


def _text(response) -> str:
    return response.get_data(as_text=True)


def test_mail_urls_name_the_server_its_login_and_its_security():
    assert parse_mail_url("smtp+tls://me%40acme.example:p%2Fss@mail.acme.example") == MailServer(
        "mail.acme.example", 587, "me@acme.example", "p/ss", "starttls"
    )
    assert parse_mail_url("smtps://mail.acme.example").port == 465
    assert parse_mail_url("smtp://127.0.0.1:2525").security == "plain"
    with pytest.raises(MailConfigError, match="must look like smtp://"):
        parse_mail_url("http://mail.acme.example")


def test_without_a_mail_url_mail_goes_to_the_sandbox_sink_except_in_production():
    sink = mail_server({"MAIL_URL": "", "CRIER_ENV": "development", "SANDBOX_SMTP_PORT": 8026})
    assert (sink.host, sink.port) == ("127.0.0.1", 8026)
    assert mail_server({"MAIL_URL": "", "CRIER_ENV": "production", "SANDBOX_SMTP_PORT": 8026}) is None


def test_by_default_sign_up_mail_reaches_the_sandbox_and_flask_crier_mail_shows_its_link(sandbox):
    with built_app(MAIL_URL="", PUBLIC_URL="https://crier.acme.example/") as app:
        Auth(app.test_client()).signup(verified=False)
        entries = httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=5).json()["entries"]
        assert [(e["kind"], e["account"], e["recipient"]) for e in entries] == [
            ("smtp", "crier", "owner@acme.example")
        ]
        assert entries[0]["body"].startswith("Verify your email address for Crier\n")
        assert "https://crier.acme.example/verify-email/" in entries[0]["body"]  # absolute, on PUBLIC_URL

        shown = app.test_cli_runner().invoke(args=["crier", "mail"])

    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].endswith("to owner@acme.example: Verify your email address for Crier")
    assert lines[1].strip().startswith("https://crier.acme.example/verify-email/")


def test_links_use_the_requests_host_without_a_public_url(app, auth, mailbox):
    auth.signup(verified=False)
    link = mailbox.link("owner@acme.example", "/verify-email/")
    assert link.startswith("http://localhost/verify-email/")


def test_flask_crier_mail_says_when_there_is_nothing_or_no_sandbox(sandbox):
    with built_app(MAIL_URL="") as app:
        runner = app.test_cli_runner()
        assert "No mail in the sandbox" in runner.invoke(args=["crier", "mail"]).output
        dead = runner.invoke(args=["crier", "mail", "--sandbox-url", f"http://127.0.0.1:{free_port()}"])
    assert dead.exit_code == 1 and "Could not read the sandbox" in dead.output


def test_sign_up_works_and_says_so_when_the_mail_server_is_down():
    with built_app(MAIL_URL=f"smtp://crier:x@127.0.0.1:{free_port()}") as app:
        client = app.test_client()
        signed_up = Auth(client).signup(verified=False)
        assert signed_up.status_code == 302
        dashboard = _text(client.get("/dashboard"))
    assert "We could not send the email that verifies your address." in dashboard
    assert "Resend the link" in dashboard
