"""Signing keys in an HSM through PKCS#11 (TOKENDEALER_KEYRING=pkcs11; python-pkcs11, the `hsm` extra).

Each key is generated inside the token as a non-extractable, sensitive key pair whose CKA_ID and CKA_LABEL
are its kid; the private key never leaves the token, which signs every token. The manifest of states (the
same records and rotation rules as the other stores) is in the database, as `DatabaseKeyStore` keeps it:
its transactions serialise rotations between instances and its version tells every instance to reload,
which labels on token objects (one attribute write at a time, no transaction) could not. The rows' private
key column stays empty.

The client-secret pepper is HMAC-SHA256 of a fixed string under a secret key generated in the token at
`init` (sensitive, non-extractable): stable for every instance using the token, gone with the token.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pkcs11
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import NoSuchKey, PinIncorrect, PKCS11Error, UserAlreadyLoggedIn
from pkcs11.util.ec import encode_named_curve_parameters

from client_lib.jose import public_jwk

from .config import Config
from .keyring import DEFAULT_ALG, RSA_BITS, SIGNING_STATES, KeyRecord, KeyringError
from .keystores import DatabaseManifest
from .tokens import NoSigningKey

log = logging.getLogger(__name__)

PEPPER_LABEL = "tokendealer:pepper"
PEPPER_INFO = b"tokendealer client-secret pepper"
# After a failed (re)start of the library, requests fail fast for this long instead of waiting on the HSM.
RETRY_SECONDS = 1.0

# alg -> (mechanism, mechanism parameter, whether the signing input is hashed here first). Raw ECDSA over a
# SHA-256 digest returns r||s, which is already the JWS form (RFC 7518 §3.4); hashing is public work.
_MECHANISMS: dict[str, tuple[Any, Any, bool]] = {
    "ES256": (Mechanism.ECDSA, None, True),
    "RS256": (Mechanism.SHA256_RSA_PKCS, None, False),
    "RS512": (Mechanism.SHA512_RSA_PKCS, None, False),
    "PS256": (Mechanism.SHA256_RSA_PKCS_PSS, (Mechanism.SHA256, MGF.SHA256, 32), False),
    "EdDSA": (Mechanism.EDDSA, None, False),
}


class HsmUnavailable(NoSigningKey, KeyringError):
    """The HSM does not answer or refuses (token absent, session lost, PIN refused): 503 while signing,
    one line at start-up."""


class _Library:
    """One PKCS#11 module in this process. C_Initialize holds per process: a forked worker, or a process
    whose token stopped answering, finalises and initialises it again (every session it had is gone)."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.RLock()
        self.generation = 0
        self._pid: int | None = None
        self._lib: Any = None
        self._retry_at = 0.0

    def current(self) -> tuple[Any, int]:
        """The initialised library of this process and its generation (which changes when it is restarted)."""
        with self.lock:
            if self._pid != os.getpid():
                if time.monotonic() < self._retry_at:
                    raise HsmUnavailable(f"PKCS#11 module {self.path}: not answering; retrying shortly")
                try:
                    lib = pkcs11.lib(self.path)
                    if self._lib is not None or self._pid is not None:
                        lib.reinitialize()
                except PKCS11Error as exc:
                    self._retry_at = time.monotonic() + RETRY_SECONDS
                    log.error("PKCS#11 module %s does not initialise: %s", self.path, exc.__class__.__name__)
                    raise HsmUnavailable(f"PKCS#11 module {self.path}: {exc.__class__.__name__}") from None
                self._lib, self._pid = lib, os.getpid()
                self.generation += 1
            return self._lib, self.generation

    def restart(self, generation: int) -> bool:
        """Drop every session of `generation` (a token stopped answering); the next use initialises anew.
        False when another thread already did."""
        with self.lock:
            if generation == self.generation and self._pid == os.getpid():
                self._pid = -1
                return True
            return False


_LIBRARIES: dict[str, _Library] = {}
_LIBRARIES_LOCK = threading.Lock()


def _library(path: str) -> _Library:
    with _LIBRARIES_LOCK:
        return _LIBRARIES.setdefault(os.path.realpath(path), _Library(path))


class _Session:
    """A pooled session and the private keys found in it (object handles are per session)."""

    def __init__(self, session: Any, generation: int):
        self.session = session
        self.generation = generation
        self.keys: dict[str, Any] = {}

    def private_key(self, kid: str) -> Any:
        key = self.keys.get(kid)
        if key is None:
            key = self.keys[kid] = self.session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=kid.encode())
        return key


