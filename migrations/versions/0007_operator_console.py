"""The operator's console and the tenant's dashboards: plans, audit log, daily activity, reports

Revision ID: 0007_operator_console
Revises: 0006_lean_deliveries
Create Date: 2026-12-05

* ``plans`` (limits as data) and, on ``tenants``, the plan, per-tenant overrides, the contacts limit
  and the suspension's reason and time. Existing tenants go on the default plan "Standard" (the
  limits every tenant had by default); a tenant whose limits differ keeps them as overrides.
* ``audit_log``, append-only: the database refuses UPDATE and DELETE on it.
* an index of ``daily_usage``'s quota rows by day, for sums over every tenant (the console's sorts).
* ``daily_activity``: per tenant, day and campaign, what the provider accepted, failures, receipts
  and replies (counted by dispatch, receipts and replies as they happen), for charts and usage.
* ``delivery_attempts``: earlier rounds of a delivery, kept when it is resent.
* ``deliveries.retryable`` (a failure whose retries ran out, worth resending) and a partial index on
  ``deliveries.contact_id`` for a contact's message history (rows past sending only, so that
  starting a campaign, which inserts every delivery pending, does not pay for it); on ``campaigns``
  who paused and when; on ``inbound_messages`` the campaign and delivery a reply answers.

``tenants.plan_id`` and ``campaigns.paused_by_id`` carry no foreign key: on SQLite adding one
means copying and dropping ``tenants`` and ``campaigns``, and dropping them fires their children's
``ON DELETE CASCADE`` (and loses the triggers of migration 0006). A plan in use is never deleted,
and a pause by a user who is gone reads "a former member".
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import tenants.db

revision = "0007_operator_console"
down_revision = "0006_lean_deliveries"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DELIVERY_STATE = sa.Enum(
    "pending",
    "in_flight",
    "sent",
    "delivered",
    "read",
    "failed",
    "unknown",
    "cancelled",
    name="delivery_state",
    native_enum=False,
    length=20,
)
STANDARD = {  # the limits every tenant had by default before plans
    "daily_message_quota": 10_000,
    "max_send_rate": 100,
    "max_pages": 10,
    "max_recipients_per_campaign": 100_000,
    "max_contacts": 100_000,
}
LIMITS = tuple(STANDARD)
PAST_SENDING = "state NOT IN ('pending', 'in_flight')"  # the contact index leaves out queued deliveries
QUOTA_ROWS = "scope = 'tenant'"  # the quota index leaves out the page caps' rows

POSTGRESQL_APPEND_ONLY = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
"""
SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
]


