"""A caller of the example service: TokenAuth fetches, caches and attaches the token.

    TOKENDEALER_URL=http://localhost:5000 TOKENDEALER_CLIENT_ID=... TOKENDEALER_CLIENT_SECRET=... \
        python examples/caller.py http://localhost:8001
"""

from __future__ import annotations

import sys

import requests

from client_lib import TokenAuth, TokenClient


def list_invoices(service_url: str, client: TokenClient, audience: str = "https://billing") -> dict:
    response = requests.get(f"{service_url}/invoices", auth=TokenAuth(client, audience=audience, scope="invoices:read"), timeout=5)
    response.raise_for_status()
    return response.json()


if __name__ == "__main__":
    print(list_invoices(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8001", TokenClient.from_env()))
