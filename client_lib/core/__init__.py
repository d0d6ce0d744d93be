"""The I/O-free core shared by the sync and async shells: token-cache, retry, origin and JWKS-cache
decisions, client credentials, and what makes a JWT an acceptable access token. Nothing here performs
network I/O; the JOSE rules themselves are `client_lib.jose`'s."""
