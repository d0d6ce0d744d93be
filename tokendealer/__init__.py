"""TokenDealer: an OAuth 2.0 client-credentials token server issuing RFC 9068 JWT access tokens."""

__version__ = "1.0.0"
