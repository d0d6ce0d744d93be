"""Workload identity federation (SPEC §3 "More grants", §4.1): per-client rules over the tokens of trusted
external issuers, and the one check both ways in share — federated client authentication (RFC 7523 §2.2,
as in draft-ietf-oauth-spiffe-client-auth) and the JWT bearer grant (RFC 7523 §2.1).

Matching, as documented in the README ("Secretless services"):
- `subject`: exact, or ending in `*` for a prefix (anything may follow, separators included).
- `audience`: the token's `aud` is exactly this one value (a string, or a list of just it).
- conditions `CLAIM=VALUE`: CLAIM is a dotted path into nested claims; a key may itself hold dots
  (`kubernetes.io.namespace` reaches `{"kubernetes.io": {"namespace": …}}`), and a path that reaches two
  different values is no match. VALUE is exact, or a glob: `*` is any run of characters other than `/` and
  `:`, `?` one such character; nothing else is special. So `refs/heads/*` matches `refs/heads/main` but not
  `refs/heads/a/b`, and a glob never spans a `:`-separated field of a GitHub `sub`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from client_lib.exceptions import InvalidSignature, InvalidToken
from client_lib.jose import CompactJws, parse_jws, verify_signature

from . import db
from .assertions import RedisReplayCache, ReplayCache
from .clients import Client, ClientError, ClientNotFound, ClientStore, check_audience
from .fetcher import FetchError
from .issuers import IssuerKeys, IssuerStore, TrustedIssuer

MAX_CONDITIONS = 16
# Workload tokens whose signature was checked, kept briefly: Kubernetes re-uses a projected token for every
# request until it refreshes it, so each is parsed and verified once a minute, not on every request.
VERIFIED_SECONDS = 60.0
VERIFIED_MAX = 4096
_CLAIM_PATH_RE = re.compile(r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$/-]+)*$")


class RuleNotFound(ClientNotFound):
    """The client has no such federation rule."""


class FederationRefused(Exception):
    """A workload token is not accepted; the message says why, safe to show (never echoes the token).
    Each way in answers it with its own error (`invalid_client` 401, `invalid_grant` 400)."""


@dataclass(frozen=True)
class FederationRule:
    """A client trusts tokens of `issuer` whose `sub`, `aud` and claims match."""

    rule_id: str
    client_id: str
    issuer: str
    subject: str
    audience: str
    conditions: tuple[tuple[str, str], ...] = ()
    single_use: bool = False
    created_at: float = 0.0

    def view(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "client_id": self.client_id,
            "issuer": self.issuer,
            "subject": self.subject,
            "audience": self.audience,
            "conditions": [f"{path}={value}" for path, value in self.conditions],
            "single_use": self.single_use,
            "created_at": self.created_at,
        }

    def mismatch(self, claims: dict[str, Any]) -> str | None:
        """Why the claims do not match this rule (None when they do)."""
        sub = claims.get("sub")
        if not isinstance(sub, str) or not subject_matches(self.subject, sub):
            return "subject"
        # As for private_key_jwt: the audience names this server and nothing else, so a token also meant for
        # another party (who could replay it here) is not accepted.
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if aud != self.audience:
            return "audience"
        for path, pattern in self.conditions:
            if not value_matches(pattern, claim_at(claims, path)):
                return f"condition {path}"
        return None


@dataclass(slots=True)
class Admission:
    """A workload token accepted by a rule: what the audit log and metrics name."""

    client: Client
    rule: FederationRule
    claims: dict[str, Any]

    def audit_fields(self) -> dict[str, Any]:
        return {"issuer": self.rule.issuer, "federation_rule": self.rule.rule_id, "external_subject": self.claims["sub"]}


def subject_matches(rule: str, sub: str) -> bool:
    return sub.startswith(rule[:-1]) if rule.endswith("*") else sub == rule


_MISSING = object()


def claim_at(claims: Any, path: str) -> Any:
    """The value at a dotted path whose keys may hold dots; _MISSING when absent or ambiguous."""
    if not isinstance(claims, dict):
        return _MISSING
    found = claims.get(path, _MISSING)
    for prefix, rest in _prefixes(path):
        if prefix in claims:
            nested = claim_at(claims[prefix], rest)
            if nested is _MISSING:
                continue
            if found is _MISSING:
                found = nested
            elif json.dumps(nested, sort_keys=True, default=str) != json.dumps(found, sort_keys=True, default=str):
                return _MISSING  # two ways to two different values
    return found


@functools.lru_cache(maxsize=1024)
def _prefixes(path: str) -> tuple[tuple[str, str], ...]:
    """Each dotted prefix of a path (a key it may reach first: it ends just before one of the path's dots),
    with the rest of the path after it; once per path, as paths come from rules."""
    out = []
    dot = path.find(".")
    while dot > 0:
        out.append((path[:dot], path[dot + 1 :]))
        dot = path.find(".", dot + 1)
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    """A condition's glob compiled once (patterns come from rules)."""
    parts = [("[^/:]*" if c == "*" else "[^/:]" if c == "?" else re.escape(c)) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def value_matches(pattern: str, value: Any) -> bool:
    """A claim value (string, number or boolean, compared as its JSON text) against an exact value or glob."""
    if value is _MISSING or isinstance(value, (dict, list)) or value is None:
        return False
    text = value if isinstance(value, str) else json.dumps(value)
    if "*" not in pattern and "?" not in pattern:
        return text == pattern
    return _glob(pattern).fullmatch(text) is not None


def parse_conditions(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`CLAIM=VALUE` items (dotted claim paths)."""
    out = []
    for item in items:
        path, sep, value = item.partition("=")
        if not sep or not _CLAIM_PATH_RE.match(path) or not value:
            raise ClientError(f"condition {item!r} is not of the form claim.path=value")
        out.append((path, value))
    if len(out) > MAX_CONDITIONS:
        raise ClientError(f"at most {MAX_CONDITIONS} conditions per rule")
    return tuple(out)


class RuleStore:
    """The `federation_rules` table, with a read cache bounded in staleness (by issuer)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time, cache_seconds: float = 0.0):
        self.engine = engine
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, list[FederationRule]]] = {}
        self._lock = threading.Lock()

    def for_issuer(self, issuer: str) -> list[FederationRule]:
        """Every rule naming `issuer`, oldest first."""
        now = time.monotonic()
        hit = self._cache.get(issuer) if self.cache_seconds else None
        if hit and hit[0] > now:
            return hit[1]
        rules = self._select(db.federation_rules.c.issuer == issuer)
        if self.cache_seconds:
            with self._lock:
                if len(self._cache) > 1000:
                    self._cache.clear()
                self._cache[issuer] = (now + self.cache_seconds, rules)
        return rules

    def for_client(self, client_id: str) -> list[FederationRule]:
        return self._select(db.federation_rules.c.client_id == client_id)

    def add(
        self,
        clients: ClientStore,
        issuers: IssuerStore,
        client_id: str,
        issuer: str,
        subject: str,
        audience: str,
        conditions: Iterable[str] = (),
        single_use: bool = False,
    ) -> FederationRule:
        """A new rule for an existing client and a trusted issuer."""
        clients.require(client_id)
        if issuers.get(issuer) is None:
            raise ClientError(f"{issuer!r} is not a trusted issuer; add it first with `tokendealer issuers add`")
        if not subject or subject == "*" or len(subject) > 2048:
            raise ClientError("--subject must be a subject, or a non-empty prefix ending in *")
        rule = FederationRule(
            rule_id="fr_" + secrets.token_hex(8),
            client_id=client_id,
            issuer=issuer,
            subject=subject,
            audience=check_audience(audience),
            conditions=parse_conditions(conditions),
            single_use=single_use,
            created_at=self.clock(),
        )
        row = {**rule.__dict__, "conditions": [list(c) for c in rule.conditions]}
        with self.engine.begin() as conn:
            conn.execute(db.federation_rules.insert().values(**row))
        return rule

    def remove(self, client_id: str, rule_id: str) -> None:
        table = db.federation_rules
        with self.engine.begin() as conn:
            if not conn.execute(table.delete().where(table.c.rule_id == rule_id, table.c.client_id == client_id)).rowcount:
                raise RuleNotFound(f"client {client_id!r} has no federation rule {rule_id!r}")

    def _select(self, where: Any) -> list[FederationRule]:
        table = db.federation_rules
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(where).order_by(table.c.created_at, table.c.rule_id)).all()
        return [_rule(r) for r in rows]


