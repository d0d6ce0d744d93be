"""Client incarnations: a deleted client id leaves a tombstone, and a client re-created under that id
refuses tokens issued before it (`tokens_not_before`). The unused `name` column (always the client id) goes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "client_tombstones",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("deleted_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("tokens_not_before", sa.Float, nullable=True))
        batch.drop_column("name")


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("tokens_not_before")
        batch.add_column(sa.Column("name", sa.String(64), nullable=False, server_default=""))
    op.drop_table("client_tombstones")
