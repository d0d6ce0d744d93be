"""Access tokens: the one place they are built (RFC 9068) and the one place the server checks them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from client_lib.exceptions import InvalidToken
from client_lib.jose import ACCESS_TOKEN_TYPES, MAX_TOKEN_LENGTH, ClaimCheck, VerificationKey, actors, parse_jws, verify_signature

from . import db, tracing
from .clients import Client, ClientStore
from .config import MAX_EXCHANGE_DEPTH, Config
from .identifiers import token_id
from .jsontext import dumps
from .keyring import KeyringSource

# RFC 9068 §2.2: the claims of every access token this server issues; sub, client_id and jti non-empty strings.
REQUIRED_CLAIMS = ("iss", "aud", "iat", "exp")
STRING_CLAIMS = ("sub", "client_id", "jti")
# Seconds by which another instance's clock may run ahead of this one's (iat and nbf are whole seconds).
INSTANCE_SKEW = 1.0


# RFC 8693 §4.1 nests the actors in `act`; `exchanged_from` (a private claim) lists the jti of every token the
# token was exchanged from, oldest first, so that revoking any of them revokes it too.
ACT = "act"
EXCHANGED_FROM = "exchanged_from"
# What an exchanged token does not carry over from its subject token: the server sets these anew.
_NOT_CARRIED = frozenset({"iss", "aud", "iat", "nbf", "exp", "jti", "scope", "cnf", ACT, "may_act", EXCHANGED_FROM})


def token_type(claims: dict[str, Any]) -> str:
    """RFC 9449 §5, §6.1: `DPoP` for a token bound to a DPoP key (`cnf.jkt`), else `Bearer` (RFC 6750)."""
    cnf = claims.get("cnf")
    return "DPoP" if isinstance(cnf, dict) and "jkt" in cnf else "Bearer"


class TokenRejected(Exception):
    """A token failed a check; the message is the reason, safe to show to the caller."""


class NoSigningKey(Exception):
    """The keyring has no active key loaded."""


class RevocationList:
    """RFC 7009 deny list: revoked jtis kept until the token's own expiry."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock

    def revoke(self, jti: str, client_id: str, expires_at: float) -> None:
        """Deny `jti` until `expires_at` (idempotent), and forget entries whose tokens have expired."""
        try:
            with self.engine.begin() as conn:
                conn.execute(db.revoked_tokens.insert().values(jti=jti, client_id=client_id, expires_at=expires_at))
        except sa.exc.IntegrityError:
            pass  # already revoked
        with self.engine.begin() as conn:
            conn.execute(db.revoked_tokens.delete().where(db.revoked_tokens.c.expires_at < self.clock() - db.PURGE_GRACE))

    def revoked_among(self, jtis: Sequence[str]) -> set[str]:
        """Which of `jtis` are revoked: one query for a token and every token it was exchanged from."""
        column = db.revoked_tokens.c.jti
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(column).where(column.in_(jtis))).scalars())