def _rule(row: Any) -> FederationRule:
    data = dict(row._mapping)
    data["conditions"] = tuple((str(p), str(v)) for p, v in data["conditions"])
    return FederationRule(**data)


@dataclass(slots=True)
class WorkloadToken:
    """A workload token split and decoded once; nothing in it is trusted until `FederationVerifier` says so.
    Read it, never change it (slotted rather than frozen, as `CompactJws`: one is made for every new token)."""

    token: str = field(repr=False)
    jws: CompactJws
    claims: dict[str, Any]


def parse_workload_token(token: str) -> WorkloadToken:
    """Split and decode a compact JWS strictly (client_lib.jose: asymmetric algorithms only, no JWS
    extensions); FederationRefused saying why it is not one."""
    try:
        jws = parse_jws(token, noun="the assertion")
        return WorkloadToken(token, jws, jws.unverified_claims())
    except InvalidToken as exc:
        raise FederationRefused(str(exc)) from None


def is_federated(jws: WorkloadToken | None) -> bool:
    """How federated client authentication is told from private_key_jwt: a private_key_jwt assertion's `iss`
    is the client id, which can hold no `:` (`[A-Za-z0-9][A-Za-z0-9._-]*`); a workload token's `iss` is its
    issuer's URL (`://`). The issuer's trust is then checked like everything else."""
    iss = jws.claims.get("iss") if jws else None
    return isinstance(iss, str) and "://" in iss


