import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "client_lib"
# One version for both distributions: the client library's.
VERSION = re.search(r'^__version__ = "([^"]+)"$', (CLIENT / "__init__.py").read_text(encoding="utf-8"), re.M).group(1)

setup(
    name="tokendealer",
    version=VERSION,
    description="OAuth 2.0 client-credentials token server issuing RFC 9068 JWT access tokens",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # client_lib is its own distribution (client_lib/pyproject.toml), which the server depends on.
    # migrations/ holds Alembic's scripts (no __init__.py): listed so they ship with the package.
    packages=find_packages(include=["tokendealer", "tokendealer.*"])
    + ["tokendealer.migrations", "tokendealer.migrations.versions"],
    package_data={"tokendealer.migrations": ["*.mako"], "tokendealer.schemas": ["*.json"]},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=[
        # A direct reference to this checkout's client library, never a name an index could answer for.
        f"tokendealer-client @ {CLIENT.as_uri()}",
        "Flask>=3.0",
        "PyJWT[crypto]>=2.8",
        "cryptography>=42.0",
        "SQLAlchemy>=2.0",
        "granian>=2.0",
        "uvloop>=0.19",
        "requests>=2.31",
        "click>=8.1",
        "limits>=3.10",
        "Flask-Limiter>=3.5",
        "prometheus_client>=0.20",
        "alembic>=1.13",
        "psycopg[binary]>=3.1",
        "redis>=5.0",
        # `tokendealer apply`: its file (TOML or YAML) is checked against tokendealer/schemas/apply.schema.json.
        "jsonschema>=4.18",
        "PyYAML>=6.0",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "schemathesis>=4.0",
            "hypothesis>=6.100",
            "httpx>=0.27",
            "fastapi>=0.110",
            "anyio>=4.0",
            "Authlib>=1.6",
            "joserfc>=1.0",
            "ruff>=0.5",
            "mypy>=1.10",
            "types-requests>=2.31",
            "python-pkcs11>=0.10",
            "opentelemetry-sdk>=1.25",
            "opentelemetry-exporter-otlp-proto-http>=1.25",
            # deploy/kubernetes manifests are validated against the Kubernetes API schemas (tests/test_deploy.py).
            "kubernetes-validate>=1.28",
        ],
        # TOKENDEALER_KEYRING=pkcs11: signing keys in an HSM (tokendealer/hsm.py).
        "hsm": ["python-pkcs11>=0.10"],
        # Tracing (README "Operations"): off until OTEL_TRACES_EXPORTER names an exporter.
        "otel": ["opentelemetry-sdk>=1.25", "opentelemetry-exporter-otlp-proto-http>=1.25"],
        "bench": [
            "gunicorn>=22.0",
            "matplotlib>=3.7",
            "py-spy>=0.3",
        ],
    },
    entry_points={"console_scripts": ["tokendealer=tokendealer.cli:run"]},
)
