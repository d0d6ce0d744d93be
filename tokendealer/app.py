"""The Flask application: `create_app(config)` wires the services together; views only translate HTTP."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import db, tracing
from .admin import ListenerGate, register_admin_views, register_registration_views
from .assertions import AssertionVerifier, RedisReplayCache, ReplayCache
from .audit import AuditLog
from .authentication import ClientAuthenticator, FailureThrottle
from .bearer import BearerGuard
from .clients import ClientStore, SecretHasher
from .config import Config
from .discovery import openapi_document, server_metadata
from .dpop import DPoPBinding, proof_check
from .endpoints import IntrospectionEndpoint, RevocationEndpoint, TokenEndpoint
from .errors import (
    InvalidRequest,
    InvalidToken,
    NotFound,
    OAuthError,
    RequestTooLarge,
    TemporarilyUnavailable,
    TooManyRequests,
)
from .fastpath import DirectTokenPath, TokenFastPath
from .federation import FederationVerifier, RuleStore
from .grants.client_credentials import ClientCredentialsGrant
from .grants.jwt_bearer import JwtBearerGrant
from .grants.token_exchange import TokenExchangeGrant
from .http import FORM, MAX_PARAMS, NO_STORE, as_oauth_error, dumps, error_parts, parse_form, request_id
from .issuers import IssuerKeys, IssuerStore
from .keyring import KeyringSource, KeyStore
from .keystores import make_key_store
from .management import Management
from .messages import ClientAuth, Params, TokenQuery, TokenRequest
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics, ScrapeGuard
from .mtls import CertificateAuthenticator, ProxyHeaders, load_trust_anchors
from .ratelimits import AddressRateLimit
from .registration import Registrar
from .tokens import RevocationList, TokenRejected, TokenService

log = logging.getLogger(__name__)

# app.extensions key of the token endpoint as `serve`'s edge calls it (fastpath.DirectTokenPath), when it may.
DIRECT_TOKEN_PATH = "tokendealer.direct_token_path"


@dataclass
class Services:
    """Everything one server process holds, built once per app."""

    config: Config
    clock: Callable[[], float]
    engine: Engine
    store: KeyStore
    keys: KeyringSource
    clients: ClientStore
    tokens: TokenService
    authenticator: ClientAuthenticator
    token_endpoint: TokenEndpoint
    introspection: IntrospectionEndpoint
    revocation: RevocationEndpoint
    audit: AuditLog
    metrics: Metrics
    # The admin API and registration: the management operations, and the bearer-token check admitting callers.
    manage: Management
    guard: BearerGuard
    registrar: Registrar

    def close(self) -> None:
        """Shutdown: write out what is buffered (audit lines, this worker's metrics)."""
        self.audit.flush()
        self.metrics.flush()


def build_services(config: Config, clock: Callable[[], float] = time.time, processes: int = 1, serving: bool = False) -> Services:
    """Wire the server's parts; opens nothing that fails when the database or keyring is down.

    `processes` is how many worker processes of this instance serve side by side (they share the
    failed-authentication limits); `serving` (the workers of `tokendealer serve`) batches the audit log's
    writes and refreshes the cached clients in the background."""
    engine = db.make_engine(config.database_url)
    store = make_key_store(config, clock, engine)
    keys = KeyringSource(store, config.keyring_reload_interval)
    keys.current()  # load now, so a worker is ready (or /readyz says why not) before its first request
    hasher = SecretHasher(store.pepper)
    clients = ClientStore(engine, hasher, clock, cache_seconds=config.client_cache_seconds, max_token_ttl=config.max_token_ttl)
    if serving:
        clients.refresh_in_background()
    revocations = RevocationList(engine, clock)
    tokens = TokenService(config, keys, clients, revocations, clock)
    assertions = AssertionVerifier(
        audiences=(config.issuer, config.token_endpoint, config.url("/oauth/introspect"), config.url("/oauth/revoke")),
        replay=ReplayCache(engine, clock) if config.replay_cache == "database" else RedisReplayCache(config.replay_cache),
        max_lifetime=config.assertion_max_lifetime,
        leeway=config.leeway,
        clock=clock,
    )
    audit = AuditLog(config.audit_log, clock, buffered=serving)
    throttle = FailureThrottle(
        config.ratelimit_storage, config.auth_failure_limit, config.auth_failure_limit_per_address, audit, processes=processes
    )
    federation = FederationVerifier(
        issuers=IssuerStore(engine, clock, cache_seconds=config.client_cache_seconds),
        rules=RuleStore(engine, clock, cache_seconds=config.client_cache_seconds),
        clients=clients,
        keys=IssuerKeys(cooldown=config.federation_key_cooldown),
        replay=assertions.replay,
        replay_until=assertions.replay_until,
        max_lifetime=config.federation_max_lifetime,
        leeway=config.leeway,
        clock=clock,
    )
    certificates = CertificateAuthenticator(
        assertions.registered_keys, load_trust_anchors(config.client_ca_file) if config.client_ca_file else (), clock
    )
    authenticator = ClientAuthenticator(clients, hasher, assertions, throttle, clock, federation, certificates)
    dpop = DPoPBinding(config.token_endpoint, proof_check(config, store.pepper), assertions.replay, clock)
    metrics = Metrics(keys, clock, engine)
    manage = Management(config, clients, IssuerStore(engine, clock), RuleStore(engine, clock), store, audit, clock)
    guard = BearerGuard(config.issuer, config.management_audience, keys, tokens, throttle, clock)
    return Services(
        config=config,
        clock=clock,
        engine=engine,
        store=store,
        keys=keys,
        clients=clients,
        tokens=tokens,
        authenticator=authenticator,
        token_endpoint=TokenEndpoint(
            [
                ClientCredentialsGrant(authenticator, tokens, dpop),
                TokenExchangeGrant(authenticator, clients, tokens, config.exchange_max_depth, dpop),
                JwtBearerGrant(federation, authenticator, tokens, dpop),
            ],
            audit,
            metrics,
        ),
        introspection=IntrospectionEndpoint(authenticator, tokens),
        revocation=RevocationEndpoint(authenticator, tokens, audit),
        audit=audit,
        metrics=metrics,
        manage=manage,
        guard=guard,
        registrar=Registrar(config, engine, manage, hasher, clock),
    )


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status=status, headers=headers, mimetype="application/json")


