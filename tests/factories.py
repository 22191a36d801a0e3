"""One row of every tenant-owned model, for tests that need "an object of tenant A".

The isolation walk requires a factory here for every model that mixes in
``TenantScoped``: a new model without one fails that test with a message naming it.
"""

from __future__ import annotations

from collections.abc import Callable

from tenants.accounts import hash_password
from tenants.db import db
from tenants.models import Membership, Role, Tenant, User

Factory = Callable[[Tenant], object]


def make_membership(tenant: Tenant) -> Membership:
    user = User(email=f"member-{tenant.id}@crier.example", password_hash=hash_password("a member password"))
    membership = Membership(tenant_id=tenant.id, user=user, role=Role.MEMBER)
    db.session.add(membership)
    return membership


FACTORIES: dict[type, Factory] = {
    Membership: make_membership,
}
