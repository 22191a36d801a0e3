"""trigram index for contact search (PostgreSQL only)

Revision ID: 0004_contact_search
Revises: 0003_contacts
Create Date: 2026-11-23 15:40:00

The contacts page searches one lower-cased text per contact with LIKE '%…%'; on
PostgreSQL a GIN trigram index over exactly that expression keeps it fast at a million
contacts. SQLite (the embedded default) scans instead.
"""
from alembic import op

from tenants.contact_book import SEARCH_EXPRESSION

revision = '0004_contact_search'
down_revision = '0003_contacts'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(f"CREATE INDEX ix_contacts_search ON contacts USING gin (({SEARCH_EXPRESSION}) gin_trgm_ops)")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_contacts_search")
