"""Tenant B gets 404 for every object URL of tenant A (and no way into A's webhooks), in the browser
with its session and over the API with its token."""

from __future__ import annotations

from sqlalchemy import func, select

from tenants.accounts import make_platform_admin
from tenants.db import db
from tenants.events import WebhookEvent
from tenants.scoping import all_tenants
from tests.conftest import ApiClient, Auth, csrf_token
from tests.factories import api_token_for, tenant_named
from tests.isolation import (
    SKIPPED_METHODS,
    is_api,
    is_platform_console,
    is_signed_public,
    object_rules,
    objects_of,
)

PROBLEM = "application/problem+json"


def test_every_object_url_of_another_tenant_is_404(app, client, other_client):
    Auth(client).signup(email="a@acme.example", workspace="A")
    Auth(other_client).signup(email="b@bravo.example", workspace="B")
    with app.app_context(), all_tenants(db.session):
        a_values = objects_of(tenant_named("A"))
        events_before = db.session.scalar(select(func.count()).select_from(WebhookEvent))

    rules = [rule for rule in object_rules(app, set(a_values)) if not is_api(rule)]  # API: a token's walk
    assert {r.endpoint for r in rules} >= {
        "workspaces.switch",
        "workspaces.edit",
        "workspaces.remove",
        "workspaces.resend_invitation",
        "workspaces.revoke_invitation",
        "pages.show",
        "pages.verify",
        "pages.test_send",
        "pages.delete",
        "webhooks.receive",
        "webhooks.handshake",
        "api_tokens.revoke",
    }
    token = csrf_token(other_client.get("/dashboard").get_data(as_text=True))
    walked = []
    for rule in rules:
        url = rule.build({arg: a_values[arg] for arg in rule.arguments})[1]
        expected = {401, 403} if is_signed_public(app, rule) else {404}
        for method in sorted(rule.methods - SKIPPED_METHODS):
            response = other_client.open(
                url, method=method, headers={"X-CSRFToken": token}, data={"text": "x"}
            )
            assert response.status_code in expected, f"{method} {url} gave {response.status_code} to tenant B"
            walked.append(f"{method} {url}")

    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == events_before

    # The walk is not vacuous: tenant A's owner reaches the same pages, a platform admin the console's.
    admin = app.test_client()
    with app.app_context(), all_tenants(db.session):
        make_platform_admin("root@crier.example", "a long admin password")
    Auth(admin).login("root@crier.example", "a long admin password")
    for rule in rules:
        if "GET" in rule.methods and not is_signed_public(app, rule):
            url = rule.build({arg: a_values[arg] for arg in rule.arguments})[1]
            if is_platform_console(rule):
                assert client.get(url).status_code == 404, f"{url} is the platform admin's, not the owner's"
                assert admin.get(url).status_code == 200, url
            else:
                assert client.get(url).status_code == 200, url
    assert len(walked) >= 10


def test_every_api_object_url_of_another_tenant_is_404_for_its_token(app, client, other_client):
    """Every /api/v1 route taking an object id, every method, with B's admin token on A's objects."""
    Auth(client).signup(email="a@acme.example", workspace="A")
    Auth(other_client).signup(email="b@bravo.example", workspace="B")
    with app.app_context(), all_tenants(db.session):
        a_values = objects_of(tenant_named("A"))
        b_id = tenant_named("B").id
    tenant_b = ApiClient(app, api_token_for(app, b_id, name="B's CRM"), b_id)
    a_id = int(a_values["tenant_id"])
    tenant_a = ApiClient(app, api_token_for(app, a_id, name="A's CRM"), a_id)

    rules = [rule for rule in object_rules(app, set(a_values)) if is_api(rule)]
    assert {r.endpoint for r in rules} >= {"api.get_page"}
    walked = []
    for rule in rules:
        url = rule.build({arg: a_values[arg] for arg in rule.arguments})[1]
        for method in sorted(rule.methods - SKIPPED_METHODS):
            response = tenant_b.request(method, url, json={})
            assert response.status_code == 404, f"{method} {url} gave {response.status_code} to tenant B"
            assert response.mimetype == PROBLEM, f"{method} {url}: {response.mimetype}"
            assert response.get_json()["type"] == "/api/v1/problems/not-found"
            walked.append(f"{method} {url}")

    # The walk is not vacuous, and B's DELETEs removed nothing: A's own token still finds every object
    # (a GET may still want a query parameter: 422, after the object was found).
    for rule in rules:
        if "GET" in rule.methods:
            url = rule.build({arg: a_values[arg] for arg in rule.arguments})[1]
            answer = tenant_a.get(url)
            assert answer.status_code in (200, 422), f"GET {url} gave {answer.status_code} to tenant A"
    assert len(walked) >= 2
