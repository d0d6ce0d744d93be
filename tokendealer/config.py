"""Typed configuration read once from the environment and an optional TOML file."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .clients import SCOPE_TOKEN_RE

PREFIX = "TOKENDEALER_"
# The hard bound on TOKENDEALER_EXCHANGE_MAX_DEPTH: it also bounds the work of checking a presented chain.
MAX_EXCHANGE_DEPTH = 16
_METRICS_TOKEN_RE = re.compile(r"[!-~]{16,}")
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_LIMIT_RE = re.compile(r"^\s*\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day|month|year)s?\s*$", re.I)


class ConfigError(Exception):
    """A configuration value is unusable; the message names the variable."""


@dataclass(frozen=True)
class Config:
    """Every setting of the server, validated by `Config.load`."""

    issuer: str = "http://localhost:5000"
    keys_dir: Path = Path("./keys")
    database_url: str = "sqlite:///./var/tokendealer.db"
    token_ttl: int = 3600
    max_token_ttl: int = 86400
    ratelimit_storage: str = "memory://"
    auth_failure_limit: str = "10/minute"
    auth_failure_limit_per_address: str = "100/minute"
    ratelimit: str | None = None
    keyring: str = "file"
    key_encryption_key: str | None = None
    key_encryption_key_file: str | None = None
    # TOKENDEALER_KEYRING=pkcs11: the PKCS#11 module (.so), the token's label and its user PIN (or a file holding it).
    pkcs11_module: str | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: str | None = field(default=None, repr=False)
    pkcs11_pin_file: str | None = None
    # private_key_jwt replay cache: "database" (default) or a redis:// URL shared by every instance.
    replay_cache: str = "database"
    # How often each process looks for a changed keyring on disk (seconds).
    keyring_reload_interval: float = 2.0
    # JWKS Cache-Control max-age; the rotation interval must exceed it (README).
    jwks_max_age: int = 300
    # Accepted clock skew when checking exp/nbf/iat of tokens and assertions.
    leeway: int = 30
    # private_key_jwt: how far ahead an assertion's exp may lie.
    assertion_max_lifetime: int = 3600
    # Workload identity federation: the longest lifetime (exp - iat) a trusted issuer's token may have, and how
    # soon an unknown kid may refetch an issuer's keys again.
    federation_max_lifetime: int = 86400
    federation_key_cooldown: float = 30.0
    max_body_bytes: int = 65536
    # Seconds a request's whole body may take to arrive (`tokendealer serve`); past it, 408 and the connection closes.
    body_timeout: float = 10.0
    # A count of X-Forwarded-For hops trusted from any peer, or the proxies' addresses (comma-separated IPs or
    # CIDRs): then one hop, and the client-certificate header, only from them.
    trusted_proxies: str | None = None
    # RFC 8705 / RFC 9440: the header in which a trusted proxy passes the client's TLS certificate, and the CA
    # certificates (PEM) that must have issued a tls_client_auth client's certificate (when set).
    client_cert_header: str | None = None
    client_ca_file: str | None = None
    # How long a process may serve a cached client record before re-reading it.
    client_cache_seconds: float = 2.0
    audit_log: str | None = None
    log_json: bool = False
    # /metrics: peer networks allowed to read it (comma-separated CIDRs), and a bearer token required when set.
    metrics_allow: str = "127.0.0.0/8,::1"
    metrics_token: str | None = None
    # The scopes discovery publishes in scopes_supported (space-separated); the others stay unnamed.
    public_scopes: str | None = None
    # /verify_token: whether the caller must authenticate as a client, and its request rate per address.
    verify_token_auth: bool = False
    verify_token_limit: str | None = "20/second"
    # RFC 8693: how many actors a token-exchange chain may nest (act within act).
    exchange_max_depth: int = 4
    # RFC 9449: whether token requests' DPoP proofs must carry a server nonce (§8), how old a proof may be and
    # how far ahead of this server's clock its iat may lie (§4.3 item 11, §11.1).
    dpop_nonce: bool = False
    dpop_max_age: int = 60
    dpop_max_skew: int = 5
    # The admin API (SPEC §3.2): the audience its bearer tokens must carry (default {issuer}/admin), and a
    # separate host:port serving it alone (the public listener then answers 404 under /admin/).
    admin_audience: str | None = None
    admin_listen: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def token_endpoint(self) -> str:
        return self.url("/oauth/token")

    def url(self, path: str) -> str:
        """Absolute URL of `path` under the issuer."""
        return self.issuer.rstrip("/") + path

    @property
    def management_audience(self) -> str:
        """TOKENDEALER_ADMIN_AUDIENCE, or `{issuer}/admin`."""
        return self.admin_audience or self.url("/admin")

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """TOKENDEALER_ADMIN_LISTEN as (host, port), or None when the admin API shares the public listener."""
        if not self.admin_listen:
            return None
        host, _, port = self.admin_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """TOKENDEALER_METRICS_ALLOW as networks."""
        return _networks(self.metrics_allow)

    @property
    def proxy_hops(self) -> int:
        """TOKENDEALER_TRUSTED_PROXIES given as a count of X-Forwarded-For hops, else 0."""
        text = (self.trusted_proxies or "0").strip()
        return int(text) if text.isdigit() else 0

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """TOKENDEALER_TRUSTED_PROXIES given as addresses, else none."""
        text = (self.trusted_proxies or "0").strip()
        return () if text.isdigit() else _networks(text)

    @property
    def plain_http_off_loopback(self) -> bool:
        """Whether the issuer is plain http on a host other than loopback: secrets and tokens would cross a
        network in clear (http is for development on loopback)."""
        parts = urlsplit(self.issuer)
        if parts.scheme != "http" or parts.hostname == "localhost":
            return False
        try:
            return not ipaddress.ip_address(parts.hostname or "").is_loopback
        except ValueError:
            return True

    @property
    def scopes_published(self) -> list[str]:
        """TOKENDEALER_PUBLIC_SCOPES as a list, in the order given."""
        return list(dict.fromkeys((self.public_scopes or "").split()))

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> Config:
        """Merge defaults, the TOML file, the environment and overrides (later wins); validate."""
        raw: dict[str, Any] = {}
        if config_file is not None:
            raw.update(_read_toml(Path(config_file)))
        env = os.environ if environ is None else environ
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        for name in names:
            value = env.get(PREFIX + name.upper())
            if value is not None:
                raw[name] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(raw) - names
        if unknown:
            raise ConfigError(f"unknown setting {PREFIX}{sorted(unknown)[0].upper()}")
        return cls(**{k: _coerce(k, v) for k, v in raw.items()}).validated()

    def validated(self) -> Config:
        """Return self after checking every value, or raise ConfigError naming the variable."""
        parts = urlsplit(self.issuer)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            _bad("issuer", "must be an http(s) URL without query or fragment")
        try:
            url = make_url(self.database_url)
        except ArgumentError:
            _bad("database_url", "is not a database URL (sqlite:///path or postgresql://...)")
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            _bad("database_url", "must be sqlite:// or postgresql://")
        if self.token_ttl <= 0:
            _bad("token_ttl", "must be a positive number of seconds")
        if self.max_token_ttl <= 0:
            _bad("max_token_ttl", "must be a positive number of seconds")
        if self.token_ttl > self.max_token_ttl:
            _bad("token_ttl", "must not exceed TOKENDEALER_MAX_TOKEN_TTL")
        for name in ("jwks_max_age", "leeway", "federation_key_cooldown", "dpop_max_skew"):
            if getattr(self, name) < 0:
                _bad(name, "must not be negative")
        for name in (
            "keyring_reload_interval",
            "assertion_max_lifetime",
            "max_body_bytes",
            "body_timeout",
            "federation_max_lifetime",
            "dpop_max_age",
        ):
            if getattr(self, name) <= 0:
                _bad(name, "must be positive")
        for name in ("auth_failure_limit", "auth_failure_limit_per_address", "ratelimit", "verify_token_limit"):
            value = getattr(self, name)
            if value is not None and not all(_LIMIT_RE.match(p) for p in value.split(";")):
                _bad(name, "must be a rate such as 10/minute")
        if self.dpop_max_age > 3600:
            _bad("dpop_max_age", "must be at most 3600 seconds")
        if not 1 <= self.exchange_max_depth <= MAX_EXCHANGE_DEPTH:
            _bad("exchange_max_depth", f"must be between 1 and {MAX_EXCHANGE_DEPTH}")
        if self.keyring not in ("file", "database", "pkcs11"):
            _bad("keyring", "must be file, database or pkcs11")
        if self.keyring == "database":
            self.key_encryption_key_bytes()
        if self.keyring == "pkcs11":
            if not self.pkcs11_module or not Path(self.pkcs11_module).is_file():
                _bad("pkcs11_module", "must name the PKCS#11 library (.so) of the HSM when TOKENDEALER_KEYRING=pkcs11")
            if not self.pkcs11_token_label:
                _bad("pkcs11_token_label", "is required when TOKENDEALER_KEYRING=pkcs11")
            self.pkcs11_user_pin()
        if self.replay_cache != "database" and not self.replay_cache.startswith(("redis://", "rediss://", "unix://")):
            _bad("replay_cache", "must be database or a redis:// URL")
        for name in ("ratelimit_storage",):
            if not getattr(self, name).startswith(("memory://", "redis://", "rediss://", "redis+sentinel://", "redis+cluster://")):
                _bad(name, "must be memory:// or redis://...")
        try:
            _networks(self.metrics_allow)
        except ValueError:
            _bad("metrics_allow", "must be comma-separated networks such as 127.0.0.0/8,::1")
        self._validate_proxies()
        if self.metrics_token is not None and not _METRICS_TOKEN_RE.fullmatch(self.metrics_token):
            _bad("metrics_token", "must be at least 16 printable characters without spaces")
        if self.admin_audience is not None and (
            not SCOPE_TOKEN_RE.match(self.admin_audience) or (":" in self.admin_audience and not urlsplit(self.admin_audience).scheme)
        ):
            _bad("admin_audience", "must be an audience without spaces (a URI such as https://tokens.example.com/admin)")
        if self.admin_listen is not None:
            host, _, port = self.admin_listen.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or any(c.isspace() or c == "/" for c in host):
                _bad("admin_listen", "must be HOST:PORT, such as 127.0.0.1:5001")
        if not all(SCOPE_TOKEN_RE.match(scope) for scope in self.scopes_published):
            _bad("public_scopes", "must be space-separated scope tokens (RFC 6749 §3.3)")
        if self.audit_log and not Path(self.audit_log).parent.is_dir():
            _bad("audit_log", f"names a file in a missing directory ({Path(self.audit_log).parent})")
        if self.keys_dir.exists() and not self.keys_dir.is_dir():
            _bad("keys_dir", f"{self.keys_dir} is not a directory")
        if self.keys_dir.is_dir() and not os.access(self.keys_dir, os.R_OK | os.X_OK):
            _bad("keys_dir", f"{self.keys_dir} is not readable")
        return self

    def _validate_proxies(self) -> None:
        try:
            networks = self.proxy_networks
        except ValueError:
            _bad("trusted_proxies", "must be a number of proxy hops or comma-separated addresses such as 10.0.0.5,10.1.0.0/16")
        if self.client_cert_header is not None:
            if not _HEADER_NAME_RE.fullmatch(self.client_cert_header):
                _bad("client_cert_header", "must be an HTTP header name such as Client-Cert")
            if not networks:
                _bad("client_cert_header", "needs TOKENDEALER_TRUSTED_PROXIES to list the addresses of the proxies that set it")
        if self.client_ca_file is not None:
            from .mtls import load_trust_anchors  # noqa: PLC0415 (mtls imports http, tokens and so config)

            try:
                load_trust_anchors(self.client_ca_file)
            except ValueError as exc:
                _bad("client_ca_file", str(exc))

    def key_encryption_key_bytes(self) -> bytes:
        """The 32-byte key-encryption key of the database keyring (base64url, in the variable or a file)."""
        text = self.key_encryption_key
        name = "key_encryption_key"
        if not text and self.key_encryption_key_file:
            name = "key_encryption_key_file"
            try:
                text = Path(self.key_encryption_key_file).read_text().strip()
            except OSError as exc:
                _bad(name, f"cannot be read ({exc.strerror})")
        if not text:
            _bad("key_encryption_key", "is required when TOKENDEALER_KEYRING=database (or TOKENDEALER_KEY_ENCRYPTION_KEY_FILE)")
        try:
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            key = b""
        if len(key) != 32:
            _bad(name, "must be 32 random bytes, base64url (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return key

    def pkcs11_user_pin(self) -> str:
        """The token's user PIN (TOKENDEALER_PKCS11_PIN, or the first line of TOKENDEALER_PKCS11_PIN_FILE)."""
        if self.pkcs11_pin:
            return self.pkcs11_pin
        if self.pkcs11_pin_file:
            try:
                pin = Path(self.pkcs11_pin_file).read_text().strip()
            except OSError as exc:
                _bad("pkcs11_pin_file", f"cannot be read ({exc.strerror})")
            if pin:
                return pin
            _bad("pkcs11_pin_file", "is empty")
        _bad("pkcs11_pin", "is required when TOKENDEALER_KEYRING=pkcs11 (or TOKENDEALER_PKCS11_PIN_FILE)")
        return ""


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (a bare address is a network of one); raises ValueError on a malformed entry."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _bad(name: str, why: str) -> NoReturn:
    raise ConfigError(f"{PREFIX}{name.upper()} {why}")


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Config)}[name]
    try:
        if kind == "int":
            if isinstance(value, bool) or not str(value).strip().lstrip("-").isdigit():
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if kind == "Path":
            return Path(str(value))
        if kind == "str | None":
            text = str(value)
            return None if text.lower() in ("", "off", "none") else text
        return str(value)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name.upper()} has a bad value: {value!r}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    out = {}
    for key, value in data.items():
        name = key.lower()
        if name.startswith(PREFIX.lower()):
            name = name[len(PREFIX) :]
        out[name] = value
    return out
