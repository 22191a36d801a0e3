"""The isolation walk: every object URL of the app, requested by another tenant, answers 404.

It needs no list of routes: it reads the app's URL map, so routes added by later work
are walked automatically. Arguments named ``<something>_id`` are object ids; each must
name a tenant-owned model (``membership_id`` → ``Membership``) with a factory in
``tests/factories.py``, or be ``tenant_id``. ``kind`` is the provider kind of the
factory's page. Views marked ``signed_public`` (provider webhooks) take no session:
for them another party without the page's secret must get 401 or 403. ``plan_id`` names a
platform-level plan: its URLs are the platform admin's console, 404 for every tenant.
``/api/v1`` routes take no session either: they are walked with another tenant's API token.
"""

from __future__ import annotations

import re

from flask import Flask
from werkzeug.routing import Rule

from tenants.db import db
from tenants.models import Tenant
from tenants.pages import Page
from tenants.scoping import TenantScoped, tenant
from tests.factories import FACTORIES, make_plan

SKIPPED_METHODS = {"HEAD", "OPTIONS"}


def id_argument(model: type) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__).lower() + "_id"


def tenant_scoped_models() -> list[type]:
    return [m.class_ for m in db.Model.registry.mappers if issubclass(m.class_, TenantScoped)]


def objects_of(tenant_row: Tenant) -> dict[str, int | str]:
    """Create one object of every tenant-owned model for ``tenant_row``; URL argument name to value."""
    missing = [m.__name__ for m in tenant_scoped_models() if m not in FACTORIES]
    assert not missing, f"add factories for {missing} to tests/factories.py so the isolation walk covers them"
    values: dict[str, int | str] = {"tenant_id": tenant_row.id}
    made: dict[type, object] = {}
    with tenant(db.session, tenant_row.id):
        for model, factory in FACTORIES.items():
            made[model] = factory(tenant_row, made)
            db.session.flush()
            if hasattr(made[model], "id"):  # association rows have composite keys and no URLs
                values[id_argument(model)] = made[model].id
        values["kind"] = made[Page].kind.value
    plan = make_plan(f"Plan of {tenant_row.name}")
    db.session.flush()
    values["plan_id"] = plan.id
    db.session.commit()
    return values


def object_rules(app: Flask, known: set[str]) -> list[Rule]:
    """Rules taking object ids; fails on an id argument nobody knows how to fill."""
    rules, unknown = [], set()
    for rule in app.url_map.iter_rules():
        id_args = {a for a in rule.arguments if a.endswith("_id")}
        if not id_args or not set(rule.arguments) <= known | id_args:
            continue
        unknown |= id_args - known
        rules.append(rule)
    assert not unknown, f"no factory gives ids for {sorted(unknown)}: name the argument after its model"
    return rules


def is_platform_console(rule: Rule) -> bool:
    return rule.endpoint.startswith("admin.")


def is_signed_public(app: Flask, rule: Rule) -> bool:
    return getattr(app.view_functions[rule.endpoint], "signed_public", False)


def is_api(rule: Rule) -> bool:
    """A route of the JSON API: a session cookie never opens it, a token does."""
    return rule.endpoint.startswith("api.")
