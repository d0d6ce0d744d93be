"""Where a keyring lives: a directory of PEM files (one instance) or the database (several), with atomic
writes under a lock. The records and the rotation rules they apply are `keyring`'s."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client_lib.jose import b64url

from . import db
from .config import Config
from .keyring import (
    DEFAULT_ALG,
    SIGNING_STATES,
    KeyRecord,
    Keyring,
    KeyringError,
    KeyStore,
    checked_keyring,
    new_key,
    plan_rotation,
    prunable,
    rotation_alg,
)

MANIFEST = "manifest.json"
PEPPER = "pepper"


class FileKeyStore:
    """A keyring directory: manifest.json plus one PKCS#8 PEM (0600) per key that may sign."""

    cheap_version = True

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.clock = clock
        self._pepper: bytes | None = None
        # version() runs before every token is signed: a plain path string spares pathlib's work each time.
        self._manifest = str(self.directory / MANIFEST)

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def version(self) -> Any:
        """A value that changes whenever the manifest is rewritten (it is replaced by rename)."""
        try:
            st = os.stat(self._manifest)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> Keyring:
        """Read and check the manifest and every private key it names.

        Readers take no lock: a rotation that replaces the manifest between the reads here and then
        deletes a retired key's PEM makes a key go missing, so the read starts over when the manifest changed.
        """
        for _ in range(3):
            version = self.version()
            records = self._read_manifest()
            try:
                keys = {r.kid: self._read_private_key(r) for r in records if r.state in SIGNING_STATES}
            except KeyringError:
                if self.version() != version:
                    continue
                raise
            return checked_keyring(records, keys, str(self.manifest_path))
        raise KeyringError(f"{self.manifest_path}: changed during every read; try again")

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
        """Staged rotation, or with `emergency` replace the active and next keys at once."""
        if not self.exists():
            raise KeyringError(f"no keyring in {self.directory}; run `tokendealer keys init` first")
        with self._locked():
            records = self._read_manifest()
            alg = rotation_alg(records, alg)
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
            gone = prunable(records, max_token_lifetime, self.clock())
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
        record, pem = new_key(alg, now)
        _atomic_write(self.directory / f"{record.kid}.pem", pem)
        return record

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


