"""The signing keyring: key records, staged rotation (next -> active -> retired) and hot reload;
where the keys are stored is `keystores`'.

The private key of a key is kept only while it may sign (`next`, `active`); on retirement only its public
JWK stays in the manifest, so a leaked keys directory cannot forge tokens with retired keys.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import get_default_algorithms

from client_lib.jose import ALGORITHMS, ALGS_BY_KEY, b64url_bytes, public_jwk

log = logging.getLogger(__name__)

DEFAULT_ALG = "ES256"
STATES = ("next", "active", "retired", "revoked")
RSA_BITS = 2048

_JWA = get_default_algorithms()
# ECDSA signing by alg: the signature scheme and the byte length of R and of S.
_ECDSA = {"ES256": (ec.ECDSA(hashes.SHA256()), 32), "ES384": (ec.ECDSA(hashes.SHA384()), 48), "ES512": (ec.ECDSA(hashes.SHA512()), 66)}


class KeyringError(Exception):
    """The keyring cannot be read, written or used; the message says which file and why."""


def generate_private_key(alg: str) -> Any:
    """A fresh private key suitable for `alg`."""
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg in ALGS_BY_KEY[("RSA", None)]:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyringError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")


@dataclass(frozen=True)
class KeyRecord:
    """One key of the manifest: its public half and life-cycle stamps, no private material."""

    kid: str
    alg: str
    state: str
    created_at: float
    jwk: dict[str, Any]
    activated_at: float | None = None
    retired_at: float | None = None
    revoked_at: float | None = None

    def prunable_at(self, max_token_lifetime: float) -> float | None:
        """When every token this key signed has expired (None while it may still sign)."""
        if self.state == "revoked":
            return self.revoked_at
        if self.state == "retired" and self.retired_at is not None:
            return self.retired_at + max_token_lifetime
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "state": self.state,
            "created_at": self.created_at,
            "activated_at": self.activated_at,
            "retired_at": self.retired_at,
            "revoked_at": self.revoked_at,
            "jwk": self.jwk,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        record = cls(
            kid=str(data["kid"]),
            alg=str(data["alg"]),
            state=str(data["state"]),
            created_at=float(data["created_at"]),
            jwk=dict(data["jwk"]),
            activated_at=data.get("activated_at"),
            retired_at=data.get("retired_at"),
            revoked_at=data.get("revoked_at"),
        )
        if record.alg not in ALGORITHMS or record.state not in STATES or record.jwk.get("kid") != record.kid:
            raise ValueError(f"key {record.kid}: bad alg, state or jwk")
        return record


@dataclass(frozen=True)
class SigningKey:
    """A key able to sign: its record plus the parsed private key and a precomputed JWS header."""

    record: KeyRecord
    private_key: Any = field(repr=False)
    header_b64: bytes = field(repr=False, default=b"")
    # JWS signature of a signing input by a key held elsewhere (an HSM); None: `private_key` signs here.
    signer: Callable[[bytes], bytes] | None = field(repr=False, default=None)

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def alg(self) -> str:
        return self.record.alg

    def sign(self, payload: bytes) -> str:
        """A compact JWS (RFC 7515 §7.1) of `payload` with header alg, kid and typ at+jwt (RFC 9068 §2.1)."""
        signing_input = self.header_b64 + b"." + b64url_bytes(payload)
        if self.signer:
            signature = self.signer(signing_input)
        elif self.alg in _ECDSA:
            # RFC 7518 §3.4: R and S as fixed-length big-endian integers (PyJWT's conversion, without its detours).
            ecdsa, size = _ECDSA[self.alg]
            r, s = decode_dss_signature(self.private_key.sign(signing_input, ecdsa))
            signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        else:
            signature = _JWA[self.alg].sign(signing_input, self.private_key)
        return (signing_input + b"." + b64url_bytes(signature)).decode("ascii")


def make_signing_key(record: KeyRecord, private_key: Any) -> SigningKey:
    """Bind a record to its private key, precomputing the JWS header once per key. A key held elsewhere
    (`hsm.TokenKey`) offers `sign_jws` and signs there."""
    header = json.dumps({"alg": record.alg, "kid": record.kid, "typ": "at+jwt"}, separators=(",", ":"))
    return SigningKey(record, private_key, b64url_bytes(header.encode()), getattr(private_key, "sign_jws", None))


@dataclass(frozen=True)
class Keyring:
    """An immutable snapshot of the keys: the one that signs and the ones that verify."""

    records: tuple[KeyRecord, ...]
    signing: dict[str, SigningKey] = field(default_factory=dict, repr=False)
    _verifiers: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def active(self) -> SigningKey | None:
        """The single key that signs new tokens."""
        for record in self.records:
            if record.state == "active":
                return self.signing.get(record.kid)
        return None

    def record(self, state: str) -> KeyRecord | None:
        return next((r for r in self.records if r.state == state), None)

    def published(self, now: float, max_token_lifetime: float) -> list[KeyRecord]:
        """Keys in the JWKS: next, active, and retired keys whose tokens may still be valid."""
        out = []
        for record in self.records:
            if record.state in ("next", "active"):
                out.append(record)
            elif record.state == "retired" and now < (record.prunable_at(max_token_lifetime) or 0):
                out.append(record)
        return out

    def verification_key(self, kid: str, now: float, max_token_lifetime: float) -> tuple[str, Any] | None:
        """(alg, public key) for a published kid, or None: revoked and expired keys never verify."""
        for record in self.published(now, max_token_lifetime):
            if record.kid == kid:
                if kid not in self._verifiers:
                    self._verifiers[kid] = _JWA[record.alg].from_jwk(record.jwk)
                return record.alg, self._verifiers[kid]
        return None


SIGNING_STATES = ("next", "active")
# Seconds between two looks at a file keyring's manifest on the signing path: a `stat` per token released the
# GIL, which under granian handed it to another thread and back on every request (7% of a token's CPU at 64
# connections). A rotation reaches signing within this, the JWKS and verification at once.
STAT_INTERVAL = 0.01


def checked_keyring(records: list[KeyRecord], private_keys: dict[str, Any], source: str) -> Keyring:
    """A Keyring from records and the private keys of those that may sign, after the structural checks."""
    if sum(r.state == "active" for r in records) != 1:
        raise KeyringError(f"{source}: expected exactly one active key")
    if sum(r.state == "next" for r in records) > 1:
        raise KeyringError(f"{source}: more than one next key")
    for record in records:
        key = private_keys.get(record.kid)
        if record.state in SIGNING_STATES and (key is None or public_jwk(key.public_key(), record.alg)["kid"] != record.kid):
            raise KeyringError(f"{source}: the private key of {record.kid} is missing or does not match its kid")
    signing = {r.kid: make_signing_key(r, private_keys[r.kid]) for r in records if r.state in SIGNING_STATES}
    return Keyring(tuple(records), signing)


def plan_rotation(records: list[KeyRecord], fresh: list[KeyRecord], now: float, emergency: bool) -> list[KeyRecord]:
    """The records after a rotation.

    Staged: next -> active, active -> retired, fresh[0] becomes next. Emergency: active and next are revoked
    (they leave the JWKS at once), fresh[0] becomes active and fresh[1] next.
    """
    out = []
    if emergency:
        for r in records:
            out.append(replace(r, state="revoked", revoked_at=now) if r.state in ("active", "next") else r)
        active, nxt = fresh
        return out + [replace(active, state="active", activated_at=now), replace(nxt, state="next")]
    promoted = any(r.state == "next" for r in records)
    for r in records:
        if r.state == "active":
            out.append(replace(r, state="retired", retired_at=now))
        elif r.state == "next":
            out.append(replace(r, state="active", activated_at=now))
        else:
            out.append(r)
    if not promoted:
        # No published successor exists (a damaged keyring): the fresh key must sign at once.
        out.append(replace(fresh[0], state="active", activated_at=now))
        return out + [replace(fresh[1], state="next")]
    return out + [replace(fresh[0], state="next")]


def rotation_alg(records: list[KeyRecord], alg: str | None) -> str:
    """The algorithm of a rotation's fresh keys: the one asked for, else the active key's, else the default."""
    active = next((r for r in records if r.state == "active"), None)
    return alg or (active.alg if active else DEFAULT_ALG)


def prunable(records: list[KeyRecord], max_token_lifetime: float, now: float) -> list[KeyRecord]:
    """Retired and revoked keys whose tokens have all expired; never next or active."""
    return [r for r in records if (r.prunable_at(max_token_lifetime) or float("inf")) <= now]


def new_key(alg: str, now: float) -> tuple[KeyRecord, bytes]:
    """A fresh `next` key: its record and its PKCS#8 PEM."""
    private_key = generate_private_key(alg)
    jwk = public_jwk(private_key.public_key(), alg)
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return KeyRecord(kid=jwk["kid"], alg=alg, state="next", created_at=now, jwk=jwk), pem


