"""The signing keyring: key generation, staged rotation (next -> active -> retired) and hot reload (SPEC §4).

The private key of a key is kept only while it may sign (`next`, `active`); on retirement only its public
JWK stays in the manifest, so a leaked keys directory cannot forge tokens with retired keys.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import get_default_algorithms

from . import db
from .config import Config

log = logging.getLogger(__name__)

ALGORITHMS = ("ES256", "RS256", "RS512", "PS256", "EdDSA")
DEFAULT_ALG = "ES256"
STATES = ("next", "active", "retired", "revoked")
MANIFEST = "manifest.json"
PEPPER = "pepper"
RSA_BITS = 2048

_JWA = get_default_algorithms()
# RFC 7638 §3.2: the members of each key type that enter the thumbprint.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


class KeyringError(Exception):
    """The keyring cannot be read, written or used; the message says which file and why."""


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_private_key(alg: str) -> Any:
    """A fresh private key suitable for `alg`."""
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg in ("RS256", "RS512", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyringError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as the key id."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


def default_alg(public_key: Any) -> str:
    """The algorithm a key of this type signs with by default."""
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1":
        return "ES256"
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("only EC P-256, RSA and Ed25519 keys are supported")


def public_jwk(public_key: Any, alg: str) -> dict[str, Any]:
    """The public JWK (RFC 7517) of a key, with kid (RFC 7638 thumbprint), alg and use."""
    jwk = _JWA[alg].to_jwk(public_key, as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": alg, "use": "sig"}


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

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def alg(self) -> str:
        return self.record.alg

    def sign(self, payload: bytes) -> str:
        """A compact JWS (RFC 7515 §7.1) of `payload` with header alg, kid and typ at+jwt (RFC 9068 §2.1)."""
        signing_input = self.header_b64 + b"." + base64.urlsafe_b64encode(payload).rstrip(b"=")
        signature = _JWA[self.alg].sign(signing_input, self.private_key)
        return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode("ascii")


def make_signing_key(record: KeyRecord, private_key: Any) -> SigningKey:
    """Bind a record to its private key, precomputing the JWS header once per key."""
    header = json.dumps({"alg": record.alg, "kid": record.kid, "typ": "at+jwt"}, separators=(",", ":"))
    return SigningKey(record, private_key, base64.urlsafe_b64encode(header.encode()).rstrip(b"="))


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

    def jwks(self, now: float, max_token_lifetime: float) -> dict[str, Any]:
        """RFC 7517 §5 JWK Set of the published keys."""
        return {"keys": [r.jwk for r in self.published(now, max_token_lifetime)]}

    def verification_key(self, kid: str, now: float, max_token_lifetime: float) -> tuple[str, Any] | None:
        """(alg, public key) for a published kid, or None: revoked and expired keys never verify."""
        for record in self.published(now, max_token_lifetime):
            if record.kid == kid:
                if kid not in self._verifiers:
                    self._verifiers[kid] = _JWA[record.alg].from_jwk(record.jwk)
                return record.alg, self._verifiers[kid]
        return None


SIGNING_STATES = ("next", "active")


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


def new_key(alg: str, now: float) -> tuple[KeyRecord, bytes]:
    """A fresh `next` key: its record and its PKCS#8 PEM."""
    private_key = generate_private_key(alg)
    jwk = public_jwk(private_key.public_key(), alg)
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return KeyRecord(kid=jwk["kid"], alg=alg, state="next", created_at=now, jwk=jwk), pem


class KeyStore(Protocol):
    """Where a keyring lives: a directory of PEM files, or (for several instances) the database."""

    # True when version() costs no more than a stat, so it may be asked on every use.
    cheap_version: bool

    def version(self) -> Any: ...
    def load(self) -> Keyring: ...
    def exists(self) -> bool: ...
    def init(self, alg: str = DEFAULT_ALG) -> bool: ...
    def rotate(self, alg: str | None = None, emergency: bool = False) -> Keyring: ...
    def prune(self, max_token_lifetime: float) -> list[KeyRecord]: ...
    def pepper(self) -> bytes: ...