class Pkcs11Token:
    """A token of a PKCS#11 module, with a pool of logged-in sessions per process, opened lazily (so a
    process that forks workers hands them nothing). A PKCS#11 failure drops the pool and restarts the
    module, and the next use logs in again; meanwhile every caller gets HsmUnavailable."""

    def __init__(self, module: str, label: str, pin: str):
        self.label = label
        self._pin = pin
        self._library = _library(module)
        self._idle: list[_Session] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def session(self) -> Iterator[_Session]:
        """A logged-in session for one operation; any PKCS#11 failure becomes HsmUnavailable.

        Operations of one process take turns on the module's lock: a restart of the module (C_Finalize)
        while another thread is inside a PKCS#11 call crashes the process."""
        with self._library.lock:
            with self._operation() as pooled:
                yield pooled

    @contextlib.contextmanager
    def _operation(self) -> Iterator[_Session]:
        pooled = self._borrow()
        try:
            yield pooled
        except PKCS11Error as exc:
            if isinstance(exc, NoSuchKey):  # an answer, not a failure
                self._idle.append(pooled)
                raise
            message = f"PKCS#11 token {self.label!r}: {exc.__class__.__name__}"
            if self._library.restart(pooled.generation):
                log.error("PKCS#11 failure, dropping every session to log in again: %s", message)
            raise HsmUnavailable(message) from None
        except BaseException:
            self._idle.append(pooled)
            raise
        self._idle.append(pooled)

    def _borrow(self) -> _Session:
        lib, generation = self._library.current()
        with self._lock:
            self._idle = [s for s in self._idle if s.generation == generation]
            if self._idle:
                return self._idle.pop()
        try:
            token = lib.get_token(token_label=self.label)
            try:
                session = token.open(rw=True, user_pin=self._pin)
            except UserAlreadyLoggedIn:  # login is per process and token, shared by every session
                session = token.open(rw=True)
        except PinIncorrect:
            raise HsmUnavailable(f"PKCS#11 token {self.label!r} refused the PIN (TOKENDEALER_PKCS11_PIN)") from None
        except PKCS11Error as exc:
            message = f"PKCS#11 token {self.label!r}: not available ({exc.__class__.__name__})"
            self._library.restart(generation)
            raise HsmUnavailable(message) from None
        return _Session(session, generation)

    def generate(self, alg: str, now: float) -> KeyRecord:
        """A fresh key pair inside the token (private half sensitive and not extractable), named by its kid."""
        temporary = "tokendealer:new:" + secrets.token_hex(8)
        private = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        }
        options = {"store": True, "label": temporary, "id": temporary.encode(), "private_template": private}
        with self.session() as pooled:
            s = pooled.session
            if alg == "ES256":
                params = s.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
                )
                public, private_key = params.generate_keypair(**options)
            elif alg == "EdDSA":
                params = s.create_domain_parameters(
                    KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")}, local=True
                )
                public, private_key = params.generate_keypair(mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, **options)
            else:
                public, private_key = s.generate_keypair(KeyType.RSA, RSA_BITS, **options)
            jwk = public_jwk(_public_key(public, alg), alg)
            for obj in (public, private_key):
                obj[Attribute.ID] = jwk["kid"].encode()
                obj[Attribute.LABEL] = jwk["kid"]
        return KeyRecord(kid=jwk["kid"], alg=alg, state="next", created_at=now, jwk=jwk)

    def find(self, record: KeyRecord) -> TokenKey | None:
        """The token's key of `record` (its public half read from the token), or None when it has none."""
        with self.session() as pooled:
            try:
                pooled.private_key(record.kid)
                public = pooled.session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=record.kid.encode())
            except NoSuchKey:
                return None
            return TokenKey(self, record.kid, record.alg, _public_key(public, record.alg))

    def destroy(self, kids: list[str]) -> None:
        """Destroy the key pairs of `kids` (those absent already are fine)."""
        with self.session() as pooled:
            for kid in kids:
                for obj in list(pooled.session.get_objects({Attribute.ID: kid.encode()})):
                    obj.destroy()
                pooled.keys.pop(kid, None)

    def ensure_pepper(self) -> None:
        """Create the pepper's secret key unless the token has it."""
        with self.session() as pooled:
            if not list(pooled.session.get_objects({Attribute.LABEL: PEPPER_LABEL, Attribute.CLASS: ObjectClass.SECRET_KEY})):
                pooled.session.generate_key(
                    KeyType.GENERIC_SECRET,
                    256,
                    store=True,
                    label=PEPPER_LABEL,
                    template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.PRIVATE: True},
                )

    def pepper(self) -> bytes:
        """HMAC-SHA256 of PEPPER_INFO under the token's pepper key."""
        with self.session() as pooled:
            try:
                key = pooled.session.get_key(object_class=ObjectClass.SECRET_KEY, label=PEPPER_LABEL)
            except NoSuchKey:
                raise KeyringError(f"PKCS#11 token {self.label!r} has no {PEPPER_LABEL} key; run `tokendealer init`") from None
            return bytes(key.sign(PEPPER_INFO, mechanism=Mechanism.SHA256_HMAC))


