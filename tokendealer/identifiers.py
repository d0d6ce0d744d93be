"""Fresh random identifiers on the request path: token ids (`jti`, RFC 7519 §4.1.7) and request ids.

They come from OpenSSL's CSPRNG (`ssl.RAND_bytes`: seeded by the kernel, reseeded after a fork), as
unpredictable as `secrets`, but without its `getrandom(2)` call: a system call releases the GIL, and under
granian each release on the request path hands it to one of the server's own threads and back.
"""

from __future__ import annotations

import ssl

from client_lib.jose import b64url


def token_id() -> str:
    """144 random bits, base64url without padding (24 characters, as `secrets.token_urlsafe(18)`)."""
    return b64url(ssl.RAND_bytes(18))


def request_id() -> str:
    """128 random bits as 32 hex digits (as `secrets.token_hex(16)`)."""
    return ssl.RAND_bytes(16).hex()
