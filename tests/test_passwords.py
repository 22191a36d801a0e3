"""Changing a password (signed in) and resetting a forgotten one by email."""

from __future__ import annotations

import re
import time

from itsdangerous import TimestampSigner

from tenants.accounts import FAILURES_PER_ACCOUNT_AND_ADDRESS
from tests.conftest import PASSWORD, Auth, csrf_token

NEW_PASSWORD = "a brand new passphrase"


def _text(response) -> str:
    return response.get_data(as_text=True)


def _page(response, email: str) -> str:
    """The page with the address and the CSRF tokens (signed with the time) left out."""
    return re.sub(r'(content|value)="[^"]*"', "", _text(response).replace(email, "X"))


def _post_form(client, path: str, data: dict):
    return client.post(path, data={"csrf_token": csrf_token(_text(client.get(path))), **data})


def test_changing_the_password_ends_every_other_session_and_keeps_this_one(auth, client, other_client):
    auth.signup()
    Auth(other_client).login()
    assert other_client.get("/dashboard").status_code == 200

    wrong = _post_form(
        client, "/account", {"current_password": "not it at all", "new_password": NEW_PASSWORD}
    )
    assert wrong.status_code == 400 and "Your current password is not right." in _text(wrong)
    short = _post_form(client, "/account", {"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 400 and "Passwords need at least 10 characters." in _text(short)

    changed = _post_form(client, "/account", {"current_password": PASSWORD, "new_password": NEW_PASSWORD})

    assert changed.status_code == 302
    assert "Password changed." in _text(client.get("/account"))
    assert client.get("/dashboard").status_code == 200  # still signed in here
    assert other_client.get("/dashboard").headers["Location"].startswith("/login")  # not there
    stranger = Auth(other_client.application.test_client())
    assert stranger.login(password=PASSWORD).status_code == 401
    assert stranger.login(password=NEW_PASSWORD).status_code == 302


def test_guessing_the_current_password_is_throttled_like_signing_in(auth, client):
    """A stolen session must not become an unlimited password oracle."""
    auth.signup()
    for _ in range(FAILURES_PER_ACCOUNT_AND_ADDRESS):
        guess = _post_form(
            client, "/account", {"current_password": "a wrong guess!", "new_password": NEW_PASSWORD}
        )
        assert guess.status_code == 400
    blocked = _post_form(client, "/account", {"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert blocked.status_code == 429 and "Too many failed sign-in attempts" in _text(blocked)


def test_forgot_password_answers_the_same_whether_or_not_the_address_has_an_account(app, auth, mailbox):
    auth.signup()
    auth.logout()
    visitor = app.test_client()

    known = _post_form(visitor, "/password/forgot", {"email": "Owner@Acme.example"})
    unknown = _post_form(visitor, "/password/forgot", {"email": "nobody@acme.example"})

    assert known.status_code == unknown.status_code == 200
    said = "we have sent it a link to choose a new password. The link works for 30 minutes."
    assert said in _text(known) and said in _text(unknown)
    assert _page(known, "owner@acme.example") == _page(unknown, "nobody@acme.example")
    assert mailbox.wait_for("owner@acme.example", 2)[-1]["subject"] == "Choose a new Crier password"
    time.sleep(0.5)
    assert mailbox.messages("nobody@acme.example") == []


def test_a_reset_link_sets_a_new_password_signs_in_ends_other_sessions_and_works_once(
    app, auth, client, mailbox
):
    auth.signup()
    old_session = app.test_client()
    Auth(old_session).login()
    visitor = app.test_client()
    _post_form(visitor, "/password/forgot", {"email": "owner@acme.example"})
    link = mailbox.link("owner@acme.example", "/password/reset/", count=2)

    page = visitor.get(link)
    assert page.status_code == 200 and "Choose a new password" in _text(page)
    done = visitor.post(link, data={"csrf_token": csrf_token(_text(page)), "password": NEW_PASSWORD})

    assert done.status_code == 302 and done.headers["Location"] == "/dashboard"
    assert "Your new password is set and you are signed in." in _text(visitor.get("/dashboard"))
    assert old_session.get("/dashboard").headers["Location"].startswith("/login")
    assert client.get("/dashboard").headers["Location"].startswith("/login")
    again = app.test_client().get(link)
    assert again.status_code == 410 and "expired or was already used" in _text(again)
    fresh = Auth(app.test_client())
    assert fresh.login(password=PASSWORD).status_code == 401
    assert fresh.login(password=NEW_PASSWORD).status_code == 302


def test_a_reset_link_older_than_30_minutes_is_refused(app, auth, mailbox, monkeypatch):
    auth.signup()
    visitor = app.test_client()
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) - 31 * 60)
    _post_form(visitor, "/password/forgot", {"email": "owner@acme.example"})
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    link = mailbox.link("owner@acme.example", "/password/reset/", count=2)

    expired = visitor.get(link)

    assert expired.status_code == 410 and "Ask for a new link" in _text(expired)
    assert visitor.get(link.replace("/reset/", "/reset/x")).status_code == 410  # forged


def test_reset_emails_to_one_address_are_throttled(app, auth, mailbox):
    auth.signup()
    visitor = app.test_client()
    answers = [_post_form(visitor, "/password/forgot", {"email": "owner@acme.example"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    time.sleep(1)
    resets = [
        m for m in mailbox.messages("owner@acme.example") if m["subject"] == "Choose a new Crier password"
    ]
    assert len(resets) == 1


def test_the_sign_in_page_links_to_the_reset(client):
    assert 'href="/password/forgot"' in _text(client.get("/login"))
