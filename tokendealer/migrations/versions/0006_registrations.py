"""Dynamic registration (RFC 7591/7592): per registered client, the hash of its registration access token,
the RFC 7591 metadata that has no client column, the limits of the initial access token it was registered
with (which bound its later updates) and who registered it.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registrations",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(128), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("limits", sa.JSON, nullable=False),
        sa.Column("registered_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("registrations")
