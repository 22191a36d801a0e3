"""Tenant B gets 404 for every object URL of tenant A."""

from __future__ import annotations

from sqlalchemy import select

from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants
from tests.conftest import Auth, csrf_token
from tests.isolation import SKIPPED_METHODS, object_rules, objects_of


def test_every_object_url_of_another_tenant_is_404(app, client, other_client):
    Auth(client).signup(email="a@acme.example", workspace="A")
    Auth(other_client).signup(email="b@bravo.example", workspace="B")
    with app.app_context(), all_tenants(db.session):
        a_ids = objects_of(db.session.scalar(select(Tenant).where(Tenant.slug == "a")))

    rules = object_rules(app, set(a_ids))
    assert {r.endpoint for r in rules} >= {"workspaces.switch", "workspaces.edit", "workspaces.remove"}
    token = csrf_token(other_client.get("/dashboard").get_data(as_text=True))
    walked = []
    for rule in rules:
        url = rule.build({arg: a_ids[arg] for arg in rule.arguments})[1]
        for method in sorted(rule.methods - SKIPPED_METHODS):
            response = other_client.open(url, method=method, headers={"X-CSRFToken": token}, data={})
            assert response.status_code == 404, f"{method} {url} gave {response.status_code} to tenant B"
            walked.append(f"{method} {url}")

    # The walk is not vacuous: tenant A's owner reaches the same pages.
    for rule in rules:
        if "GET" in rule.methods:
            url = rule.build({arg: a_ids[arg] for arg in rule.arguments})[1]
            assert client.get(url).status_code == 200, url
    assert len(walked) >= 4
