"""Event webhooks: a workspace's URLs subscribed to Crier's events, and the log of what was sent

Revision ID: 0010_event_hooks
Revises: 0009_api_tokens
Create Date: 2026-12-07

* ``event_subscriptions``: a URL, the event types it wants (a JSON list), its signing secret
  (encrypted: requests are signed with it) and whether it is on.
* ``event_deliveries``: one event for one subscription, recorded in the transaction that published
  it (an outbox) and updated by each attempt: status, attempts, next attempt, last HTTP status and
  error. Indexed for the worker (pending rows by due time) and for a subscription's log.
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import tenants.db  # noqa: F401  (custom column types)


# revision identifiers, used by Alembic.
revision = '0010_event_hooks'
down_revision = '0009_api_tokens'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('event_subscriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('events', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('secret_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('created_at', tenants.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', tenants.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_event_subscriptions_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_subscriptions'))
    )
    with op.batch_alter_table('event_subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_subscriptions_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('event_deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('subscription_id', sa.Integer(), nullable=False),
    sa.Column('event_type', sa.String(length=40), nullable=False),
    sa.Column('event_id', sa.String(length=40), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.Enum('pending', 'delivered', 'failed', name='event_delivery_status', native_enum=False, length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', tenants.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('delivered_at', tenants.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('created_at', tenants.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', tenants.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['subscription_id'], ['event_subscriptions.id'], name=op.f('fk_event_deliveries_subscription_id_event_subscriptions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_event_deliveries_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_deliveries'))
    )
    with op.batch_alter_table('event_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_event_deliveries_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_event_deliveries_subscription_id_id', ['subscription_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_deliveries_tenant_id'), ['tenant_id'], unique=False)


def downgrade():
    with op.batch_alter_table('event_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_deliveries_tenant_id'))
        batch_op.drop_index('ix_event_deliveries_subscription_id_id')
        batch_op.drop_index('ix_event_deliveries_due')

    op.drop_table('event_deliveries')
    with op.batch_alter_table('event_subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_subscriptions_tenant_id'))

    op.drop_table('event_subscriptions')
