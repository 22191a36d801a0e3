"""The isolation walk: every object URL of the app, requested by another tenant, answers 404.

It needs no list of routes: it reads the app's URL map, so routes added by later work
are walked automatically. Arguments named ``<something>_id`` are object ids; each must
name a tenant-owned model (``membership_id`` → ``Membership``) with a factory in
``tests/factories.py``, or be ``tenant_id``.
"""

from __future__ import annotations

import re

from flask import Flask
from werkzeug.routing import Rule

from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import TenantScoped, tenant
from tests.factories import FACTORIES

SKIPPED_METHODS = {"HEAD", "OPTIONS"}


def id_argument(model: type) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__).lower() + "_id"


def tenant_scoped_models() -> list[type]:
    return [m.class_ for m in db.Model.registry.mappers if issubclass(m.class_, TenantScoped)]


def objects_of(tenant_row: Tenant) -> dict[str, int]:
    """Create one object of every tenant-owned model for ``tenant_row``; argument name to id."""
    missing = [m.__name__ for m in tenant_scoped_models() if m not in FACTORIES]
    assert not missing, f"add factories for {missing} to tests/factories.py so the isolation walk covers them"
    ids = {"tenant_id": tenant_row.id}
    with tenant(db.session, tenant_row.id):
        for model in tenant_scoped_models():
            row = FACTORIES[model](tenant_row)
            db.session.flush()
            ids[id_argument(model)] = row.id
        db.session.commit()
    return ids


def object_rules(app: Flask, known: set[str]) -> list[Rule]:
    """Rules taking object ids; fails on an id argument nobody knows how to fill."""
    rules, unknown = [], set()
    for rule in app.url_map.iter_rules():
        id_args = {a for a in rule.arguments if a.endswith("_id")}
        if not id_args or id_args != set(rule.arguments):
            continue
        unknown |= id_args - known
        rules.append(rule)
    assert not unknown, f"no factory gives ids for {sorted(unknown)}: name the argument after its model"
    return rules