def form_params() -> Params:
    """The request's form body (query-string parameters are ignored)."""
    return parse_form(request.content_type, request.get_data(cache=True))


def _verify_token_body() -> dict[str, Any]:
    """The /verify_token body: JSON, or the form the original TokenDealer took."""
    data = request.get_json(silent=True) if request.is_json else None
    if data is None and request.mimetype == FORM:
        data = {name: values[0] for name, values in form_params().items()}
    if not isinstance(data, dict):
        raise InvalidRequest('the body must be JSON {"access_token": ..., "audience": ...}')
    return data


def create_app(
    config: Config | None = None, clock: Callable[[], float] = time.time, processes: int = 1, serving: bool = False, listener: str = "all"
) -> Flask:
    """Build a fresh application; `config` defaults to the environment; `processes` is the number of
    worker processes of this instance; `serving` as in `build_services`; `listener` what this listener serves:
    `all`, `public` (no /admin/) or `admin` (/admin/ and the health probes only; TOKENDEALER_ADMIN_LISTEN)."""
    config = config or Config.load()
    services = build_services(config, clock, processes, serving)
    app = Flask("tokendealer")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["MAX_FORM_PARTS"] = MAX_PARAMS * 2
    app.extensions["tokendealer"] = services
    _register_hooks(app, services)
    _register_errors(app, services)
    _register_views(app, services)
    register_admin_views(app, services.manage, services.guard)
    register_registration_views(app, services.registrar, services.guard)
    if config.ratelimit:
        # Request-rate limits are Flask-Limiter's, so the token endpoint then goes through Flask.
        _register_request_limits(app, services)
    else:
        # Flask's documented way to wrap the WSGI application, which its type stubs call a method.
        fast_path = TokenFastPath(app.wsgi_app, services.token_endpoint, services.metrics, config.max_body_bytes)
        app.wsgi_app = fast_path  # type: ignore[method-assign]
    if listener != "all":
        app.wsgi_app = ListenerGate(app.wsgi_app, admin=listener == "admin")  # type: ignore[method-assign]
    proxy = ProxyHeaders(app.wsgi_app, config.proxy_hops, config.proxy_networks, config.client_cert_header)
    app.wsgi_app = proxy  # type: ignore[method-assign]
    tracing.instrument(app, services.engine)
    # What `serve`'s edge may call for the token endpoint without WSGI: nothing else must see the request
    # first (request-rate limits, a tracing span), and the listener serves it.
    if not config.ratelimit and listener != "admin" and not tracing.enabled():
        app.extensions[DIRECT_TOKEN_PATH] = DirectTokenPath(proxy, fast_path)
    return app


