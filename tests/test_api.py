"""The API's door: tokens, scoping by the token's workspace, problem details, the OpenAPI document,
the per-token rate limit, Idempotency-Key and scopes."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from flask import Blueprint, jsonify, request
from sqlalchemy import select

from tenants.api_tokens import ApiToken, Scope
from tenants.audit import AuditEntry
from tenants.db import db, utcnow
from tenants.models import Tenant, TenantStatus
from tenants.pages import Page, ProviderKind, apply_form
from tenants.scoping import all_tenants, tenant
from tests.conftest import ApiClient, built_app
from tests.factories import api_token_for, tenant_named
from webapp.api import guard, ratelimit
from webapp.api.auth import requires

PROBLEM = "application/problem+json"


def _page(app, tenant_id: int, name: str) -> int:
    with app.app_context(), tenant(db.session, tenant_id):
        page = apply_form(
            Page(kind=ProviderKind.WEBHOOK),
            name=name,
            base_url="https://hooks.example.com/crier",
            send_rate=5,
            daily_cap=None,
            credentials={"signing_secret": "very-secret-signing-key"},
            settings={},
        )
        db.session.add(page)
        db.session.commit()
        return page.id


def test_a_request_without_a_token_gets_a_problem_saying_how_to_authenticate(app, api):
    anonymous = app.test_client()
    response = anonymous.get("/api/v1/pages")
    assert response.status_code == 401
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["type"] == "/api/v1/problems/unauthenticated" and body["status"] == 401
    assert "Authorization: Bearer" in body["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_signed_in_browser_cookie_does_not_open_the_api(app, api, client):
    """The API is exempt from CSRF only because a cookie never authenticates it."""
    assert client.get("/dashboard").status_code == 200  # Acme's owner is signed in in this client
    assert client.get("/api/v1/pages").status_code == 401
    assert client.post("/api/v1/pages", json={}).status_code in (401, 405)


def test_a_token_sees_its_own_workspace_and_gets_404_for_another(app, api, auth):
    own = _page(app, api.tenant_id, "Acme hooks")
    with app.app_context():
        other_tenant = Tenant(name="Globex", slug="globex")
        db.session.add(other_tenant)
        db.session.commit()
        other_id = other_tenant.id
    theirs = _page(app, other_id, "Globex hooks")

    listed = api.get("/api/v1/pages").get_json()["data"]
    assert [p["name"] for p in listed] == ["Acme hooks"]
    assert "very-secret-signing-key" not in api.get(f"/api/v1/pages/{own}").get_data(as_text=True)
    assert api.get(f"/api/v1/pages/{own}").get_json()["state"] == "active"

    response = api.get(f"/api/v1/pages/{theirs}")
    assert response.status_code == 404 and response.mimetype == PROBLEM
    assert response.get_json()["type"] == "/api/v1/problems/not-found"


def test_revoked_and_expired_tokens_are_refused(app, api):
    assert api.get("/api/v1/pages").status_code == 200
    with app.app_context(), all_tenants(db.session):
        token = db.session.scalar(select(ApiToken))
        token.revoked_at = utcnow()
        db.session.commit()
    assert api.get("/api/v1/pages").status_code == 401

    expired = ApiClient(app, api_token_for(app, api.tenant_id, name="Old"), api.tenant_id)
    with app.app_context(), all_tenants(db.session):
        row = db.session.scalar(select(ApiToken).where(ApiToken.name == "Old"))
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    response = expired.get("/api/v1/pages")
    assert response.status_code == 401 and "revoked or expired" in response.get_json()["detail"]


def test_the_token_remembers_when_and_from_where_it_was_last_used(app, api):
    api.get("/api/v1/pages", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    with app.app_context(), all_tenants(db.session):
        token = db.session.scalar(select(ApiToken))
        assert token.last_used_ip == "203.0.113.7"
        assert utcnow() - token.last_used_at < timedelta(seconds=30)


def test_a_suspended_workspace_has_its_api_closed(app, api):
    with app.app_context():
        row = tenant_named("Acme")
        row.status = TenantStatus.SUSPENDED
        db.session.commit()
    response = api.get("/api/v1/pages")
    assert response.status_code == 403
    assert response.get_json()["type"] == "/api/v1/problems/workspace-suspended"


def test_an_unknown_api_url_is_a_problem_not_an_html_page(api):
    response = api.get("/api/v1/no-such-thing")
    assert response.status_code == 404 and response.mimetype == PROBLEM
    assert response.get_json()["instance"] == "/api/v1/no-such-thing"


def test_every_problem_type_is_listed_and_resolvable(client):
    listed = client.get("/api/v1/problems").get_json()
    assert {"type": "/api/v1/problems/rate-limited", "status": 429, "title": "Too many requests"} in listed
    for problem in listed:
        assert client.get(problem["type"]).get_json() == problem


def test_the_openapi_document_is_3_1_and_generated_from_the_routes(client):
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    pages = document["paths"]["/api/v1/pages/{page_id}"]["get"]
    assert "application/json" in pages["responses"]["200"]["content"]
    assert PROBLEM in pages["responses"]["404"]["content"]
    page_fields = set(document["components"]["schemas"]["PageOut"]["properties"])
    assert {"id", "name", "kind", "state"} <= page_fields
    assert not {"credentials", "credentials_sealed", "base_url", "settings"} & page_fields


def test_a_change_made_with_a_token_is_audited_with_the_token_as_actor(app, api):
    with app.app_context(), all_tenants(db.session):
        entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "api_token.created"))
        assert [e.target for e in entries] == ["API token CRM"]


# --------------------------------------------------------------------------- rate limit, idempotency, scopes

# A route of the test's own, behind the API's door like every resource route: it makes a "thing" per call.
things_api = guard(Blueprint("things_api", __name__, url_prefix="/api/v1/things"))
THINGS: list[dict] = []


@things_api.post("")
@requires(Scope.CONTACTS_WRITE)
def make_thing():
    THINGS.append({"id": len(THINGS) + 1, "name": (request.get_json(silent=True) or {}).get("name")})
    return jsonify(THINGS[-1]), 201


@pytest.fixture
def things(app) -> list[dict]:
    """The things made through ``POST /api/v1/things``, a test-only route (request it before ``api``:
    an app takes no more routes once it has answered a request)."""
    app.register_blueprint(things_api)
    THINGS.clear()
    return THINGS


def _tenant(app, name: str) -> int:
    with app.app_context():
        row = Tenant(name=name, slug=name.lower())
        db.session.add(row)
        db.session.commit()
        return row.id


def _not_at_the_end_of_a_window() -> None:
    """The limit counts per minute: start a test that fills it well inside one minute."""
    left = ratelimit.WINDOW_SECONDS - time.time() % ratelimit.WINDOW_SECONDS
    if left < 5:
        time.sleep(left + 0.1)


def test_a_token_over_its_limit_gets_429_with_retry_after_and_another_token_is_not_affected():
    with built_app(API_REQUESTS_PER_MINUTE=3) as app:
        tenant_id = _tenant(app, "Limited")
        busy = ApiClient(app, api_token_for(app, tenant_id, name="Busy"), tenant_id)
        calm = ApiClient(app, api_token_for(app, tenant_id, name="Calm"), tenant_id)
        _not_at_the_end_of_a_window()

        answers = [busy.get("/api/v1/pages"), busy.get("/api/v1/pages/999"), busy.get("/api/v1/pages")]
        assert [a.status_code for a in answers] == [200, 404, 200]
        for remaining, answer in zip((2, 1, 0), answers, strict=True):
            assert answer.headers["RateLimit-Limit"] == "3"
            assert answer.headers["RateLimit-Remaining"] == str(remaining)
            assert 1 <= int(answer.headers["RateLimit-Reset"]) <= 60
            assert answer.headers["RateLimit-Policy"] == "3;w=60"

        refused = busy.get("/api/v1/pages")
        assert refused.status_code == 429 and refused.mimetype == PROBLEM
        assert refused.get_json()["type"] == "/api/v1/problems/rate-limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Remaining"] == "0"

        other = calm.get("/api/v1/pages")
        assert other.status_code == 200 and other.headers["RateLimit-Remaining"] == "2"


def test_the_same_post_with_the_same_idempotency_key_makes_one_object(things, api):
    key = {"Idempotency-Key": "order-4711"}
    first = api.post("/api/v1/things", json={"name": "Widget"}, headers=key)
    again = api.post("/api/v1/things", json={"name": "Widget"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json() == {"id": 1, "name": "Widget"}
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert len(things) == 1

    clash = api.post("/api/v1/things", json={"name": "Gadget"}, headers=key)
    assert clash.status_code == 422 and clash.mimetype == PROBLEM
    assert clash.get_json()["type"] == "/api/v1/problems/idempotency-key-reused"

    api.post("/api/v1/things", json={"name": "Widget"})
    api.post("/api/v1/things", json={"name": "Widget"})
    assert len(things) == 3, "without a key every POST is a new request"


def test_idempotency_keys_belong_to_one_token(app, things, api):
    other = ApiClient(app, api_token_for(app, api.tenant_id, name="Other"), api.tenant_id)
    key = {"Idempotency-Key": "same-key"}
    assert api.post("/api/v1/things", json={"name": "A"}, headers=key).get_json()["id"] == 1
    assert other.post("/api/v1/things", json={"name": "A"}, headers=key).get_json()["id"] == 2


def test_a_read_token_may_read_but_not_write(app, things, api):
    reader = ApiClient(app, api_token_for(app, api.tenant_id, ("read",), name="Reader"), api.tenant_id)
    assert reader.get("/api/v1/pages").status_code == 200
    refused = reader.post("/api/v1/things", json={"name": "Nope"})
    assert refused.status_code == 403 and refused.mimetype == PROBLEM
    assert "contacts:write" in refused.get_json()["detail"]
    assert things == []
    writer = ApiClient(
        app, api_token_for(app, api.tenant_id, ("contacts:write",), name="Writer"), api.tenant_id
    )
    assert writer.post("/api/v1/things", json={"name": "Yes"}).status_code == 201
    assert writer.get("/api/v1/pages").status_code == 200, "every write scope may also read"


def test_a_url_naming_another_workspaces_object_is_404_before_its_body_is_read(app, api):
    theirs = _page(app, _tenant(app, "Globex"), "Globex hooks")
    response = api.get(f"/api/v1/pages/{theirs}")
    assert response.status_code == 404
    huge = api.get(f"/api/v1/pages/{2**70}")
    assert huge.status_code == 404 and huge.mimetype == PROBLEM


def test_a_body_that_is_not_json_is_refused_not_read_as_an_empty_object(things, api):
    malformed = api.post("/api/v1/things", data="\x00", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422 and malformed.mimetype == PROBLEM
    assert malformed.get_json()["detail"] == "The body is not valid JSON."
    plain = api.post("/api/v1/things", data='{"name": "Widget"}', headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and plain.get_json()["type"] == "/api/v1/problems/unsupported-media-type"
    assert things == []
    assert api.post("/api/v1/things").status_code == 201, "no body at all is an empty request"


def test_changes_made_with_a_token_are_audited_and_a_preview_is_not(app, api):
    created = api.post(
        "/api/v1/templates", json={"name": "Hello", "channel": "whatsapp", "body": "Hi {{firstName}}"}
    )
    assert created.status_code == 201, created.get_json()
    template_id = created.get_json()["id"]
    assert api.post(f"/api/v1/templates/{template_id}/preview", json={}).status_code == 200
    with app.app_context(), all_tenants(db.session):
        entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "api.request")).all()
        assert [e.target for e in entries] == ["POST /api/v1/templates"]
        assert entries[0].actor.startswith("API token CRM (crier_")
