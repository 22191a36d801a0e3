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