def _register_request_limits(app: Flask, s: Services) -> None:
    """TOKENDEALER_RATELIMIT: request rates per address and per claimed client id (Flask-Limiter)."""
    from flask_limiter import Limiter  # noqa: PLC0415 (only loaded when limits are configured)

    def address() -> str:
        return request.remote_addr or "unknown"

    def claimed_client() -> str:
        try:
            auth = ClientAuth.parse(form_params(), request.headers.get, request.remote_addr)
        except OAuthError:
            return ""
        return s.authenticator.claimed_client_id(auth) or ""

    # SPEC §7: a client's budget is spent only by requests that authenticated as it, so no one without its
    # credentials can use it up by claiming its id; requests that claim none (the jwt-bearer grant, junk)
    # share no bucket either, and are bounded by the per-address limit.
    def note(client: Any) -> None:
        if has_request_context():
            g.rate_limited_client = client.client_id

    s.authenticator.on_authenticated = note

    def authenticated_as_claimed(response: Response) -> bool:
        return bool(g.get("rate_limited_client")) and g.get("rate_limited_client") == claimed_client()

    limiter = Limiter(
        key_func=address,
        app=app,
        storage_uri=s.config.ratelimit_storage,
        strategy="moving-window",
        headers_enabled=True,
    )
    rate = s.config.ratelimit or ""
    for endpoint in ("token", "introspect", "revoke"):
        view: Any = app.view_functions[endpoint]
        view = limiter.limit(rate, key_func=address, scope=f"{endpoint}-address")(view)
        view = limiter.limit(
            rate,
            key_func=claimed_client,
            scope=f"{endpoint}-client",
            exempt_when=lambda: not claimed_client(),
            deduct_when=authenticated_as_claimed,
        )(view)
        app.view_functions[endpoint] = view


def _register_hooks(app: Flask, s: Services) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id(request.headers.get("X-Request-ID"))

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        s.metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        if response.status_code == 429:
            s.metrics.rate_limited.labels(endpoint).inc()
        return response


def _register_errors(app: Flask, s: Services) -> None:
    def _answer(exc: OAuthError) -> Response:
        status, headers, body = error_parts(exc, request.path)
        return Response(body, status, headers, mimetype="application/json")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.code == 429:
            retry_after = dict(exc.get_headers()).get("Retry-After") or "1"
            return _answer(TooManyRequests("request rate limit exceeded; retry later", headers={"Retry-After": retry_after}))
        if exc.code == 413:
            return _answer(RequestTooLarge(f"the body is larger than {s.config.max_body_bytes} bytes"))
        if exc.code == 404:
            return _answer(NotFound("no such endpoint"))
        error = OAuthError(exc.description or exc.name)
        error.status = exc.code or 400
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            error.headers["Allow"] = ", ".join(exc.valid_methods)
        return _answer(error)

    @app.errorhandler(Exception)
    def _any_error(exc: Exception) -> Response:
        return _answer(as_oauth_error(exc))


