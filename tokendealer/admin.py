"""The admin API under `/admin/` (SPEC §3.2): thin Flask views over `management.Management`, admitted by
`bearer.BearerGuard` (`tokendealer:read` or `tokendealer:admin` for GETs, `tokendealer:admin` for changes).

Bodies are JSON with the fields of `client show --json`. PATCH and DELETE of a client must carry the
`If-Match` of the version the caller read (428 without, 412 when stale), so two operators never overwrite
each other's changes unseen. Lists are paged by `limit` and an opaque `cursor` (the answer's `next`)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, request

from .bearer import BearerGuard, Caller, bearer_token
from .clients import CLIENT_ID_RE
from .errors import AlreadyExists, InvalidClientMetadata, InvalidRequest, NotFound, OAuthError, PreconditionFailed, PreconditionRequired
from .http import NO_STORE, dumps, error_parts
from .management import (
    ADMIN_SCOPE,
    READ_SCOPE,
    REGISTER_SCOPE,
    Conflict,
    Invalid,
    Management,
    ManagementError,
    Missing,
    Stale,
    client_fields,
    etag,
)
from .registration import Registrar, Registration, RegistrationTokenRejected

VIA = "admin_api"
DEFAULT_PAGE = 100
MAX_PAGE = 1000
JSON_TYPES = ("application/json", "application/merge-patch+json")


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# What the admin listener serves besides /admin/: its own health probes.
ADMIN_LISTENER_ALSO = frozenset({"/healthz", "/readyz"})


class ListenerGate:
    """WSGI middleware for TOKENDEALER_ADMIN_LISTEN: the public listener answers 404 under /admin/, and the
    admin listener answers 404 to everything else (but its health probes)."""

    def __init__(self, app: WSGIApp, admin: bool):
        self.app = app
        self.admin = admin

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        is_admin = path.startswith("/admin/") or path == "/admin"
        if is_admin == self.admin or (self.admin and path in ADMIN_LISTENER_ALSO):
            return self.app(environ, start_response)
        status, headers, body = error_parts(NotFound("no such endpoint"), path)
        start_response(f"{status} Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers.items()])
        return [body]


def http_error(exc: ManagementError, invalid: type[OAuthError] = InvalidRequest) -> OAuthError:
    """A management refusal as its HTTP answer: 400 (`invalid` names the error code), 404, 409 or 412."""
    if isinstance(exc, Missing):
        return NotFound(str(exc))
    if isinstance(exc, Conflict):
        return AlreadyExists(str(exc))
    if isinstance(exc, Stale):
        return PreconditionFailed(str(exc))
    return invalid(str(exc))


def json_body(required: bool = True) -> Any:
    """The request's JSON body (None when it is empty and not `required`); 400 for anything else."""
    data = request.get_data(cache=True)
    if not data and not required:
        return None
    if (request.mimetype or "") not in JSON_TYPES:
        raise InvalidRequest("the body must be application/json")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidRequest("the body is not valid JSON") from None


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status, {**NO_STORE, **(headers or {})}, mimetype="application/json")


