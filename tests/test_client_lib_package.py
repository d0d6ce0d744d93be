"""client_lib is its own light distribution: none of the server's dependencies, in its metadata or on import."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import client_lib

ROOT = Path(__file__).resolve().parent.parent
SERVER_PACKAGES = {"tokendealer", "flask", "flask-limiter", "sqlalchemy", "granian", "psycopg", "redis", "alembic", "limits", "click"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_client_distribution_depends_on_pyjwt_and_requests_only():
    project = tomllib.loads((ROOT / "client_lib" / "pyproject.toml").read_text())["project"]
    assert project["name"] == "tokendealer-client"
    assert {_name(r) for r in project["dependencies"]} == {"pyjwt", "requests"}
    assert set(project["optional-dependencies"]) == {"httpx", "fastapi", "flask"}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    assert not extras & (SERVER_PACKAGES - {"flask"})


def test_server_depends_on_this_checkouts_client_and_shares_its_version():
    setup = (ROOT / "setup.py").read_text()
    assert '"tokendealer-client @ {CLIENT.as_uri()}"' in setup  # a direct reference, never a name an index resolves
    assert "version=VERSION" in setup and re.search(r'^__version__ = "[^"]+"$', (ROOT / "client_lib/__init__.py").read_text(), re.M)
    assert client_lib.__version__


def test_import_client_lib_loads_no_server_or_web_framework_module():
    code = (
        "import json, sys; import client_lib; from client_lib import TokenAuth, TokenClient, TokenVerifier, InvalidToken; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(result.stdout))
    assert not loaded & {"flask", "werkzeug", "sqlalchemy", "granian", "psycopg", "redis", "alembic", "tokendealer", "httpx", "fastapi"}