def _register_views(app: Flask, s: Services) -> None:
    config = s.config
    jwks_cache: dict[Any, tuple[bytes, str]] = {}

    def _address() -> str | None:
        return request.remote_addr

    @app.post("/oauth/token")
    def token() -> Response:
        body = s.token_endpoint.create_token_response(TokenRequest.parse(form_params(), request.headers.get, _address()))
        return json_response(body, 200, NO_STORE)

    @app.post("/oauth/introspect")
    def introspect() -> Response:
        query = TokenQuery.parse(form_params(), request.headers.get, _address())
        return json_response(s.introspection.introspect(query), 200, NO_STORE)

    @app.post("/oauth/revoke")
    def revoke() -> Response:
        s.revocation.revoke(TokenQuery.parse(form_params(), request.headers.get, _address()))
        return json_response({}, 200, NO_STORE)

    verify_limit = (
        AddressRateLimit(config.ratelimit_storage, config.verify_token_limit, "/verify_token") if config.verify_token_limit else None
    )

    @app.post("/verify_token")
    def verify_token() -> Response:
        if verify_limit:
            verify_limit.hit(_address())
        data = _verify_token_body()
        if config.verify_token_auth:
            # The same client authentication as introspection: /verify_token tells revoked and disabled apart.
            params = {name: [value] for name, value in data.items() if isinstance(value, str)}
            s.authenticator.authenticate(ClientAuth.parse(params, request.headers.get, _address()))
        token, audience = data.get("access_token"), data.get("audience")
        if not isinstance(token, str) or not token:
            raise InvalidRequest("access_token is required")
        if not isinstance(audience, str) or not audience:
            raise InvalidRequest("audience is required")
        try:
            claims = s.tokens.validate(token, audience)
        except TokenRejected as exc:
            raise InvalidToken(str(exc)) from None
        return json_response(claims, 200, NO_STORE)

    @app.get("/.well-known/jwks.json")
    def jwks() -> Response:
        keyring = s.keys.current(check=True)
        if keyring is None:
            raise TemporarilyUnavailable("no keyring is loaded")
        published = keyring.published(s.clock(), s.tokens.max_token_lifetime)
        cache_key = tuple(r.kid for r in published)
        if cache_key not in jwks_cache:
            body = dumps({"keys": [r.jwk for r in published]}).encode()
            jwks_cache.clear()
            jwks_cache[cache_key] = (body, hashlib.sha256(body).hexdigest()[:32])
        body, etag = jwks_cache[cache_key]
        headers = {"Cache-Control": f"public, max-age={config.jwks_max_age}", "ETag": f'"{etag}"'}
        if request.if_none_match.contains(etag):
            return Response(status=304, headers=headers)
        return Response(body, 200, headers=headers, mimetype="application/json")

    metadata_body = dumps(server_metadata(config, s.token_endpoint.grant_types))

    def _metadata() -> Response:
        return Response(metadata_body, 200, {"Cache-Control": "public, max-age=60"}, mimetype="application/json")

    app.add_url_rule("/.well-known/oauth-authorization-server", "metadata", _metadata)
    app.add_url_rule("/.well-known/openid-configuration", "openid_configuration", _metadata)
    issuer_path = config.issuer.split("://", 1)[1].partition("/")[2].strip("/")
    if issuer_path:
        # RFC 8414 §3: for an issuer with a path, the well-known segment goes before that path.
        app.add_url_rule(f"/.well-known/oauth-authorization-server/{issuer_path}", "metadata_path", _metadata)
        app.add_url_rule(f"/{issuer_path}/.well-known/openid-configuration", "openid_configuration_path", _metadata)

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        # Problem names only: the detail (paths, hosts) goes to the server log, where the keyring's already is.
        problems = []
        try:
            db.ping(s.engine)
        except SQLAlchemyError as exc:
            log.warning("readiness: the database does not answer: %s", exc)
            problems.append("database: does not answer; see the server log")
        keyring = s.keys.current()
        if keyring is None or keyring.active is None:
            problems.append("keyring: no active signing key loaded")
        if s.keys.error:
            problems.append("keyring: cannot be loaded; see the server log")
        if problems:
            return json_response({"status": "unavailable", "problems": problems}, 503)
        return json_response({"status": "ok"})

    scrape_guard = ScrapeGuard(config.metrics_networks, config.metrics_token)

    @app.get("/metrics")
    def metrics() -> Response:
        scrape_guard.check(_address(), request.headers.get("Authorization"))
        return Response(s.metrics.render(), 200, mimetype=None, content_type=METRICS_CONTENT_TYPE)

    openapi_body = dumps(openapi_document(config))

    @app.get("/openapi.json")
    def openapi() -> Response:
        return Response(openapi_body, 200, mimetype="application/json")
