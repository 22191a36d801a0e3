"""API tokens: a workspace's own systems acting for it over /api/v1

Revision ID: 0009_api_tokens
Revises: 0008_accounts_security
Create Date: 2026-12-07

* ``api_tokens``: a named token with scopes and an optional expiry; only the secret's SHA-256 digest
  is kept (unique: a lookup is one indexed query), with its first characters for lists, and its last
  use (time and address).
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import tenants.db  # noqa: F401  (custom column types)


# revision identifiers, used by Alembic.
revision = '0009_api_tokens'
down_revision = '0008_accounts_security'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('shown', sa.String(length=20), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_by_user_id', sa.Integer(), nullable=True),
    sa.Column('created_at', tenants.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', tenants.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', tenants.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_ip', sa.String(length=64), nullable=True),
    sa.Column('revoked_at', tenants.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['created_by_user_id'], ['users.id'], name=op.f('fk_api_tokens_created_by_user_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_api_tokens_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('digest', name=op.f('uq_api_tokens_digest'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_tenant_id'), ['tenant_id'], unique=False)


def downgrade():
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_tenant_id'))
    op.drop_table('api_tokens')
