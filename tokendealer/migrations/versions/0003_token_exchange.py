"""Token exchange (RFC 8693) policy on clients: the audience identities a client serves (`--serves`, whose
tokens it may exchange) and the audiences it may exchange them for (`--exchange-audience`).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("serves", sa.JSON, nullable=True))
        batch.add_column(sa.Column("exchange_audiences", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("exchange_audiences")
        batch.drop_column("serves")
