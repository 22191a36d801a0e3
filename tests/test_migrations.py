"""The schema comes from migrations only, and they agree with the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import create_engine

from tenants.db import db, include_in_autogenerate
from tests.conftest import built_app


def _differences(engine) -> list:
    with engine.connect() as conn:
        opts = {"compare_type": True, "render_as_batch": True, "include_object": include_in_autogenerate}
        context = MigrationContext.configure(conn, opts=opts)
        return compare_metadata(context, db.metadata)


def test_postgresql_schema_from_migrations_matches_the_models(app):
    with app.app_context():
        assert _differences(db.engine) == []


def test_migrations_build_the_same_schema_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'crier.db'}"
    with built_app(SQLALCHEMY_DATABASE_URI=url) as app, app.app_context():
        upgrade()
    engine = create_engine(url)
    try:
        assert _differences(engine) == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("path", ["webapp", "tenants", "tasks"])
def test_the_app_never_creates_tables_itself(path):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / path
    offenders = [str(p) for p in root.rglob("*.py") if "create_all(" in p.read_text()]
    assert offenders == []


def test_contact_search_has_its_trigram_index_on_postgresql(app):
    with app.app_context():
        indexes = db.session.execute(
            db.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_contacts_search'")
        )
        assert "gin_trgm_ops" in indexes.scalar_one()


def _check_delivery_rules() -> None:
    """Deliveries keep to a campaign of their own tenant and go with it (migration 0006's triggers)."""
    from sqlalchemy.exc import IntegrityError

    from tenants.campaigns import Campaign, Delivery
    from tenants.models import Tenant
    from tenants.scoping import all_tenants

    with all_tenants(db.session):
        acme, bravo = Tenant(name="Acme", slug="acme"), Tenant(name="Bravo", slug="bravo")
        db.session.add_all([acme, bravo])
        db.session.flush()
        spring, other = Campaign(name="Spring", tenant_id=acme.id), Campaign(name="B", tenant_id=bravo.id)
        db.session.add_all([spring, other])
        db.session.commit()
        ids = acme.id, bravo.id, spring.id, other.id

        def add(tenant_id: int, campaign_id: int) -> None:
            db.session.add(Delivery(tenant_id=tenant_id, campaign_id=campaign_id, address="+15550001"))
            db.session.commit()

        add(ids[0], ids[2])
        for tenant_id, campaign_id in [(ids[0], ids[3]), (ids[1], ids[2]), (ids[0], 999_999)]:
            with pytest.raises(IntegrityError, match="must belong to a campaign of their tenant"):
                add(tenant_id, campaign_id)
            db.session.rollback()
        with pytest.raises(IntegrityError, match="cannot move to another campaign"):
            db.session.execute(db.update(Delivery).values(campaign_id=ids[3]))
        db.session.rollback()
        db.session.execute(db.update(Delivery).values(state="sent"))  # other changes are fine
        db.session.commit()
        db.session.delete(db.session.get(Tenant, ids[0]))  # its campaigns, and their deliveries, go
        db.session.commit()
        assert db.session.scalar(db.select(db.func.count()).select_from(Delivery)) == 0


def test_deliveries_belong_to_a_campaign_of_their_tenant_on_postgresql(app):
    with app.app_context():
        _check_delivery_rules()


def test_deliveries_belong_to_a_campaign_of_their_tenant_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'crier.db'}"
    with built_app(SQLALCHEMY_DATABASE_URI=url) as app, app.app_context():
        upgrade()
        _check_delivery_rules()
