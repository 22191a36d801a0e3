"""The tenant criterion is added in one place and fails closed."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import selectinload

from tenants.accounts import hash_password
from tenants.db import db
from tenants.models import Membership, Role, Tenant, User
from tenants.scoping import CrossTenantWrite, TenantNotSet, all_tenants, set_tenant, tenant


@pytest.fixture
def two_tenants(app):
    """Tenants A and B with two members each; yields their ids inside an app context."""
    with app.app_context(), all_tenants(db.session):
        ids = []
        for name in ("A", "B"):
            t = Tenant(name=name, slug=name.lower())
            db.session.add(t)
            db.session.flush()
            for n in range(2):
                user = User(email=f"{name}{n}@crier.example".lower(), password_hash=hash_password("x" * 12))
                db.session.add(
                    Membership(tenant_id=t.id, user=user, role=Role.OWNER if n == 0 else Role.MEMBER)
                )
            ids.append(t.id)
        db.session.commit()
    with app.app_context():
        yield tuple(ids)


def test_queries_see_only_the_current_tenant(two_tenants):
    a, b = two_tenants
    set_tenant(db.session, a)
    assert {m.tenant_id for m in db.session.scalars(select(Membership))} == {a}
    assert db.session.scalar(select(func.count()).select_from(Membership)) == 2
    with tenant(db.session, b):
        assert {m.tenant_id for m in db.session.scalars(select(Membership))} == {b}


def test_get_by_id_of_another_tenant_finds_nothing(two_tenants):
    a, b = two_tenants
    with all_tenants(db.session):
        b_membership_id = db.session.scalar(select(Membership.id).where(Membership.tenant_id == b))
    db.session.expunge_all()
    set_tenant(db.session, a)
    assert db.session.get(Membership, b_membership_id) is None


def test_without_a_tenant_queries_fail_closed(two_tenants):
    with pytest.raises(TenantNotSet):
        db.session.scalars(select(Membership)).all()
    with pytest.raises(TenantNotSet):
        db.session.execute(update(Membership).values(role=Role.ADMIN))
    with pytest.raises(TenantNotSet):
        db.session.execute(delete(Membership))


def test_eager_and_lazy_loads_of_tenant_rows_are_scoped_too(two_tenants):
    a, _ = two_tenants
    users = db.session.scalars(select(User).options(selectinload(User.memberships))).all()
    assert users and all(user.memberships == [] for user in users)  # no tenant: nothing leaks
    db.session.expunge_all()
    set_tenant(db.session, a)
    loaded = db.session.scalars(select(User).order_by(User.id)).all()
    assert [len(user.memberships) for user in loaded] == [1, 1, 0, 0]


def test_bulk_update_and_delete_touch_only_the_current_tenant(two_tenants):
    a, b = two_tenants
    set_tenant(db.session, a)
    db.session.execute(update(Membership).values(role=Role.ADMIN))
    db.session.execute(delete(Membership).where(Membership.role == Role.ADMIN))
    db.session.commit()
    with all_tenants(db.session):
        remaining = db.session.execute(select(Membership.tenant_id, Membership.role)).all()
    assert set(remaining) == {(b, Role.OWNER), (b, Role.MEMBER)}


def test_new_rows_are_stamped_with_the_current_tenant(two_tenants):
    a, _ = two_tenants
    set_tenant(db.session, a)
    user = User(email="new@crier.example", password_hash=hash_password("x" * 12))
    membership = Membership(user=user)
    db.session.add(membership)
    db.session.commit()
    assert membership.tenant_id == a


def test_new_rows_without_a_tenant_are_refused(two_tenants):
    user = User(email="new@crier.example", password_hash=hash_password("x" * 12))
    db.session.add(Membership(user=user))
    with pytest.raises(TenantNotSet):
        db.session.flush()


def test_writing_another_tenants_row_is_refused(two_tenants):
    a, b = two_tenants
    set_tenant(db.session, a)
    user = User(email="new@crier.example", password_hash=hash_password("x" * 12))
    db.session.add(Membership(user=user, tenant_id=b))
    with pytest.raises(CrossTenantWrite):
        db.session.flush()


def test_platform_code_opts_out_explicitly(two_tenants):
    with all_tenants(db.session):
        assert db.session.scalar(select(func.count()).select_from(Membership)) == 4
    with pytest.raises(TenantNotSet):
        db.session.scalar(select(func.count()).select_from(Membership))


def test_a_tenant_block_inside_all_tenants_is_scoped_again(app):
    """Platform code (the sweeper) that turns to one tenant sees only that tenant's rows."""
    from tenants.pages import Page, ProviderKind, apply_form
    from tenants.scoping import all_tenants, tenant

    with app.app_context():
        ids = []
        with all_tenants(db.session):
            for name in ("Acme", "Bravo"):
                owner = Tenant(name=name, slug=name.lower())
                db.session.add(owner)
                db.session.flush()
                with tenant(db.session, owner.id):
                    db.session.add(
                        apply_form(
                            Page(kind=ProviderKind.WEBHOOK),
                            name=f"{name} hook",
                            base_url="https://hooks.example/in",
                            send_rate=5,
                            daily_cap=None,
                            credentials={"signing_secret": "a-long-secret"},
                            settings={},
                        )
                    )
                    db.session.flush()
                ids.append(owner.id)
            db.session.commit()
            with tenant(db.session, ids[0]):
                assert [p.name for p in db.session.scalars(select(Page))] == ["Acme hook"]
            assert len(db.session.scalars(select(Page)).all()) == 2  # platform mode again after the block
