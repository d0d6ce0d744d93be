"""Sender-constrained tokens on clients: `require_dpop` (RFC 9449: plain bearer requests refused) and the
certificate identity of a `tls_client_auth` client (RFC 8705 §2.1: subject DN or one SAN).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("require_dpop", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("tls_subject", sa.String(2048), nullable=True))
        batch.add_column(sa.Column("tls_san", sa.String(2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("tls_san")
        batch.drop_column("tls_subject")
        batch.drop_column("require_dpop")