class DatabaseManifest:
    """A keyring whose manifest is in the database, for several instances: the same records and rules as
    the file store. Every write is one transaction that first bumps `keyring_state.version`, which
    serialises writers and tells readers something changed. Where the private keys live is the subclass's:
    `_new_key` makes one (and returns what its row's `private_key` column holds), `_private_key` finds it
    again, `_forget` destroys the ones that may no longer sign."""

    cheap_version = False

    def __init__(self, engine: Any, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock

    def _new_key(self, alg: str, now: float) -> tuple[KeyRecord, bytes | None]:
        raise NotImplementedError

    def _private_key(self, record: KeyRecord, stored: bytes | None) -> Any:
        raise NotImplementedError

    def _forget(self, before: list[KeyRecord], after: list[KeyRecord]) -> None:
        """After a committed write: destroy private keys kept outside the database (nothing here)."""

    def _discard(self, fresh: list[tuple[KeyRecord, bytes | None]]) -> None:
        """After a failed write: destroy the fresh keys no row names (nothing here)."""

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
            if record.state in SIGNING_STATES:
                key = self._private_key(record, row.private_key)
                if key is not None:
                    private_keys[record.kid] = key
        return checked_keyring(sorted(records, key=lambda r: r.created_at), private_keys, "database keyring")

    def init(self, alg: str = DEFAULT_ALG) -> bool:
        now = self.clock()
        fresh: list[tuple[KeyRecord, bytes | None]] = []
        try:
            with self.engine.begin() as conn:
                conn.execute(db.keyring_state.insert().values(id=1, version=1, updated_at=now))
                fresh = [self._new_key(alg, now), self._new_key(alg, now)]
                records = plan_rotation([], [r for r, _ in fresh], now, emergency=False)
                self._write(conn, [], records, dict((r.kid, stored) for r, stored in fresh))
        except sa.exc.IntegrityError:
            self._discard(fresh)
            return False
        except BaseException:
            self._discard(fresh)
            raise
        return True

    def rotate(self, alg: str | None = None, emergency: bool = False) -> Keyring:
        fresh: list[tuple[KeyRecord, bytes | None]] = []
        try:
            with self.engine.begin() as conn:
                current = self._lock(conn)
                now = self.clock()
                fresh = [self._new_key(rotation_alg(current, alg), now) for _ in range(2)]
                records = plan_rotation(current, [r for r, _ in fresh], now, emergency)
                self._write(conn, current, records, dict((r.kid, stored) for r, stored in fresh))
        except BaseException:
            self._discard(fresh)
            raise
        self._forget(current, records)
        return self.load()

    def prune(self, max_token_lifetime: float) -> list[KeyRecord]:
        with self.engine.begin() as conn:
            current = self._lock(conn)
            gone = prunable(current, max_token_lifetime, self.clock())
            if gone:
                conn.execute(db.signing_keys.delete().where(db.signing_keys.c.kid.in_([r.kid for r in gone])))
        self._forget(current, [r for r in current if r not in gone])
        return gone

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

    def _write(self, conn: Any, before: list[KeyRecord], after: list[KeyRecord], stored: dict[str, bytes | None]) -> None:
        known = {r.kid for r in before}
        for record in after:
            values = {k: v for k, v in record.to_json().items() if k != "kid"}
            if record.state not in SIGNING_STATES:
                values["private_key"] = None  # retired and revoked keys keep only their public half
            if record.kid in known:
                conn.execute(db.signing_keys.update().where(db.signing_keys.c.kid == record.kid).values(**values))
            else:
                values["private_key"] = stored[record.kid]
                conn.execute(db.signing_keys.insert().values(kid=record.kid, **values))

    @staticmethod
    def _record(row: Any) -> KeyRecord:
        data = dict(row._mapping)
        data.pop("private_key", None)
        try:
            return KeyRecord.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"database keyring: malformed key row ({exc})") from None


class DatabaseKeyStore(DatabaseManifest):
    """The keyring in the database, private keys encrypted at rest with AES-GCM under the key-encryption
    key (the kid is the associated data, so a ciphertext cannot be moved to another key's row)."""

    def __init__(self, engine: Any, kek: bytes, clock: Callable[[], float] = time.time):
        super().__init__(engine, clock)
        self._aead = AESGCM(kek)
        self._pepper = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tokendealer client-secret pepper").derive(kek)

    def pepper(self) -> bytes:
        """Derived from the key-encryption key, so every instance sharing it hashes secrets alike."""
        return self._pepper

    def _new_key(self, alg: str, now: float) -> tuple[KeyRecord, bytes | None]:
        record, pem = new_key(alg, now)
        nonce = secrets.token_bytes(12)
        return record, nonce + self._aead.encrypt(nonce, pem, record.kid.encode())

    def _private_key(self, record: KeyRecord, stored: bytes | None) -> Any:
        if not stored:
            return None
        kid = record.kid
        try:
            pem = self._aead.decrypt(bytes(stored[:12]), bytes(stored[12:]), kid.encode())
        except InvalidTag:
            raise KeyringError(f"database keyring: key {kid} does not decrypt; is TOKENDEALER_KEY_ENCRYPTION_KEY right?") from None
        return serialization.load_pem_private_key(pem, password=None)


def make_key_store(config: Config, clock: Callable[[], float] = time.time, engine: Any = None) -> KeyStore:
    """The keyring store the configuration names."""
    if config.keyring == "pkcs11":
        from .hsm import Pkcs11KeyStore  # noqa: PLC0415 (python-pkcs11 is the optional `hsm` extra)

        return Pkcs11KeyStore.from_config(config, engine or db.make_engine(config.database_url), clock)
    if config.keyring == "database":
        return DatabaseKeyStore(engine or db.make_engine(config.database_url), config.key_encryption_key_bytes(), clock)
    return FileKeyStore(config.keys_dir, clock=clock)
