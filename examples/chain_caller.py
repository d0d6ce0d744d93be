"""A, the first caller of the chain: gets a token for B and calls B's /orders; prints B's answer, which
holds what C saw (`sub` = svc-a, `act.sub` = svc-b).

    TOKENDEALER_URL=http://127.0.0.1:5000 TOKENDEALER_CLIENT_ID=svc-a TOKENDEALER_CLIENT_SECRET=... \
        python examples/chain_caller.py http://127.0.0.1:8002
"""

from __future__ import annotations

import json
import sys

import requests

from client_lib import TokenAuth, TokenClient


def call_b(b_url: str, client: TokenClient) -> dict:
    auth = TokenAuth(client, audience="https://b.example", scope="orders:read invoices:read", origin=b_url)
    response = requests.get(f"{b_url}/orders", auth=auth, timeout=10)
    response.raise_for_status()
    return response.json()


if __name__ == "__main__":
    print(json.dumps(call_b(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8002", TokenClient.from_env()), indent=2))
