"""The start-up schema check (`serve` refuses a database that lacks the current Alembic revision)."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory

from tokendealer import db

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
    with pytest.raises(db.SchemaError, match=r"is at schema revision 0000, this release needs 0002; run"):
        db.check_schema(engine)
