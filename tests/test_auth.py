"""Sign-up, sign-in, sign-out as a person experiences them."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tenants.db import db
from tenants.models import Membership, Role, Tenant, User
from tenants.scoping import all_tenants
from tests.conftest import PASSWORD


def test_signup_creates_workspace_and_owner_and_signs_in(app, auth, client):
    response = auth.signup(email="  Owner@Acme.EXAMPLE ", workspace="Acme Café", timezone="America/Sao_Paulo")
    assert response.status_code == 302 and response.headers["Location"].endswith("/dashboard")

    page = client.get("/dashboard").get_data(as_text=True)
    assert "Acme Café" in page and "owner@acme.example" in page and "America/Sao_Paulo" in page
    with app.app_context(), all_tenants(db.session):
        user = db.session.scalar(select(User))
        tenant = db.session.scalar(select(Tenant))
        membership = db.session.scalar(select(Membership))
    assert user.email == "owner@acme.example"
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    assert (tenant.slug, tenant.timezone) == ("acme-cafe", "America/Sao_Paulo")
    assert (membership.user_id, membership.tenant_id, membership.role) == (user.id, tenant.id, Role.OWNER)


def test_signup_refuses_taken_email_bad_email_and_short_password(auth, other_client):
    auth.signup()
    from tests.conftest import Auth

    stranger = Auth(other_client)
    taken = stranger.signup(email="OWNER@ACME.example").get_data(as_text=True)
    assert "already exists" in taken
    bad = stranger.signup(email="not-an-email")
    assert bad.status_code == 400 and "email address" in bad.get_data(as_text=True)
    short = stranger.signup(email="new@acme.example", password="short")
    assert short.status_code == 400 and "at least 10" in short.get_data(as_text=True)
    unknown_zone = stranger.signup(email="new@acme.example", timezone="Mars/Olympus")
    assert unknown_zone.status_code == 400


def test_login_and_logout(auth, client):
    auth.signup()
    auth.logout()
    assert client.get("/dashboard").status_code == 302
    response = auth.login(email="OWNER@ACME.example")
    assert response.status_code == 302
    assert "Acme" in client.get("/dashboard").get_data(as_text=True)


def test_wrong_password_gets_a_message_not_the_dashboard(auth, client):
    auth.signup()
    auth.logout()
    response = auth.login(password="wrong password!")
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    assert client.get("/dashboard").status_code == 302


def test_login_starts_a_new_session(auth, client):
    auth.signup()
    auth.logout()
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
    auth.login()
    with client.session_transaction() as session:
        assert "planted" not in session
        assert session["_user_id"]


def test_session_cookie_is_httponly_and_samesite_lax(auth):
    response = auth.signup()
    cookie = next(v for v in response.headers.getlist("Set-Cookie") if v.startswith("session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_forms_without_csrf_token_are_refused(auth, client):
    response = client.post(
        "/signup", data={"email": "a@b.example", "workspace_name": "X", "password": PASSWORD}
    )
    assert response.status_code == 400
    assert "Reload the page and try again" in response.get_data(as_text=True)
    auth.signup()
    assert client.post("/logout").status_code == 400
    assert client.get("/dashboard").status_code == 200  # still signed in


def test_user_input_is_escaped(auth, client):
    auth.signup(workspace="<script>alert(1)</script>")
    page = client.get("/dashboard").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_next_parameter_only_redirects_inside_crier(auth, client):
    auth.signup()
    auth.logout()
    data = {"csrf_token": auth.token(), "email": "owner@acme.example", "password": PASSWORD}
    assert client.post("/login?next=//evil.test/x", data=data).headers["Location"] == "/dashboard"
    auth.logout()
    data["csrf_token"] = auth.token()
    assert client.post("/login?next=/members", data=data).headers["Location"] == "/members"


@pytest.mark.parametrize(
    "target",
    [
        "/%09/evil.example",
        "/%0a/x",
        "/%0d%0a/evil.example",
        "/ /evil.example",
        "/\\evil.example",
        "https://evil.example",
    ],
)
def test_next_with_control_characters_or_a_host_goes_to_the_dashboard(auth, client, target):
    """A tab or a newline is dropped by browsers (``/\\t/evil`` is ``//evil``): such targets are refused."""
    auth.signup()
    auth.logout()
    data = {"csrf_token": auth.token(), "email": "owner@acme.example", "password": PASSWORD}
    response = client.post(f"/login?next={target}", data=data)
    assert (response.status_code, response.headers["Location"]) == (302, "/dashboard")
