"""TokenVerifier: verify access tokens locally against the issuer's JWKS (a requests shell over `core`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

from . import tracing
from .client import DEFAULT_TIMEOUT, TokenClient
from .core.dpop import MAX_AGE, DPoPProof, Nonces, ProofCheck, replay_key
from .core.failures import network_failure
from .core.jwks import JwksState
from .core.verification import Verification
from .discovery import discover
from .exceptions import InvalidDPoPProof, KeySetUnavailable, RevokedToken, TokenClientError
from .proof_replay import proof_replay

log = logging.getLogger(__name__)


class TokenVerifier:
    """Checks RFC 9068 access tokens from one issuer for one audience.

    Keys come from the issuer's JWKS (via discovery unless `jwks_uri` is given), cached per its
    Cache-Control and kept when a refresh fails. Verified tokens are remembered until they expire.

    DPoP (RFC 9449): a proof may be at most `dpop_max_age` seconds old; each is accepted once, remembered in
    `dpop_replay` (None: this process's memory; a redis:// URL or redis.Redis client: shared by every
    instance); with `dpop_nonce_secret` (bytes shared by the instances) proofs must carry a nonce (§9).
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_uri: str | None = None,
        leeway: float = 30.0,
        cooldown: float = 30.0,
        stale_if_error: float = 86400.0,
        cache_size: int = 10000,
        introspect: bool = False,
        introspection_client: TokenClient | None = None,
        introspection_cache: float = 5.0,
        dpop_max_age: float = MAX_AGE,
        dpop_nonce_secret: bytes | None = None,
        dpop_replay: Any = None,
        session: requests.Session | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ):
        if introspect and introspection_client is None:
            raise ValueError("introspect=True needs introspection_client (a TokenClient to authenticate with)")
        self.issuer = issuer
        self.audience = audience
        nonces = Nonces(lambda: dpop_nonce_secret) if dpop_nonce_secret else None
        proofs = ProofCheck(max_age=dpop_max_age, nonces=nonces)
        self.policy = Verification(issuer, audience, leeway, cooldown, stale_if_error, cache_size, proofs=proofs)
        self.dpop_replay = proof_replay(dpop_replay, clock)
        self.session = session or requests.Session()
        self.timeout = timeout
        self.clock = clock
        self.introspect = introspect
        self.introspection_client = introspection_client
        self.introspection_cache = introspection_cache
        self._jwks_uri = jwks_uri
        self._fetch_lock = threading.Lock()
        self.fetch_count = 0

    def __repr__(self) -> str:
        return f"TokenVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    @property
    def jwks(self) -> JwksState:
        """What the verifier knows of the issuer's keys."""
        return self.policy.jwks

    @property
    def jwks_uri(self) -> str:
        if self._jwks_uri is None:
            self._jwks_uri = discover(self.session, self.issuer, self.timeout)["jwks_uri"]
        return self._jwks_uri

    @tracing.traced("verify token")
    def verify(
        self,
        token: str,
        scopes: Iterable[str] | None = None,
        *,
        actor: str | None = None,
        no_actor: bool | str | Iterable[str] = False,
        scheme: str | None = None,
        dpop_proof: str | None = None,
        method: str | None = None,
        url: str | None = None,
        client_cert: Any = None,
    ) -> dict[str, Any]:
        """The token's claims, or an InvalidToken subclass saying why it is refused.

        RFC 8693 delegation: `actor` requires the token's current actor (`act.sub`) to be that client;
        `no_actor=True` requires a direct call (no `act`), and `no_actor=NAME` (or names) that none of them
        appears anywhere in the chain. Refusals are ActorNotAllowed (403).

        RFC 9449: `scheme` is the Authorization scheme the token came with (None: `DPoP` when `dpop_proof` is
        given, else `Bearer`). A token bound to a key (`cnf.jkt`) is accepted only with the DPoP scheme and
        `dpop_proof`, the request's DPoP header, valid for `method` and `url`, signed by that key, carrying the
        token's hash and never seen before; as Bearer it is BoundTokenAsBearer. Refusals are InvalidDPoPProof
        (UseDPoPNonce when a nonce is required).

        RFC 8705 §3: a token bound to a client certificate (`cnf.x5t#S256`) passes only with `client_cert`, the
        certificate the caller presented (PEM or DER bytes, or a cryptography Certificate); else CertificateMismatch."""
        policy, now = self.policy, self.clock()
        claims = policy.cached(token, now)
        if claims is None:
            jws = policy.parse(token)
            self._refresh_for(jws.kid, now)
            claims = policy.complete(token, jws, now)
        proof = policy.binding(claims, token, scheme, dpop_proof, method, url, now)
        if proof is not None:
            self._first_use(proof)
        if self.introspect:
            self._check_active(token, claims, now)
        return policy.result(claims, scopes, actor, no_actor, client_cert=client_cert)

    def _first_use(self, proof: DPoPProof) -> None:
        """RFC 9449 §11.1: a proof is accepted once."""
        if not self.dpop_replay.first_use(*replay_key(proof), self.policy.proofs.replay_until(proof)):
            raise InvalidDPoPProof("DPoP proof was already used")

    def _refresh_for(self, kid: Any, now: float) -> None:
        """Fetch the JWKS when due (refresh ahead; waiting only when no usable keys are held), or for an
        unknown kid at most once per cooldown."""
        policy = self.policy
        if policy.jwks.needs_refresh(now) and self._fetch_lock.acquire(blocking=policy.must_wait_for_keys(now)):
            try:
                if policy.jwks.needs_refresh(now):
                    self._fetch(now)
            finally:
                self._fetch_lock.release()
        if policy.needs_fetch_for(kid, now):
            with self._fetch_lock:
                if policy.needs_fetch_for(kid, now):
                    policy.jwks.forced(now)
                    self._fetch(now)
                    policy.fetched_for(kid, now)

    @tracing.traced("fetch JWKS", kind="client")
    def _fetch(self, now: float) -> None:
        """Fetch the JWKS; a failure keeps the cached keys."""
        self.fetch_count += 1
        try:
            response = self.session.get(self.jwks_uri, timeout=self.timeout, headers=tracing.inject())
            response.raise_for_status()
            self.policy.accept_keys(response.json(), response.headers.get("Cache-Control"), now)
        except (requests.RequestException, ValueError, TokenClientError) as exc:
            self.policy.jwks.failed(now)
            log.warning("JWKS fetch failed, keeping %d cached keys: %s", len(self.policy.jwks.keys), network_failure(exc))

    def _check_active(self, token: str, claims: dict[str, Any], now: float) -> None:
        """Ask the issuer (RFC 7662) whether the token is still active; answers kept briefly."""
        if self.policy.known_active(claims["jti"], now):
            return
        client = self.introspection_client
        assert client is not None  # the constructor requires one with introspect=True
        endpoint = client.metadata["introspection_endpoint"]
        fields, basic = client.client_auth(endpoint)
        try:
            response = self.session.post(
                endpoint, data={"token": token, **fields}, auth=basic, timeout=self.timeout, headers=tracing.inject()
            )
            response.raise_for_status()
            active = response.json().get("active") is True
        except (requests.RequestException, ValueError, AttributeError):
            raise KeySetUnavailable("the issuer's introspection endpoint did not answer") from None
        if not active:
            raise RevokedToken("token is no longer active")
        self.policy.remember_active(claims["jti"], now + self.introspection_cache)