class FederationVerifier:
    """Checks a workload token from a trusted issuer against federation rules: the issuer, a signature by one
    of its keys with an asymmetric algorithm pinned to that key, `exp`/`nbf`/`iat` with leeway, a lifetime
    bound, the rule's subject, audience and conditions, and a single use where a rule asks for it."""

    def __init__(
        self,
        issuers: IssuerStore,
        rules: RuleStore,
        clients: ClientStore,
        keys: IssuerKeys,
        replay: ReplayCache | RedisReplayCache,
        replay_until: Callable[[float], float],
        max_lifetime: int,
        leeway: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.issuers = issuers
        self.rules = rules
        self.clients = clients
        self.keys = keys
        self.replay = replay
        self.replay_until = replay_until
        self.max_lifetime = max_lifetime
        self.leeway = leeway
        self.clock = clock
        self.monotonic = monotonic
        # token -> (checked until, issuer, the parsed token once it was presented again): see VERIFIED_SECONDS.
        self._verified: dict[str, tuple[float, str, WorkloadToken | None]] = {}
        # The assertion parsed last, and its parsed form: with TOKENDEALER_RATELIMIT a request's claimed client id
        # is read before and after it is authenticated, each time from its assertion (four parses a request).
        self._last: tuple[str, WorkloadToken] | None = None

    def workload_token(self, assertion: str) -> WorkloadToken | None:
        """The assertion parsed (once a minute for a re-used token) when it is a workload token; None when it
        is not (a private_key_jwt assertion, or not a JWS of an accepted algorithm): see `is_federated`."""
        try:
            parsed = self._parsed(assertion)
        except FederationRefused:
            return None
        return parsed if is_federated(parsed) else None

    def authenticate(self, client_id: str, assertion: WorkloadToken) -> Admission:
        """Federated client authentication: the token (from `workload_token`) matches one of `client_id`'s rules."""
        if not client_id:  # never None: that would mean any client's rules
            raise FederationRefused("no federation rule of this client names the assertion's issuer")
        return self._admit(assertion, client_id)

    def grant(self, assertion: str, client_id: str | None = None) -> Admission:
        """The JWT bearer grant: the one client whose rules the token matches (narrowed by `client_id` when
        given); several clients are refused, never one picked."""
        return self._admit(self._parsed(assertion), client_id, one_client=True)

    def _parsed(self, assertion: str) -> WorkloadToken:
        seen = self._verified.get(assertion)
        if seen is not None and seen[2] is not None:
            return seen[2]
        last = self._last
        if last is not None and last[0] == assertion:
            return last[1]
        token = parse_workload_token(assertion)
        self._last = (assertion, token)
        return token

    def _admit(self, jws: WorkloadToken, client_id: str | None, one_client: bool = False) -> Admission:
        """The client and rule admitting the token, among the rules of `client_id` (of every client if None)."""
        iss = jws.claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise FederationRefused("the assertion's issuer is not a trusted issuer")
        rules = self.rules.for_issuer(issuer.issuer)
        if client_id is not None:
            rules = [r for r in rules if r.client_id == client_id]
        if not rules:
            raise FederationRefused("no federation rule of this client names the assertion's issuer")
        claims = self._verified_claims(issuer, jws)
        matching = [r for r in rules if r.mismatch(claims) is None]
        if not matching:
            reasons = sorted({r.mismatch(claims) or "" for r in rules})
            raise FederationRefused(f"the assertion matches no federation rule (wrong {', '.join(reasons)})")
        clients: dict[str, tuple[Client, FederationRule]] = {}
        for rule in matching:
            client = self.clients.get(rule.client_id)
            if client is not None and client.enabled:
                clients.setdefault(client.client_id, (client, rule))
        if not clients:
            raise FederationRefused("the client of the matching federation rule is unknown or disabled")
        if one_client and len(clients) > 1:
            raise FederationRefused(
                f"the assertion matches federation rules of several clients ({', '.join(sorted(clients))}); "
                "name one with client_id, or narrow the rules"
            )
        client, rule = next(iter(clients.values()))
        if [r for r in matching if r.single_use and r.client_id == client.client_id]:
            self._use_once(issuer.issuer, claims)
        return Admission(client, rule, claims)

    def _verified_claims(self, issuer: TrustedIssuer, jws: WorkloadToken) -> dict[str, Any]:
        # The times first: an expired or over-long token is refused without a signature check. What the rules
        # ask is only told (`mismatch`) once the signature is known good.
        self._check_times(jws.claims)
        now = self.monotonic()
        seen = self._verified.get(jws.token)
        if seen is None or seen[0] <= now or seen[1] != issuer.issuer:
            self._verify_signature(issuer, jws)
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.clear()
            # A token admitted once leaves only its text and two numbers behind: nothing the garbage collector
            # has to walk again and again, as it would the parsed claims of every new token.
            self._verified[jws.token] = (now + VERIFIED_SECONDS, issuer.issuer, None)
        elif seen[2] is None:
            # Admitted again: a re-used token, whose parsed form is now worth keeping.
            self._verified[jws.token] = (seen[0], seen[1], jws)
        return jws.claims

    def _verify_signature(self, issuer: TrustedIssuer, token: WorkloadToken) -> None:
        kid = token.jws.kid
        try:
            keys = self.keys.candidates(issuer, kid if isinstance(kid, str) else None, token.jws.alg)
        except (FetchError, ValueError):
            raise FederationRefused("the issuer's keys could not be fetched (never reached yet, or unusable); retry later") from None
        if not keys:
            raise FederationRefused("the assertion is not signed by a key the issuer publishes")
        for key in keys:  # each pinned to the algorithms its own type allows
            try:
                verify_signature(token.jws, key)
                return
            except InvalidSignature:
                continue
        raise FederationRefused("the assertion signature does not verify with the issuer's keys")

    def _check_times(self, claims: dict[str, Any]) -> None:
        for name in ("exp", "iat", "nbf"):
            if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], (int, float))):
                raise FederationRefused(f"the assertion {name} is not a number")
        if "exp" not in claims:
            raise FederationRefused("the assertion lacks the exp claim")
        now = self.clock()
        exp = claims["exp"]
        if exp <= now - self.leeway:
            raise FederationRefused("the assertion has expired")
        if claims.get("nbf", 0) > now + self.leeway:
            raise FederationRefused("the assertion is not valid yet")
        if claims.get("iat", 0) > now + self.leeway:
            raise FederationRefused("the assertion iat is in the future")
        # A long-lived workload token is a standing credential: past the bound it is refused outright.
        # Compared, not subtracted: a forged token's exp may be an integer past a float's range (10**400 - now
        # raises OverflowError), and the times are checked before its signature.
        if exp > (claims["iat"] if "iat" in claims else now) + self.max_lifetime:
            raise FederationRefused(f"the assertion lives longer than {self.max_lifetime} seconds (TOKENDEALER_FEDERATION_MAX_LIFETIME)")

    def _use_once(self, issuer: str, claims: dict[str, Any]) -> None:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise FederationRefused("a single-use federation rule needs a jti claim")
        # Keyed by issuer and jti (not per client): one assertion is spent once, whichever client it names.
        # Client ids hold no `:`, so these keys never meet a private_key_jwt client's.
        key = "iss:" + hashlib.sha256(issuer.encode()).hexdigest()[:56]
        if not self.replay.first_use(key, jti, self.replay_until(claims["exp"])):
            raise FederationRefused("the assertion jti was already used (single-use rule)")
