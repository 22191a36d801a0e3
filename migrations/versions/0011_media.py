"""Media messages: the type of a template's media

Revision ID: 0011_media
Revises: 0010_event_hooks
Create Date: 2026-12-07

* ``templates.media_type``: image, document, video or audio as chosen in the editor; NULL means the
  type is told by the media URL's file extension (``tenants.templating.media_type_of``).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0011_media'
down_revision = '0010_event_hooks'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('templates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('media_type', sa.String(length=20), nullable=True))


def downgrade():
    with op.batch_alter_table('templates', schema=None) as batch_op:
        batch_op.drop_column('media_type')
