"""The start-up schema check (`serve` refuses a database that lacks the current Alembic revision)."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from tokendealer import db
from tokendealer.clients import ClientStore, SecretHasher

from .conftest import both_databases


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    return both_databases(request)


def test_schema_head_is_the_newest_migration():
    assert ScriptDirectory(str(db.MIGRATIONS)).get_current_head() == db.SCHEMA_HEAD


def test_upgraded_database_passes(database_url):
    engine = db.make_engine(database_url)
    db.upgrade_schema(engine)
    db.check_schema(engine)


def test_empty_database_is_refused(database_url):
    with pytest.raises(db.SchemaError, match=r"^the database has no TokenDealer schema; run `tokendealer init`"):
        db.check_schema(db.make_engine(database_url))


def test_older_revision_is_refused(database_url):
    engine = db.make_engine(database_url)
    db.upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(db.VERSION_TABLE.update().values(version_num="0000"))
    with pytest.raises(db.SchemaError, match=r"is at schema revision 0000, this release needs " + db.SCHEMA_HEAD + "; run"):
        db.check_schema(engine)


def test_upgrade_from_0001_keeps_clients(database_url):
    """A database made by the first release keeps its clients through migration 0002."""
    engine = db.make_engine(database_url)
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(db.MIGRATIONS))
    with engine.begin() as conn:
        alembic.attributes["connection"] = conn
        command.upgrade(alembic, "0001")
        conn.exec_driver_sql(
            "INSERT INTO clients (client_id, name, scopes, audiences, claims, enabled, created_at, updated_at) "
            """VALUES ('old', 'old', '["read"]', '["https://api"]', '{}', true, 1, 1)"""
        )
    db.upgrade_schema(engine)
    db.check_schema(engine)
    client = ClientStore(engine, SecretHasher(b"p" * 32)).require("old")
    assert client.scopes == ("read",) and client.tokens_not_before is None