class TokenService:
    """Issues access tokens signed by the active key and validates presented ones."""

    def __init__(
        self,
        config: Config,
        keys: KeyringSource,
        clients: ClientStore,
        revocations: RevocationList,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.keys = keys
        self.clients = clients
        self.revocations = revocations
        self.clock = clock

    @property
    def max_token_lifetime(self) -> int:
        """How long after retirement a key may still have valid tokens out."""
        return self.config.max_token_ttl + self.config.leeway

    def lifetime_for(self, client: Client) -> int:
        """The client's own TTL or the default, never above the maximum."""
        return min(client.token_ttl or self.config.token_ttl, self.config.max_token_ttl)

    def issue(
        self, client: Client, audiences: Iterable[str], scopes: Iterable[str], cnf: dict[str, str] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A signed RFC 9068 access token for `client`, and its claims; `cnf` binds it to a key (RFC 9449 §6:
        `jkt`) or a certificate (RFC 8705 §3.1: `x5t#S256`)."""
        now = int(self.clock())
        audiences = list(audiences)
        claims = {
            **client.claims,
            "iss": self.config.issuer,
            "sub": client.client_id,
            "client_id": client.client_id,
            "aud": audiences[0] if len(audiences) == 1 else audiences,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime_for(client),
            "jti": token_id(),
            "scope": " ".join(scopes),
        }
        if cnf:
            claims["cnf"] = cnf
        return self._sign(claims), claims

    def exchange(
        self,
        subject: dict[str, Any],
        subject_client: Client,
        actor_id: str,
        audiences: Iterable[str],
        scopes: Iterable[str],
        cnf: dict[str, str] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """RFC 8693 §2.2.1, §4.1: a token for the subject token's caller (its sub, client_id and extra claims),
        acted on by `actor_id` after the subject's actors, expiring no later than the subject token; `cnf` binds
        it to the actor's key or certificate (the subject token's binding is the caller's, which the actor cannot prove)."""
        now = int(self.clock())
        audiences = list(audiences)
        act = {"sub": actor_id, **({ACT: subject[ACT]} if ACT in subject else {})}
        claims = {
            **{name: value for name, value in subject.items() if name not in _NOT_CARRIED},
            "iss": self.config.issuer,
            "aud": audiences[0] if len(audiences) == 1 else audiences,
            "iat": now,
            "nbf": now,
            "exp": min(now + self.lifetime_for(subject_client), int(subject["exp"])),
            "jti": token_id(),
            "scope": " ".join(scopes),
            ACT: act,
            EXCHANGED_FROM: [*subject.get(EXCHANGED_FROM, ()), subject["jti"]],
        }
        if cnf:
            claims["cnf"] = cnf
        return self._sign(claims), claims

    def _sign(self, claims: dict[str, Any]) -> str:
        keyring = self.keys.current()
        key = keyring.active if keyring else None
        if key is None:
            raise NoSigningKey("no active signing key is loaded")
        with tracing.span("sign token", kid=key.kid, alg=key.alg):
            return key.sign(dumps(claims).encode("utf-8"))

    def revoke(self, claims: dict[str, Any]) -> None:
        """RFC 7009: deny the token's jti until it has expired anyway."""
        self.revocations.revoke(claims["jti"], claims["client_id"], claims["exp"] + self.config.leeway)

    @tracing.traced("validate token")
    def validate(self, token: str, audience: str | None = None, check_state: bool = True) -> dict[str, Any]:
        """The claims of a token this server issued and that is valid now, or raise TokenRejected.

        Checks the signature with a published key pinned to that key's algorithm, typ (RFC 9068 §4), iss,
        aud, exp, nbf and iat by this server's clock, the required claims and, with `check_state`, that neither
        the token nor any it was exchanged from is revoked and its client and actors (the same incarnation of each
        id) exist and are enabled.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenRejected("token is missing or too long")
        try:
            jws = parse_jws(token, ACCESS_TOKEN_TYPES)
            # The store's newest keyring, so this process never judges by an older one than another has used.
            keyring = self.keys.current(check=True)
            found = (
                keyring.verification_key(jws.kid, self.clock(), self.max_token_lifetime) if keyring and isinstance(jws.kid, str) else None
            )
            if found is None:
                raise TokenRejected("token was signed by an unknown or withdrawn key")
            key_alg, public_key = found
            claims = verify_signature(jws, VerificationKey((key_alg,), public_key))
            self._claim_check(audience).check(claims, self.clock())
        except InvalidToken as exc:
            raise TokenRejected(str(exc)) from None
        if check_state:
            self.check_state(claims)
        return claims

    def check_state(self, claims: dict[str, Any]) -> None:
        """Not revoked, nor any token it was exchanged from; its client and every actor of its chain (RFC 8693
        §4.1) known, enabled and the incarnation that was there when it was issued."""
        ancestors = claims.get(EXCHANGED_FROM, [])
        if not isinstance(ancestors, list) or len(ancestors) > MAX_EXCHANGE_DEPTH or not all(isinstance(j, str) for j in ancestors):
            raise TokenRejected("token's exchange chain is malformed")
        revoked = self.revocations.revoked_among([claims["jti"], *ancestors])
        if claims["jti"] in revoked:
            raise TokenRejected("token has been revoked")
        if revoked:
            raise TokenRejected("a token this one was exchanged from has been revoked")
        holders = [(claims["client_id"], "token's client"), *((actor, "an actor of the token") for actor in actors(claims))]
        for client_id, what in holders:
            client = self.clients.get(client_id)
            if client is None or not client.enabled or not client.owns_token_issued_at(claims["iat"]):
                raise TokenRejected(f"{what} is unknown or disabled")

    def _claim_check(self, audience: str | None) -> ClaimCheck:
        """The claim checks of this server's own tokens, for `audience` when one is asked for.

        The server judges its own tokens by its own clock: leeway is for other parties' clocks. Only the
        sub-second skew between instances is allowed on the not-before side.
        """
        return ClaimCheck(
            issuer=self.config.issuer, audience=audience, required=REQUIRED_CLAIMS, strings=STRING_CLAIMS, leeway=0.0, skew=INSTANCE_SKEW
        )