def upgrade():
    bind = op.get_bind()
    postgresql_db = bind.dialect.name == "postgresql"

    plans = op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        *(sa.Column(key, sa.Integer(), nullable=False) for key in LIMITS),
        sa.Column("created_at", tenants.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tenants.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("name", name=op.f("uq_plans_name")),
    )
    now = tenants.db.utcnow()
    op.bulk_insert(
        plans,
        [
            {
                "name": "Free",
                "is_default": False,
                "daily_message_quota": 1_000,
                "max_send_rate": 10,
                "max_pages": 2,
                "max_recipients_per_campaign": 1_000,
                "max_contacts": 2_000,
                "created_at": now,
                "updated_at": now,
            },
            {"name": "Standard", "is_default": True, **STANDARD, "created_at": now, "updated_at": now},
            {
                "name": "Business",
                "is_default": False,
                "daily_message_quota": 250_000,
                "max_send_rate": 500,
                "max_pages": 50,
                "max_recipients_per_campaign": 1_000_000,
                "max_contacts": 2_000_000,
                "created_at": now,
                "updated_at": now,
            },
        ],
    )

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_contacts", sa.Integer(), nullable=False, server_default="100000"))
        batch_op.add_column(sa.Column("limit_overrides", JSON, nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("suspended_reason", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("suspended_at", tenants.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column("tenants", sa.Column("plan_id", sa.Integer(), nullable=True))
    op.create_index("ix_tenants_plan_id", "tenants", ["plan_id"])

    standard_id = bind.execute(sa.text("SELECT id FROM plans WHERE name = 'Standard'")).scalar_one()
    rows = bind.execute(sa.text(f"SELECT id, {', '.join(LIMITS)} FROM tenants")).all()
    for row in rows:
        overrides = {key: getattr(row, key) for key in LIMITS if getattr(row, key) != STANDARD[key]}
        bind.execute(
            sa.text("UPDATE tenants SET plan_id = :plan, limit_overrides = :overrides WHERE id = :id"),
            {"plan": standard_id, "overrides": json.dumps(overrides), "id": row.id},
        )

    op.create_table(
        "audit_log",
        sa.Column("id", ID, nullable=False),
        sa.Column("at", tenants.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor_user_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=254), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=True),
        sa.Column("before", JSON, nullable=True),
        sa.Column("after", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_action", "audit_log", ["action"])
    op.create_index("ix_audit_log_tenant_id_id", "audit_log", ["tenant_id", "id"])
    if postgresql_db:
        op.execute(POSTGRESQL_APPEND_ONLY)
    else:
        for statement in SQLITE_APPEND_ONLY:
            op.execute(statement)

    op.create_table(
        "daily_activity",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("page_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=20), nullable=False),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in ("sent", "delivered", "read", "failed", "replied")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_daily_activity_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", "campaign_id", name=op.f("pk_daily_activity")),
    )

    op.create_table(
        "delivery_attempts",
        sa.Column("id", ID, nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", ID, nullable=False),
        sa.Column("state", DELIVERY_STATE, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=50), nullable=True),
        sa.Column("error_text", sa.String(length=500), nullable=True),
        sa.Column("provider_message_id", sa.String(length=200), nullable=True),
        sa.Column("sent_at", tenants.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("recorded_at", tenants.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_delivery_attempts_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_delivery_attempts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index("ix_delivery_attempts_campaign_id", "delivery_attempts", ["campaign_id"])
    op.create_index("ix_delivery_attempts_delivery", "delivery_attempts", ["delivery_id"])
    op.create_index("ix_delivery_attempts_tenant_id", "delivery_attempts", ["tenant_id"])

    op.add_column("campaigns", sa.Column("paused_at", tenants.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column("campaigns", sa.Column("paused_by_id", sa.Integer(), nullable=True))

    op.add_column(
        "deliveries", sa.Column("retryable", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index(
        "ix_deliveries_contact",
        "deliveries",
        ["contact_id"],
        postgresql_where=sa.text(PAST_SENDING),
        sqlite_where=sa.text(PAST_SENDING),
    )

    op.create_index(
        "ix_daily_usage_quota_days",
        "daily_usage",
        ["day", "tenant_id"],
        postgresql_where=sa.text(QUOTA_ROWS),
        sqlite_where=sa.text(QUOTA_ROWS),
    )

    op.add_column("inbound_messages", sa.Column("campaign_id", sa.Integer(), nullable=True))
    op.add_column("inbound_messages", sa.Column("delivery_id", ID, nullable=True))
    op.create_index("ix_inbound_messages_campaign_id", "inbound_messages", ["campaign_id"])


def downgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.drop_index("ix_inbound_messages_campaign_id", table_name="inbound_messages")
    op.drop_column("inbound_messages", "delivery_id")
    op.drop_column("inbound_messages", "campaign_id")
    op.drop_index("ix_daily_usage_quota_days", table_name="daily_usage")
    op.drop_index("ix_deliveries_contact", table_name="deliveries")
    op.drop_column("deliveries", "retryable")
    op.drop_column("campaigns", "paused_by_id")
    op.drop_column("campaigns", "paused_at")
    op.drop_table("delivery_attempts")
    op.drop_table("daily_activity")
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_table("audit_log")
    op.drop_index("ix_tenants_plan_id", table_name="tenants")
    for column in ("plan_id", "suspended_at", "suspended_reason", "limit_overrides", "max_contacts"):
        op.drop_column("tenants", column)
    op.drop_table("plans")
