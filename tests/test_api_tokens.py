"""The API tokens page: owners and admins create a token (its secret shown once, kept only as a
digest), see when and from where it was used, and revoke it; members may not."""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime

import psycopg
from sqlalchemy import select

from tenants.api_tokens import ApiToken
from tenants.db import db
from tenants.scoping import all_tenants, tenant
from tests.conftest import ApiClient, Auth
from tests.factories import make_membership, tenant_named

SECRET = re.compile(r'value="(crier_[A-Za-z0-9_-]+)"')
PAGE = "/settings/api-tokens"


def _create(auth: Auth, **fields):
    return auth.post(PAGE, {"name": "Shop CRM", "scopes": ["read", "contacts:write"], **fields})


def _secret_of(response) -> str:
    found = SECRET.findall(response.get_data(as_text=True))
    assert len(found) == 1, "the new token is shown once on the page"
    return found[0]


def _token(app, name: str = "Shop CRM") -> ApiToken:
    with app.app_context(), all_tenants(db.session):
        token = db.session.scalar(select(ApiToken).where(ApiToken.name == name))
        db.session.expunge(token)
        return token


def _everything_stored() -> str:
    """Every row of the tables a token's secret could have leaked into, as text."""
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT row_to_json(t)::text FROM api_tokens t "
            "UNION ALL SELECT row_to_json(a)::text FROM audit_log a"
        ).fetchall()
    return "\n".join(row[0] for row in rows)


def test_a_created_token_is_shown_once_works_and_is_stored_only_as_a_digest(app, auth, client):
    auth.signup()
    created = _create(auth)
    assert created.status_code == 201
    secret = _secret_of(created)
    page = created.get_data(as_text=True)
    assert "the only time Crier shows it" in page
    assert f"{secret[:12]}…" in page  # listed by its first characters

    assert secret not in _everything_stored()
    token = _token(app)
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert sorted(token.scopes) == ["contacts:write", "read"]

    with app.app_context():
        tenant_id = tenant_named("Acme").id
    system = ApiClient(app, secret, tenant_id)
    assert system.get("/api/v1/pages", environ_base={"REMOTE_ADDR": "198.51.100.23"}).status_code == 200

    listed = client.get(PAGE).get_data(as_text=True)
    assert secret not in listed, "the secret is never shown again"
    assert "from 198.51.100.23" in listed  # last use: when and from where
    assert 'data-testid="token-status">active<' in listed


def test_a_revoked_token_is_refused_and_listed_as_revoked(app, auth, client):
    auth.signup()
    secret = _secret_of(_create(auth))
    token = _token(app)
    system = ApiClient(app, secret, token.tenant_id)
    assert system.get("/api/v1/pages").status_code == 200

    response = auth.post(f"{PAGE}/{token.id}/revoke")
    assert response.status_code == 302
    assert system.get("/api/v1/pages").status_code == 401
    listed = client.get(PAGE).get_data(as_text=True)
    assert "The token Shop CRM is revoked" in listed
    assert 'data-testid="token-status">revoked<' in listed
    assert f"{PAGE}/{token.id}/revoke" not in listed  # nothing left to revoke
    assert "revoked an API token" in client.get("/audit").get_data(as_text=True)


def test_creating_or_revoking_needs_the_forms_csrf_token(app, auth, client):
    auth.signup()
    refused = client.post(PAGE, data={"name": "Sneaky", "scopes": ["admin"]})
    assert refused.status_code == 400
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(ApiToken).where(ApiToken.name == "Sneaky")) is None

    secret = _secret_of(_create(auth))
    token = _token(app)
    assert client.post(f"{PAGE}/{token.id}/revoke").status_code == 400
    assert ApiClient(app, secret, token.tenant_id).get("/api/v1/pages").status_code == 200


def test_an_expiry_date_ends_the_token_at_the_end_of_that_day_in_the_workspaces_zone(app, auth):
    auth.signup(timezone="America/Sao_Paulo")
    response = _create(auth, expires_on="2099-01-31")
    assert response.status_code == 201
    assert _token(app).expires_at == datetime(2099, 2, 1, 3, 0, tzinfo=UTC)  # midnight in São Paulo
    assert "2099-02-01 00:00" in response.get_data(as_text=True)


def test_the_form_says_what_is_missing_or_wrong(app, auth):
    auth.signup()
    no_scope = auth.post(PAGE, {"name": "Shop CRM"})
    assert no_scope.status_code == 400 and "Choose at least one scope." in no_scope.get_data(as_text=True)
    past = _create(auth, expires_on="2020-01-01")
    assert past.status_code == 400 and "The expiry date must be in the future." in past.get_data(as_text=True)
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalars(select(ApiToken)).all() == []


def test_members_may_not_see_or_make_tokens_and_the_menu_offers_the_page_to_managers(app, auth, client):
    auth.signup()
    assert 'href="/settings/api-tokens"' in client.get("/dashboard").get_data(as_text=True)
    with app.app_context(), all_tenants(db.session):
        acme = tenant_named("Acme")
        with tenant(db.session, acme.id):
            email = make_membership(acme, {}).user.email
            db.session.commit()
    member = Auth(app.test_client())
    member.login(email, "a member password")
    assert 'href="/settings/api-tokens"' not in member.client.get("/dashboard").get_data(as_text=True)
    assert member.client.get(PAGE).status_code == 403
    assert member.post(PAGE, {"name": "Mine", "scopes": ["admin"]}).status_code == 403
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalars(select(ApiToken)).all() == []