class KeyStore(Protocol):
    """Where a keyring lives: a directory of PEM files, or (for several instances) the database."""

    # True when version() costs no more than a stat, so it may be asked every STAT_INTERVAL seconds of use.
    cheap_version: bool

    def version(self) -> Any: ...
    def load(self) -> Keyring: ...
    def exists(self) -> bool: ...
    def init(self, alg: str = DEFAULT_ALG) -> bool: ...
    def rotate(self, alg: str | None = None, emergency: bool = False) -> Keyring: ...
    def prune(self, max_token_lifetime: float) -> list[KeyRecord]: ...
    def pepper(self) -> bytes: ...


class KeyringSource:
    """The live keyring of one process, re-read when the store's version changes.

    The version is looked at every `STAT_INTERVAL` seconds of use when the store says that is cheap (a file
    `stat`), else at most every `interval` seconds, and at once when a caller asks (`check=True`: before
    answering the JWKS or verifying a token), so no process answers from an older keyring than another has
    used. Signing may go on with the keyring of up to `STAT_INTERVAL` ago: a key that a staged rotation
    retires stays published, so its last tokens verify everywhere.
    A reload that fails keeps the last good keyring and records the error (logged once) for /readyz;
    a broken store is retried when its version changes or once per interval.
    """

    def __init__(self, store: KeyStore, interval: float, monotonic: Callable[[], float] = time.monotonic):
        self.store = store
        self.interval = interval
        self.monotonic = monotonic
        self.error: str | None = None
        self._keyring: Keyring | None = None
        self._version: Any = object()
        self._next_check = 0.0
        self._next_stat = 0.0
        self._lock = threading.Lock()
        self.reload_failures = 0

    def current(self, check: bool = False) -> Keyring | None:
        """The newest good keyring (None if none ever loaded).

        While one thread reloads, the others go on with the current keyring, except before the first load
        and when `check` asks for the store's newest, where they wait for it.
        """
        if self._keyring is not None and not check:
            now = self.monotonic()
            if not self.store.cheap_version:
                if now < self._next_check:
                    return self._keyring
            elif self.error is None:
                if now < self._next_stat:
                    return self._keyring  # the common case on the token path: no system call, no lock
                self._next_stat = now + STAT_INTERVAL
                if self.store.version() == self._version:
                    return self._keyring
        if self._lock.acquire(blocking=self._keyring is None or check):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return self._keyring

    def _refresh(self) -> None:
        now = self.monotonic()
        self._next_stat = now + STAT_INTERVAL
        retry = now >= self._next_check
        if retry:
            self._next_check = now + self.interval
        try:
            version = self.store.version()
        except Exception as exc:  # a database keyring may be unreachable
            self._fail(f"keyring unreachable: {exc.__class__.__name__}")
            return
        if version == self._version and not (self.error and retry):
            return
        try:
            keyring = self.store.load()
        except KeyringError as exc:
            self._version = version
            self._fail(str(exc))
            return
        except Exception as exc:
            self._fail(f"keyring unreachable: {exc.__class__.__name__}")
            return
        self._keyring, self._version, self.error = keyring, version, None

    def _fail(self, message: str) -> None:
        if message != self.error:
            log.error("keyring reload failed, keeping the last good keyring: %s", message)
            self.reload_failures += 1
        self.error = message
