"""Initial schema: clients, revoked tokens, used assertions, and the database keyring.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("default_scopes", sa.JSON, nullable=True),
        sa.Column("audiences", sa.JSON, nullable=False),
        sa.Column("default_audience", sa.String(2048), nullable=True),
        sa.Column("token_ttl", sa.Integer, nullable=True),
        sa.Column("claims", sa.JSON, nullable=False),
        sa.Column("jwks", sa.JSON, nullable=True),
        sa.Column("jwks_uri", sa.String(2048), nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=True),
        sa.Column("previous_secret_hash", sa.String(128), nullable=True),
        sa.Column("previous_secret_expires_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(128), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "used_assertions",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(256), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("activated_at", sa.Float, nullable=True),
        sa.Column("retired_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("jwk", sa.JSON, nullable=False),
        sa.Column("private_key", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "keyring_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("keyring_state", "signing_keys", "used_assertions", "revoked_tokens", "clients"):
        op.drop_table(table)