def _options(body: Any, allowed: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """An action's JSON options: an object of known fields of the given types (an empty body is no options)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    for name, value in body.items():
        if name not in allowed:
            raise InvalidRequest(f"unknown field {name!r}")
        kind = allowed[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise InvalidRequest(f"field {name!r} has the wrong type")
    return body


def _cursor(value: str | None) -> str | None:
    """The client id an opaque cursor stands for."""
    if value is None:
        return None
    try:
        after = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        after = ""
    if not CLIENT_ID_RE.match(after) or _encode_cursor(after) != value:
        raise InvalidRequest("cursor is not one this server gave")
    return after


def _encode_cursor(client_id: str) -> str:
    return base64.urlsafe_b64encode(client_id.encode()).decode().rstrip("=")


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(value)


Route = Callable[[str, list[str], str], Callable[[Callable[..., Response]], Callable[..., Response]]]


def router(app: Flask, invalid: type[OAuthError] = InvalidRequest) -> Route:
    """A decorator adding a view whose management refusals are answered by `http_error`."""

    def route(rule: str, methods: list[str], endpoint: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        def wrap(view: Callable[..., Response]) -> Callable[..., Response]:
            def answered(**kwargs: Any) -> Response:
                try:
                    return view(**kwargs)
                except ManagementError as exc:
                    raise http_error(exc, invalid) from None

            app.add_url_rule(rule, endpoint, answered, methods=methods)
            return view

        return wrap

    return route


def admitted(guard: BearerGuard, any_of: tuple[str, ...]) -> Caller:
    """The caller of this request, admitted by its bearer token with one of the scopes `any_of`."""
    return guard.caller(request.headers.get("Authorization"), request.remote_addr, any_of)


def register_registration_views(app: Flask, registrar: Registrar, guard: BearerGuard) -> None:
    """RFC 7591 `POST /oauth/register` (initial access token: scope tokendealer:register) and RFC 7592 at
    each client's registration_client_uri (its registration access token)."""
    route = router(app, InvalidClientMetadata)

    @route("/oauth/register", ["POST"], "register")
    def register() -> Response:
        caller = admitted(guard, (REGISTER_SCOPE,))
        answer = registrar.register(caller.client_id, caller.claims, json_body())
        return json_answer(answer, 201, {"Location": answer["registration_client_uri"]})

    def registration(client_id: str) -> Registration:
        try:
            return registrar.authorised(client_id, bearer_token(request.headers.get("Authorization")))
        except RegistrationTokenRejected as exc:
            guard.refuse(request.remote_addr, str(exc) if request.headers.get("Authorization") else None)

    @route("/oauth/register/<client_id>", ["GET"], "registration_read")
    def registration_read(client_id: str) -> Response:
        return json_answer(registrar.read(registration(client_id)))

    @route("/oauth/register/<client_id>", ["PUT"], "registration_update")
    def registration_update(client_id: str) -> Response:
        found = registration(client_id)
        return json_answer(registrar.update(found, json_body()))

    @route("/oauth/register/<client_id>", ["DELETE"], "registration_delete")
    def registration_delete(client_id: str) -> Response:
        registrar.delete(registration(client_id))
        return Response(status=204, headers=NO_STORE)


def register_admin_views(app: Flask, manage: Management, guard: BearerGuard) -> None:
    """Add the /admin/ routes to `app`."""
    route = router(app)

    def reader() -> Caller:
        return admitted(guard, (READ_SCOPE, ADMIN_SCOPE))

    def writer() -> Caller:
        return admitted(guard, (ADMIN_SCOPE,))

    def if_match() -> str:
        value = request.headers.get("If-Match")
        if not value:
            raise PreconditionRequired("send If-Match with the ETag of the client as you read it (GET /admin/clients/{id})")
        return value

    def client_answer(client: Any, status: int = 200, extra: dict[str, Any] | None = None) -> Response:
        headers = {"ETag": etag(client)}
        if status == 201:
            headers["Location"] = f"/admin/clients/{client.client_id}"
        return json_answer({**client.public_view(), **(extra or {})}, status, headers)

    @route("/admin/clients", ["GET"], "admin_clients_list")
    def clients_list() -> Response:
        reader()
        limit = _limit(request.args.get("limit"))
        page = manage.list_clients(after=_cursor(request.args.get("cursor")), limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        body: dict[str, Any] = {"clients": [c.public_view() for c in page], "next": None}
        headers = {}
        if more:
            body["next"] = "/admin/clients?" + urlencode({"limit": limit, "cursor": _encode_cursor(page[-1].client_id)})
            headers["Link"] = f'<{body["next"]}>; rel="next"'
        return json_answer(body, 200, headers)

    @route("/admin/clients", ["POST"], "admin_clients_create")
    def clients_create() -> Response:
        caller = writer()
        body = json_body()
        if not isinstance(body, dict):
            raise Invalid("the body must be a JSON object")
        client_id = body.get("client_id")
        if not isinstance(client_id, str):
            raise Invalid("field 'client_id' is required (a string)")
        no_secret = body.get("no_secret", False)
        if not isinstance(no_secret, bool):
            raise Invalid("field 'no_secret' must be true or false")
        fields = client_fields({k: v for k, v in body.items() if k != "no_secret"})
        client, secret = manage.create_client(caller.client_id, VIA, client_id, no_secret=no_secret, **fields)
        return client_answer(client, 201, {"client_secret": secret} if secret else None)

    @route("/admin/clients/<client_id>", ["GET"], "admin_client_show")
    def client_show(client_id: str) -> Response:
        reader()
        return client_answer(manage.show_client(client_id))

    @route("/admin/clients/<client_id>", ["PATCH"], "admin_client_update")
    def client_update(client_id: str) -> Response:
        caller = writer()
        condition = if_match()
        changes = client_fields(json_body(), manage.show_client(client_id))
        return client_answer(manage.update_client(caller.client_id, VIA, client_id, changes, if_match=condition))

    @route("/admin/clients/<client_id>", ["DELETE"], "admin_client_delete")
    def client_delete(client_id: str) -> Response:
        caller = writer()
        manage.delete_client(caller.client_id, VIA, client_id, if_match=if_match())
        return Response(status=204, headers=NO_STORE)

    @route("/admin/clients/<client_id>/rotate-secret", ["POST"], "admin_client_rotate_secret")
    def client_rotate_secret(client_id: str) -> Response:
        caller = writer()
        grace = _options(json_body(required=False), {"grace": int}).get("grace", 0)
        if grace < 0:
            raise Invalid("field 'grace' must not be negative")
        client, secret = manage.rotate_secret(caller.client_id, VIA, client_id, grace)
        body = {"client_id": client.client_id, "client_secret": secret, "previous_secret_valid_until": client.previous_secret_expires_at}
        return json_answer(body, 200, {"ETag": etag(client)})

    def set_enabled(client_id: str, enabled: bool) -> Response:
        caller = writer()
        _options(json_body(required=False), {})
        return client_answer(manage.set_enabled(caller.client_id, VIA, client_id, enabled))

    route("/admin/clients/<client_id>/disable", ["POST"], "admin_client_disable")(lambda client_id: set_enabled(client_id, False))
    route("/admin/clients/<client_id>/enable", ["POST"], "admin_client_enable")(lambda client_id: set_enabled(client_id, True))

    @route("/admin/clients/<client_id>/federation", ["GET"], "admin_federation_list")
    def federation_list(client_id: str) -> Response:
        reader()
        return json_answer({"rules": [r.view() for r in manage.federation_rules(client_id)]})

    @route("/admin/clients/<client_id>/federation", ["POST"], "admin_federation_add")
    def federation_add(client_id: str) -> Response:
        caller = writer()
        body = _options(json_body(), {"issuer": str, "subject": str, "audience": str, "conditions": list, "single_use": bool})
        if "issuer" not in body or "subject" not in body:
            raise Invalid("fields 'issuer' and 'subject' are required")
        conditions = body.get("conditions", [])
        if not all(isinstance(c, str) for c in conditions):
            raise Invalid("field 'conditions' must be a list of CLAIM=VALUE strings")
        single_use = body.get("single_use", False)
        rule, warnings = manage.federate(
            caller.client_id, VIA, client_id, body["issuer"], body["subject"], body.get("audience"), conditions, single_use
        )
        return json_answer({**rule.view(), "warnings": warnings}, 201)

    @route("/admin/clients/<client_id>/federation/<rule_id>", ["DELETE"], "admin_federation_remove")
    def federation_remove(client_id: str, rule_id: str) -> Response:
        caller = writer()
        manage.remove_rule(caller.client_id, VIA, client_id, rule_id)
        return Response(status=204, headers=NO_STORE)

    @route("/admin/keys", ["GET"], "admin_keys_list")
    def keys_list() -> Response:
        reader()
        return json_answer({"keys": manage.key_rows()})

    @route("/admin/keys/rotate", ["POST"], "admin_keys_rotate")
    def keys_rotate() -> Response:
        caller = writer()
        options = _options(json_body(required=False), {"now": bool, "alg": str})
        warnings = manage.rotate_keys(caller.client_id, VIA, options.get("alg"), options.get("now", False))
        return json_answer({"keys": manage.key_rows(), "warnings": warnings})

    @route("/admin/keys/prune", ["POST"], "admin_keys_prune")
    def keys_prune() -> Response:
        caller = writer()
        _options(json_body(required=False), {})
        return json_answer({"pruned": manage.prune_keys(caller.client_id, VIA)})

    @route("/admin/issuers", ["GET"], "admin_issuers_list")
    def issuers_list() -> Response:
        reader()
        return json_answer({"issuers": [r.view() for r in manage.list_issuers()]})

    @route("/admin/issuers", ["POST"], "admin_issuers_add")
    def issuers_add() -> Response:
        caller = writer()
        body = _options(json_body(), {"issuer": str, "jwks": dict, "allow_http": bool})
        if "issuer" not in body:
            raise Invalid("field 'issuer' is required")
        record = manage.add_issuer(caller.client_id, VIA, body["issuer"], body.get("jwks"), body.get("allow_http", False))
        return json_answer(record.view(), 201)

    @route("/admin/issuers", ["DELETE"], "admin_issuers_remove")
    def issuers_remove() -> Response:
        caller = writer()
        issuer = request.args.get("issuer")
        if not issuer:
            raise Invalid("give the issuer to remove as ?issuer=URL")
        removed = manage.remove_issuer(caller.client_id, VIA, issuer)
        return json_answer({"issuer": issuer, "result": "removed", "rules_removed": removed})
