"""Database schema and engine (SQLAlchemy Core; SQLite for one instance, PostgreSQL for several)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

metadata = sa.MetaData()

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
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
    # Set when the id belonged to a deleted client: tokens issued up to then belong to that client.
    sa.Column("tokens_not_before", sa.Float, nullable=True),
    # RFC 8693 policy: the audience identities the client serves, and what it may exchange tokens for.
    sa.Column("serves", sa.JSON, nullable=True),
    sa.Column("exchange_audiences", sa.JSON, nullable=True),
    # Sender-constrained tokens: DPoP proofs required (RFC 9449), the tls_client_auth identity (RFC 8705 §2.1).
    sa.Column("require_dpop", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("tls_subject", sa.String(2048), nullable=True),
    sa.Column("tls_san", sa.String(2048), nullable=True),
)

# When each deleted client id was deleted, so a client re-created under it does not revive old tokens.
client_tombstones = sa.Table(
    "client_tombstones",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("deleted_at", sa.Float, nullable=False),
)

# RFC 7009: revoked access tokens, by jti, until the token would have expired anyway.
revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

# RFC 7523 §3: private_key_jwt assertion ids seen, so none is accepted twice.
used_assertions = sa.Table(
    "used_assertions",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("jti", sa.String(256), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


# The database keyring (TOKENDEALER_KEYRING=database): private keys encrypted with AES-GCM under the KEK.
signing_keys = sa.Table(
    "signing_keys",
    metadata,
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

# One row whose version changes with every keyring write: what instances poll, and what writers lock.
keyring_state = sa.Table(
    "keyring_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Workload identity federation: external OIDC issuers whose tokens clients may trust (keys from discovery's
# jwks_uri, or a given JWK Set), and per-client rules matching those tokens.
trusted_issuers = sa.Table(
    "trusted_issuers",
    metadata,
    sa.Column("issuer", sa.String(2048), primary_key=True),
    sa.Column("jwks_uri", sa.String(2048), nullable=True),
    sa.Column("jwks", sa.JSON, nullable=True),
    sa.Column("allow_http", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

federation_rules = sa.Table(
    "federation_rules",
    metadata,
    sa.Column("rule_id", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(64), nullable=False, index=True),
    sa.Column("issuer", sa.String(2048), nullable=False, index=True),
    sa.Column("subject", sa.String(2048), nullable=False),
    sa.Column("audience", sa.String(2048), nullable=False),
    # [[dotted claim path, exact value or glob], ...]
    sa.Column("conditions", sa.JSON, nullable=False),
    sa.Column("single_use", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# RFC 7591/7592 dynamic registration: the registration access token (hashed like client secrets), the
# metadata without a client column, the initial access token's limits (they bound updates) and its client.
registrations = sa.Table(
    "registrations",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("token_hash", sa.String(128), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("limits", sa.JSON, nullable=False),
    sa.Column("registered_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Rows that expire (revocations, used assertion ids) are purged this long after their expiry, so a worker
# whose clock jumps ahead by less than that cannot delete entries that are still live elsewhere.
PURGE_GRACE = 86400.0

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest revision in MIGRATIONS (a test keeps the two in step), and the table Alembic records it in.
SCHEMA_HEAD = "0006"
VERSION_TABLE = sa.Table("alembic_version", sa.MetaData(), sa.Column("version_num", sa.String(32), primary_key=True))


def make_engine(url: str) -> Engine:
    """An engine for `url`; a SQLite file is created private to its owner and WAL mode used for several workers."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private(Path(parsed.database))
        engine = sa.create_engine(url, connect_args={"timeout": 5, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # journal_mode=WAL is set once by upgrade_schema (it persists in the file); switching it
            # here would take a write lock each time a worker connects.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _create_private(path: Path) -> None:
    """Create a SQLite file's folder (0700) and the empty file (0600) when absent. SQLite gives its -wal and
    -shm files the database file's mode, so the client registry and its journal stay the owner's alone."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # there already, or not creatable here: SQLite's own open then says why


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent); SQLite files use WAL for concurrent readers."""
    from alembic import command  # noqa: PLC0415 (only `init` and `db upgrade` need Alembic)
    from alembic.config import Config as AlembicConfig  # noqa: PLC0415

    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        alembic.attributes["connection"] = conn
        command.upgrade(alembic, "head")
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")


class SchemaError(Exception):
    """The database schema is missing or older than this release."""


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the database is at SCHEMA_HEAD.

    Reads Alembic's version table with SQLAlchemy alone: `serve` runs this in the process its workers are
    forked from, and importing Alembic there would add its modules to every worker's memory.
    """
    with engine.connect() as conn:
        current = None
        if sa.inspect(conn).has_table(VERSION_TABLE.name):
            current = conn.execute(sa.select(VERSION_TABLE.c.version_num)).scalar()
    if current != SCHEMA_HEAD:
        state = "has no TokenDealer schema" if current is None else f"is at schema revision {current}, this release needs {SCHEMA_HEAD}"
        raise SchemaError(f"the database {state}; run `tokendealer init` (or `tokendealer db upgrade`)")


def ping(engine: Engine) -> None:
    """Raise if the database does not answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
