"""`make run`'s demo clients: a service client and an admin client (for the admin API), each created if
missing, else given a fresh secret; prints them and curl lines using them."""

from __future__ import annotations

import sys

from .audit import AuditLog
from .config import Config, ConfigError
from .management import ADMIN_SCOPE, READ_SCOPE, Management, Missing, cli_actor

DEMO_ID = "demo"
DEMO_AUDIENCE = "https://api.example.com"
DEMO_SCOPES = ("demo:read", "demo:write")
DEMO_ADMIN_ID = "demo-admin"


def fresh_secret(manage: Management, client_id: str, scopes: tuple[str, ...], audience: str) -> str:
    """The client's secret: a new client, or a rotated secret for the one already there."""
    actor = cli_actor()
    try:
        manage.show_client(client_id)
    except Missing:
        _, secret = manage.create_client(actor, "demo", client_id, scopes=scopes, audiences=[audience])
        assert secret is not None  # a client without keys gets a secret
        return secret
    return manage.rotate_secret(actor, "demo", client_id)[1]


def main() -> None:
    try:
        config = Config.load()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    manage = Management.open(config, AuditLog(config.audit_log))
    secret = fresh_secret(manage, DEMO_ID, DEMO_SCOPES, DEMO_AUDIENCE)
    admin_secret = fresh_secret(manage, DEMO_ADMIN_ID, (ADMIN_SCOPE, READ_SCOPE), config.management_audience)
    endpoint = config.token_endpoint
    print(
        f"\nDemo client (a fresh secret on every `make run`):\n"
        f"  client_id:     {DEMO_ID}\n"
        f"  client_secret: {secret}\n\n"
        f"Fetch a token:\n"
        f"  curl -s -u '{DEMO_ID}:{secret}' -d grant_type=client_credentials -d scope=demo:read {endpoint}\n\n"
        f"Demo admin client (scopes {ADMIN_SCOPE} {READ_SCOPE}, audience {config.management_audience}):\n"
        f"  client_id:     {DEMO_ADMIN_ID}\n"
        f"  client_secret: {admin_secret}\n\n"
        f"List the clients through the admin API:\n"
        f"  TOKEN=$(curl -s -u '{DEMO_ADMIN_ID}:{admin_secret}' -d grant_type=client_credentials {endpoint} "
        f"| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
        f'  curl -s -H "Authorization: Bearer $TOKEN" {config.url("/admin/clients")}\n'
    )


if __name__ == "__main__":
    main()
