"""Lean deliveries: statement-level campaign checks instead of per-row foreign keys; indexes for claims

Revision ID: 0006_lean_deliveries
Revises: 0005_campaigns
Create Date: 2026-12-02

Starting a campaign inserts one delivery per recipient in one statement, and dispatch updates
each row twice. On PostgreSQL every foreign key of a row is one lookup per inserted row: the
three of ``deliveries`` took 2.4 s of a 4.5 s start of 100,000 recipients (bench/campaign_start.py
--explain). They become:

* a statement-level trigger that checks, once per INSERT, that every ``(tenant_id, campaign_id)``
  the statement wrote is a campaign of that tenant (locking those campaigns FOR KEY SHARE, as a
  foreign key would), a row trigger that refuses moving a delivery to another campaign or tenant
  (it fires only for UPDATEs that set those columns, which the app never does), and a trigger
  that deletes a campaign's deliveries with it (and so with its tenant, whose campaigns cascade);
* no key on ``contact_id``: nothing looks deliveries up by contact, and a deleted contact's id
  reads as no contact, as the NULL that ``ON DELETE SET NULL`` wrote did.

Indexes: a claim takes the campaign's due rows in ``(due_at, id)`` order, and the due index
lacked ``id``, so every claim sorted all the campaign's pending rows (92 ms at 100,000, spilling
to disk); with ``id`` in it the batch is read off the index (6 ms). ``ix_deliveries_tenant_id``,
``ix_deliveries_contact`` and the unique (campaign, contact) pair go (every query on deliveries
names its campaign; start picks one row per address itself); the lease and provider-message
indexes become partial, so rows are in them only while in flight, or once the provider gave an id.

SQLite (the embedded default) gets the same rules as row-level triggers.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_lean_deliveries"
down_revision = "0005_campaigns"
branch_labels = None
depends_on = None

POSTGRESQL_TRIGGERS = """
CREATE FUNCTION deliveries_check_campaigns() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (
    SELECT 1 FROM (SELECT DISTINCT tenant_id, campaign_id FROM written) AS w
    WHERE NOT EXISTS (
      SELECT 1 FROM campaigns c WHERE c.id = w.campaign_id AND c.tenant_id = w.tenant_id FOR KEY SHARE
    )
  ) THEN
    RAISE EXCEPTION 'deliveries must belong to a campaign of their tenant'
      USING ERRCODE = 'foreign_key_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER deliveries_check_campaigns AFTER INSERT ON deliveries
  REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION deliveries_check_campaigns();

CREATE FUNCTION deliveries_refuse_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'a delivery cannot move to another campaign or tenant'
    USING ERRCODE = 'foreign_key_violation';
END $$;

CREATE TRIGGER deliveries_refuse_move BEFORE UPDATE OF tenant_id, campaign_id ON deliveries
  FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id
                     OR OLD.campaign_id IS DISTINCT FROM NEW.campaign_id)
  EXECUTE FUNCTION deliveries_refuse_move();

CREATE FUNCTION campaigns_delete_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM deliveries d USING removed r WHERE d.campaign_id = r.id;
  RETURN NULL;
END $$;

CREATE TRIGGER campaigns_delete_deliveries AFTER DELETE ON campaigns
  REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION campaigns_delete_deliveries();
"""

POSTGRESQL_DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS campaigns_delete_deliveries ON campaigns;
DROP TRIGGER IF EXISTS deliveries_refuse_move ON deliveries;
DROP TRIGGER IF EXISTS deliveries_check_campaigns ON deliveries;
DROP FUNCTION IF EXISTS campaigns_delete_deliveries();
DROP FUNCTION IF EXISTS deliveries_refuse_move();
DROP FUNCTION IF EXISTS deliveries_check_campaigns();
"""

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER deliveries_check_campaigns BEFORE INSERT ON deliveries
    WHEN NOT EXISTS (SELECT 1 FROM campaigns WHERE id = NEW.campaign_id AND tenant_id = NEW.tenant_id)
    BEGIN SELECT RAISE(ABORT, 'deliveries must belong to a campaign of their tenant'); END
    """,
    """
    CREATE TRIGGER deliveries_refuse_move BEFORE UPDATE OF tenant_id, campaign_id ON deliveries
    WHEN OLD.tenant_id IS NOT NEW.tenant_id OR OLD.campaign_id IS NOT NEW.campaign_id
    BEGIN SELECT RAISE(ABORT, 'a delivery cannot move to another campaign or tenant'); END
    """,
    """
    CREATE TRIGGER campaigns_delete_deliveries AFTER DELETE ON campaigns
    BEGIN DELETE FROM deliveries WHERE campaign_id = OLD.id; END
    """,
]

SQLITE_DROP_TRIGGERS = [
    "DROP TRIGGER IF EXISTS campaigns_delete_deliveries",
    "DROP TRIGGER IF EXISTS deliveries_refuse_move",
    "DROP TRIGGER IF EXISTS deliveries_check_campaigns",
]

IN_FLIGHT = "state = 'in_flight'"
HAS_PROVIDER_ID = "provider_message_id IS NOT NULL"


def upgrade():
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_due")
        batch_op.drop_index("ix_deliveries_tenant_id")
        batch_op.drop_index("ix_deliveries_contact")
        batch_op.drop_index("ix_deliveries_lease")
        batch_op.drop_index("ix_deliveries_provider_message")
        batch_op.drop_constraint("uq_deliveries_campaign_contact", type_="unique")
        batch_op.drop_constraint("fk_deliveries_campaign_id_campaigns", type_="foreignkey")
        batch_op.drop_constraint("fk_deliveries_contact_id_contacts", type_="foreignkey")
        batch_op.drop_constraint("fk_deliveries_tenant_id_tenants", type_="foreignkey")
        batch_op.create_index("ix_deliveries_due", ["campaign_id", "state", "due_at", "id"])
        batch_op.create_index(
            "ix_deliveries_in_flight",
            ["lease_until"],
            postgresql_where=sa.text(IN_FLIGHT),
            sqlite_where=sa.text(IN_FLIGHT),
        )
        batch_op.create_index(
            "ix_deliveries_provider_message",
            ["provider_message_id"],
            postgresql_where=sa.text(HAS_PROVIDER_ID),
            sqlite_where=sa.text(HAS_PROVIDER_ID),
        )
    if postgresql:
        op.execute(POSTGRESQL_TRIGGERS)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_DROP_TRIGGERS)
    else:
        for statement in SQLITE_DROP_TRIGGERS:
            op.execute(statement)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_provider_message")
        batch_op.drop_index("ix_deliveries_in_flight")
        batch_op.drop_index("ix_deliveries_due")
        batch_op.create_index("ix_deliveries_due", ["campaign_id", "state", "due_at"], unique=False)
        batch_op.create_foreign_key(
            "fk_deliveries_tenant_id_tenants", "tenants", ["tenant_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.create_foreign_key(
            "fk_deliveries_contact_id_contacts", "contacts", ["contact_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_foreign_key(
            "fk_deliveries_campaign_id_campaigns", "campaigns", ["campaign_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.create_unique_constraint("uq_deliveries_campaign_contact", ["campaign_id", "contact_id"])
        batch_op.create_index("ix_deliveries_provider_message", ["provider_message_id"], unique=False)
        batch_op.create_index("ix_deliveries_lease", ["state", "lease_until"], unique=False)
        batch_op.create_index("ix_deliveries_contact", ["contact_id"], unique=False)
        batch_op.create_index("ix_deliveries_tenant_id", ["tenant_id"], unique=False)