class TokenKey:
    """A private key that stays in the token: `sign_jws` has the token sign; the public half is a copy."""

    def __init__(self, token: Pkcs11Token, kid: str, alg: str, public: Any):
        self.token = token
        self.kid = kid
        self.alg = alg
        self._public = public
        self._mechanism, self._param, self._prehash = _MECHANISMS[alg]

    def public_key(self) -> Any:
        return self._public

    def sign_jws(self, signing_input: bytes) -> bytes:
        """The JWS signature (RFC 7518 §3) of `signing_input`, computed by the token."""
        data = hashlib.sha256(signing_input).digest() if self._prehash else signing_input
        try:
            return self._sign(data)
        except HsmUnavailable:
            return self._sign(data)  # once more in a new session: a lost session need not cost an answer

    def _sign(self, data: bytes) -> bytes:
        with self.token.session() as pooled:
            try:
                key = pooled.private_key(self.kid)
            except NoSuchKey:
                raise HsmUnavailable(f"PKCS#11 token {self.token.label!r} no longer holds key {self.kid}") from None
            return bytes(key.sign(data, mechanism=self._mechanism, mechanism_param=self._param))


def _public_key(obj: Any, alg: str) -> Any:
    """The `cryptography` public key of a token public-key object."""
    if alg in ("RS256", "RS512", "PS256"):
        n = int.from_bytes(obj[Attribute.MODULUS], "big")
        e = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    point = bytes(obj[Attribute.EC_POINT])
    if len(point) not in (32, 65):  # DER OCTET STRING around the point, as PKCS#11 says; some modules omit it
        point = OctetString.load(point).native
    if alg == "EdDSA":
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


class Pkcs11KeyStore(DatabaseManifest):
    """The keyring with its manifest in the database and its keys in a PKCS#11 token.

    A key leaving the signing states is destroyed in the token: at once when revoked (emergency rotation),
    and at the next keyring write when retired, so instances still on the previous keyring (for up to the
    reload interval) keep signing with it, as processes of the other stores keep their key in memory.
    """

    def __init__(self, engine: Any, token: Pkcs11Token, clock: Callable[[], float] = time.time):
        super().__init__(engine, clock)
        self.token = token
        self._pepper: bytes | None = None

    @classmethod
    def from_config(cls, config: Config, engine: Any, clock: Callable[[], float] = time.time) -> Pkcs11KeyStore:
        token = Pkcs11Token(str(config.pkcs11_module), str(config.pkcs11_token_label), config.pkcs11_user_pin())
        return cls(engine, token, clock)

    def init(self, alg: str = DEFAULT_ALG) -> bool:
        self.token.ensure_pepper()
        return super().init(alg)

    def pepper(self) -> bytes:
        """Derived in the token, so every instance using it hashes secrets alike."""
        if self._pepper is None:
            self._pepper = self.token.pepper()
        return self._pepper

    def _new_key(self, alg: str, now: float) -> tuple[KeyRecord, bytes | None]:
        return self.token.generate(alg, now), None

    def _private_key(self, record: KeyRecord, stored: bytes | None) -> Any:
        return self.token.find(record)

    def _forget(self, before: list[KeyRecord], after: list[KeyRecord]) -> None:
        gone = {r.kid for r in before if r.state not in SIGNING_STATES} | {r.kid for r in after if r.state == "revoked"}
        gone |= {r.kid for r in before} - {r.kid for r in after}
        if gone:
            self.token.destroy(sorted(gone))

    def _discard(self, fresh: list[tuple[KeyRecord, bytes | None]]) -> None:
        if fresh:
            with contextlib.suppress(HsmUnavailable):
                self.token.destroy([r.kid for r, _ in fresh])