class FileKeyStore:
    """A keyring directory: manifest.json plus one PKCS#8 PEM (0600) per key that may sign."""

    cheap_version = True

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.clock = clock
        self._pepper: bytes | None = None

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def version(self) -> Any:
        """A value that changes whenever the manifest is rewritten (it is replaced by rename)."""
        try:
            st = self.manifest_path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> Keyring:
        """Read and check the manifest and every private key it names."""
        records = self._read_manifest()
        return checked_keyring(
            records, {r.kid: self._read_private_key(r) for r in records if r.state in SIGNING_STATES}, str(self.manifest_path)
        )

    def init(self, alg: str = DEFAULT_ALG) -> bool:
        """Create the directory, the pepper, a first active key and a next key; False if already there."""
        self._ensure_directory()
        with self._locked():
            self._ensure_pepper()
            if self.exists():
                return False
            now = self.clock()
            fresh = [self._new_key(alg, now), self._new_key(alg, now)]
            self._write_manifest(plan_rotation([], fresh, now, emergency=False))
            return True

    def rotate(self, alg: str | None = None, emergency: bool = False) -> Keyring:
        """Staged rotation, or with `emergency` replace the active and next keys at once (SPEC §4)."""
        if not self.exists():
            raise KeyringError(f"no keyring in {self.directory}; run `tokendealer keys init` first")
        with self._locked():
            records = self._read_manifest()
            active = next((r for r in records if r.state == "active"), None)
            alg = alg or (active.alg if active else DEFAULT_ALG)
            now = self.clock()
            fresh = [self._new_key(alg, now), self._new_key(alg, now)]
            new_records = plan_rotation(records, fresh, now, emergency)
            # The fresh PEMs are on disk before the manifest names them; a crash in between leaves
            # the old manifest, which still loads. Unused fresh files are removed below.
            self._write_manifest(new_records)
            self._remove_unreferenced(new_records)
        return self.load()

    def prune(self, max_token_lifetime: float) -> list[KeyRecord]:
        """Forget retired and revoked keys whose tokens have all expired; never next or active."""
        with self._locked():
            records = self._read_manifest()
            now = self.clock()
            gone = [r for r in records if (r.prunable_at(max_token_lifetime) or float("inf")) <= now]
            if gone:
                kept = [r for r in records if r not in gone]
                self._write_manifest(kept)
                self._remove_unreferenced(kept)
            return gone

    def pepper(self) -> bytes:
        """The server-side secret keyed into client-secret hashes."""
        if self._pepper is None:
            path = self.directory / PEPPER
            try:
                _check_private_file(path)
                self._pepper = base64.urlsafe_b64decode(path.read_bytes().strip() + b"==")
            except OSError as exc:
                raise KeyringError(f"{path}: cannot read ({exc.strerror}); run `tokendealer init`") from None
            if len(self._pepper) < 32:
                raise KeyringError(f"{path}: too short")
        return self._pepper

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def _ensure_pepper(self) -> None:
        path = self.directory / PEPPER
        if not path.exists():
            _atomic_write(path, b64url(secrets.token_bytes(32)).encode() + b"\n")

    def _new_key(self, alg: str, now: float) -> KeyRecord:
        private_key = generate_private_key(alg)
        jwk = public_jwk(private_key.public_key(), alg)
        pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _atomic_write(self.directory / f"{jwk['kid']}.pem", pem)
        return KeyRecord(kid=jwk["kid"], alg=alg, state="next", created_at=now, jwk=jwk)

    def _read_manifest(self) -> list[KeyRecord]:
        try:
            data = json.loads(self.manifest_path.read_bytes())
            return [KeyRecord.from_json(item) for item in data["keys"]]
        except FileNotFoundError:
            raise KeyringError(f"no keyring in {self.directory}; run `tokendealer init`") from None
        except OSError as exc:
            raise KeyringError(f"{self.manifest_path}: cannot read ({exc.strerror})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{self.manifest_path}: malformed ({exc})") from None

    def _read_private_key(self, record: KeyRecord) -> Any:
        path = self.directory / f"{record.kid}.pem"
        try:
            _check_private_file(path)
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise KeyringError(f"{path}: cannot read ({exc.strerror})") from None
        except (ValueError, TypeError):
            raise KeyringError(f"{path}: not a PKCS#8 PEM private key") from None
        return key

    def _write_manifest(self, records: list[KeyRecord]) -> None:
        body = json.dumps({"version": 1, "keys": [r.to_json() for r in records]}, indent=2).encode()
        _atomic_write(self.manifest_path, body + b"\n")

    def _remove_unreferenced(self, records: list[KeyRecord]) -> None:
        keep = {f"{r.kid}.pem" for r in records if r.state in SIGNING_STATES}
        for path in self.directory.glob("*.pem"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (rotate, prune, init) across processes."""
        self._ensure_directory()
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _check_private_file(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyringError(f"{path}: readable by group or others (mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write a 0600 file by rename, so readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class KeyringSource:
    """The live keyring of one process, re-read when the store's version changes.

    The version is looked at on every use when the store says that is cheap (a file `stat`), else at
    most every `interval` seconds, and at once when a caller asks (`check=True`: before answering the
    JWKS or verifying a token), so no process answers from an older keyring than another has used.
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
        self._lock = threading.Lock()
        self.reload_failures = 0

    def current(self, check: bool = False) -> Keyring | None:
        """The newest good keyring (None if none ever loaded).

        While one thread reloads, the others go on with the current keyring, except before the first load
        and when `check` asks for the store's newest, where they wait for it.
        """
        if self._keyring is not None and not check and not self.store.cheap_version and self.monotonic() < self._next_check:
            return self._keyring
        if self._lock.acquire(blocking=self._keyring is None or check):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return self._keyring

    def _refresh(self) -> None:
        now = self.monotonic()
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


class DatabaseKeyStore:
    """The keyring in the database, for several instances: the same records and rules as the file store,
    private keys encrypted at rest with AES-GCM under the key-encryption key (the kid is the associated
    data, so a ciphertext cannot be moved to another key's row). Every write is one transaction that
    first bumps `keyring_state.version`, which serialises writers and tells readers something changed."""

    cheap_version = False

    def __init__(self, engine: Any, kek: bytes, clock: Callable[[], float] = time.time):
        self.engine = engine
        self._aead = AESGCM(kek)
        self._pepper = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tokendealer client-secret pepper").derive(kek)
        self.clock = clock

    def version(self) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(db.keyring_state.c.version).where(db.keyring_state.c.id == 1)).scalar()

    def exists(self) -> bool:
        return self.version() is not None

    def load(self) -> Keyring:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(db.signing_keys)).all()
        if not rows:
            raise KeyringError("no keyring in the database; run `tokendealer init`")
        records, private_keys = [], {}
        for row in rows:
            record = self._record(row)
            records.append(record)
            if record.state in SIGNING_STATES and row.private_key:
                private_keys[record.kid] = self._decrypt(record.kid, row.private_key)
        return checked_keyring(sorted(records, key=lambda r: r.created_at), private_keys, "database keyring")

    def init(self, alg: str = DEFAULT_ALG) -> bool:
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(db.keyring_state.insert().values(id=1, version=1, updated_at=now))
                fresh = [new_key(alg, now), new_key(alg, now)]
                records = plan_rotation([], [r for r, _ in fresh], now, emergency=False)
                self._write(conn, [], records, dict((r.kid, pem) for r, pem in fresh))
        except sa.exc.IntegrityError:
            return False
        return True

    def rotate(self, alg: str | None = None, emergency: bool = False) -> Keyring:
        with self.engine.begin() as conn:
            current = self._lock(conn)
            active = next((r for r in current if r.state == "active"), None)
            now = self.clock()
            fresh = [new_key(alg or (active.alg if active else DEFAULT_ALG), now) for _ in range(2)]
            records = plan_rotation(current, [r for r, _ in fresh], now, emergency)
            self._write(conn, current, records, dict((r.kid, pem) for r, pem in fresh))
        return self.load()

    def prune(self, max_token_lifetime: float) -> list[KeyRecord]:
        with self.engine.begin() as conn:
            current = self._lock(conn)
            now = self.clock()
            gone = [r for r in current if (r.prunable_at(max_token_lifetime) or float("inf")) <= now]
            if gone:
                conn.execute(db.signing_keys.delete().where(db.signing_keys.c.kid.in_([r.kid for r in gone])))
        return gone

    def pepper(self) -> bytes:
        """Derived from the key-encryption key, so every instance sharing it hashes secrets alike."""
        return self._pepper

    def _lock(self, conn: Any) -> list[KeyRecord]:
        """Bump the version (taking the write lock) and read the records in the same transaction."""
        bumped = conn.execute(
            db.keyring_state.update()
            .where(db.keyring_state.c.id == 1)
            .values(version=db.keyring_state.c.version + 1, updated_at=self.clock())
        ).rowcount
        if not bumped:
            raise KeyringError("no keyring in the database; run `tokendealer keys init` first")
        return [self._record(row) for row in conn.execute(sa.select(db.signing_keys)).all()]

    def _write(self, conn: Any, before: list[KeyRecord], after: list[KeyRecord], pems: dict[str, bytes]) -> None:
        known = {r.kid for r in before}
        for record in after:
            values = {k: v for k, v in record.to_json().items() if k != "kid"}
            if record.state not in SIGNING_STATES:
                values["private_key"] = None  # retired and revoked keys keep only their public half
            if record.kid in known:
                conn.execute(db.signing_keys.update().where(db.signing_keys.c.kid == record.kid).values(**values))
            else:
                values["private_key"] = self._encrypt(record.kid, pems[record.kid])
                conn.execute(db.signing_keys.insert().values(kid=record.kid, **values))

    def _encrypt(self, kid: str, pem: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, pem, kid.encode())

    def _decrypt(self, kid: str, blob: bytes) -> Any:
        try:
            pem = self._aead.decrypt(bytes(blob[:12]), bytes(blob[12:]), kid.encode())
        except InvalidTag:
            raise KeyringError(f"database keyring: key {kid} does not decrypt; is TOKENDEALER_KEY_ENCRYPTION_KEY right?") from None
        return serialization.load_pem_private_key(pem, password=None)

    @staticmethod
    def _record(row: Any) -> KeyRecord:
        data = dict(row._mapping)
        data.pop("private_key", None)
        try:
            return KeyRecord.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"database keyring: malformed key row ({exc})") from None


def make_key_store(config: Config, clock: Callable[[], float] = time.time, engine: Any = None) -> KeyStore:
    """The keyring store the configuration names."""
    if config.keyring == "database":
        return DatabaseKeyStore(engine or db.make_engine(config.database_url), config.key_encryption_key_bytes(), clock)
    return FileKeyStore(config.keys_dir, clock=clock)
