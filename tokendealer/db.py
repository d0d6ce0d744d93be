"""Database schema and engine (SQLAlchemy Core; SQLite for one instance, PostgreSQL for several)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

metadata = sa.MetaData()

clients = sa.Table(
    "clients",
    metadata,
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


def make_engine(url: str) -> Engine:
    """An engine for `url`; a SQLite file's folder is created and WAL mode used for several workers."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 5, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # noqa: ANN001
            # journal_mode=WAL is set once by create_schema (it persists in the file); switching it
            # here would take a write lock each time a worker connects.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)


def create_schema(engine: Engine) -> None:
    """Create every table that does not exist yet (idempotent); SQLite files use WAL for concurrent readers."""
    metadata.create_all(engine)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")


def ping(engine: Engine) -> None:
    """Raise if the database does not answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
