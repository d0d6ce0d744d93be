"""Workload identity federation: trusted external issuers and the rules by which a client trusts their
workloads' tokens (RFC 7523 client assertions and JWT bearer grants).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trusted_issuers",
        sa.Column("issuer", sa.String(2048), primary_key=True),
        sa.Column("jwks_uri", sa.String(2048), nullable=True),
        sa.Column("jwks", sa.JSON, nullable=True),
        sa.Column("allow_http", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "federation_rules",
        sa.Column("rule_id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False, index=True),
        sa.Column("issuer", sa.String(2048), nullable=False, index=True),
        sa.Column("subject", sa.String(2048), nullable=False),
        sa.Column("audience", sa.String(2048), nullable=False),
        sa.Column("conditions", sa.JSON, nullable=False),
        sa.Column("single_use", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("federation_rules")
    op.drop_table("trusted_issuers")
