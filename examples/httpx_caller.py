"""An async caller of the FastAPI example: HttpxTokenAuth fetches, caches and attaches the token.

    TOKENDEALER_URL=http://localhost:5000 TOKENDEALER_CLIENT_ID=... TOKENDEALER_CLIENT_SECRET=... \
        python examples/httpx_caller.py http://localhost:8002
"""

from __future__ import annotations

import asyncio
import os
import sys

import httpx

from client_lib import AsyncTokenClient, HttpxTokenAuth


async def list_invoices(service_url: str, client: AsyncTokenClient, audience: str = "https://billing", transport=None) -> dict:
    auth = HttpxTokenAuth(client, audience=audience, scope="invoices:read")
    async with httpx.AsyncClient(auth=auth, transport=transport, base_url=service_url) as http:
        response = await http.get("/invoices")
        response.raise_for_status()
        return response.json()


async def main() -> None:
    env = os.environ
    client = AsyncTokenClient(env["TOKENDEALER_URL"], env["TOKENDEALER_CLIENT_ID"], env["TOKENDEALER_CLIENT_SECRET"])
    print(await list_invoices(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8002", client))


if __name__ == "__main__":
    asyncio.run(main())
