"""`make run`'s demo client: created if missing, else given a fresh secret; prints it and a curl line."""

from __future__ import annotations

import sys

from . import db
from .clients import ClientStore, SecretHasher
from .config import Config, ConfigError
from .keystores import make_key_store

DEMO_ID = "demo"
DEMO_AUDIENCE = "https://api.example.com"
DEMO_SCOPES = ("demo:read", "demo:write")


def main() -> None:
    try:
        config = Config.load()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    store = ClientStore(db.make_engine(config.database_url), SecretHasher(make_key_store(config).pepper()))
    if store.get(DEMO_ID, cached=False) is None:
        _, secret = store.create(DEMO_ID, scopes=DEMO_SCOPES, audiences=[DEMO_AUDIENCE])
    else:
        _, secret = store.rotate_secret(DEMO_ID)
    endpoint = config.token_endpoint
    print(
        f"\nDemo client (a fresh secret on every `make run`):\n"
        f"  client_id:     {DEMO_ID}\n"
        f"  client_secret: {secret}\n\n"
        f"Fetch a token:\n"
        f"  curl -s -u '{DEMO_ID}:{secret}' -d grant_type=client_credentials -d scope=demo:read {endpoint}\n"
    )


if __name__ == "__main__":
    main()
