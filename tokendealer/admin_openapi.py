"""The OpenAPI 3 description of the admin API (SPEC §3.2) and of dynamic registration (RFC 7591/7592),
merged into `/openapi.json` by `discovery.openapi_document`."""

from __future__ import annotations

from typing import Any

from client_lib.jose import ALGORITHMS

from .management import ADMIN_SCOPE, READ_SCOPE, REGISTER_SCOPE

_STRINGS = {"type": "array", "items": {"type": "string"}}
_NULLABLE_STRING = {"type": "string", "nullable": True}
# What a caller may set: the writable fields of `client show --json`.
_WRITABLE = {
    "scopes": _STRINGS,
    "audiences": _STRINGS,
    "default_scopes": {**_STRINGS, "nullable": True},
    "default_audience": _NULLABLE_STRING,
    "token_ttl": {"type": "integer", "nullable": True},
    "claims": {"type": "object"},
    "jwks": {"type": "object", "nullable": True},
    "jwks_uri": _NULLABLE_STRING,
    "serves": _STRINGS,
    "exchange_audiences": _STRINGS,
    "require_dpop": {"type": "boolean"},
    "tls_subject": _NULLABLE_STRING,
    "tls_san": _NULLABLE_STRING,
}
_READ_ONLY = {
    "enabled": {"type": "boolean"},
    "auth_method": {"type": "string"},
    "created_at": {"type": "number"},
    "updated_at": {"type": "number"},
    "tokens_not_before": {"type": "number", "nullable": True},
    "previous_secret_expires_at": {"type": "number", "nullable": True},
}
SCHEMAS: dict[str, Any] = {
    "Client": {
        "type": "object",
        "description": "A client as `client show --json` prints it (never its secret)",
        "properties": {"client_id": {"type": "string"}, **_WRITABLE, **_READ_ONLY},
        "required": ["client_id", "scopes", "audiences", "enabled", "auth_method"],
    },
    "NewClient": {
        "type": "object",
        "properties": {
            "client_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "no_secret": {"type": "boolean"},
            **_WRITABLE,
        },
        "required": ["client_id", "audiences"],
        "additionalProperties": False,
    },
    "ClientChanges": {
        "type": "object",
        "description": "Fields to replace; read-only fields are accepted only unchanged, so a shown record may be sent back edited",
        "properties": {"client_id": {"type": "string"}, **_WRITABLE, **_READ_ONLY},
        "additionalProperties": False,
    },
    "FederationRule": {
        "type": "object",
        "properties": {
            "rule_id": {"type": "string"},
            "client_id": {"type": "string"},
            "issuer": {"type": "string"},
            "subject": {"type": "string"},
            "audience": {"type": "string"},
            "conditions": _STRINGS,
            "single_use": {"type": "boolean"},
            "created_at": {"type": "number"},
        },
        "required": ["rule_id", "client_id", "issuer", "subject", "audience"],
    },
    "TrustedIssuer": {
        "type": "object",
        "properties": {
            "issuer": {"type": "string"},
            "keys": {"type": "string", "enum": ["jwks", "discovery"]},
            "jwks_uri": _NULLABLE_STRING,
            "kids": {"type": "array", "items": {"type": "string", "nullable": True}, "nullable": True},
            "allow_http": {"type": "boolean"},
            "created_at": {"type": "number"},
        },
        "required": ["issuer", "keys"],
    },
    "Key": {
        "type": "object",
        "properties": {
            "kid": {"type": "string"},
            "alg": {"type": "string"},
            "state": {"type": "string", "enum": ["next", "active", "retired", "revoked"]},
            "created_at": {"type": "number"},
            "activated_at": {"type": "number", "nullable": True},
            "retired_at": {"type": "number", "nullable": True},
            "revoked_at": {"type": "number", "nullable": True},
            "age_seconds": {"type": "integer"},
            "prunable_at": {"type": "number", "nullable": True},
        },
        "required": ["kid", "alg", "state"],
    },
    "RegisteredClient": {
        "type": "object",
        "description": "RFC 7591 §3.2.1 (client_secret and registration_access_token only in the registration answer)",
        "properties": {
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
            "client_id_issued_at": {"type": "integer"},
            "client_secret_expires_at": {"type": "integer"},
            "registration_access_token": {"type": "string"},
            "registration_client_uri": {"type": "string"},
            "token_endpoint_auth_method": {"type": "string"},
            "grant_types": _STRINGS,
            "client_name": {"type": "string"},
            "scope": {"type": "string"},
            "audiences": _STRINGS,
            "jwks": {"type": "object"},
            "jwks_uri": {"type": "string"},
            "dpop_bound_access_tokens": {"type": "boolean"},
        },
        "required": ["client_id", "client_id_issued_at", "registration_client_uri", "token_endpoint_auth_method", "grant_types"],
    },
    "ClientMetadata": {
        "type": "object",
        "description": "RFC 7591 §2 metadata (others are ignored), plus the `audiences` extension",
        "properties": {
            "client_id": {"type": "string", "description": "RFC 7592 updates only: the registered client_id"},
            "client_name": {"type": "string"},
            "token_endpoint_auth_method": {
                "type": "string",
                "enum": ["client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth"],
            },
            "grant_types": {"type": "array", "items": {"type": "string", "enum": ["client_credentials"]}},
            "scope": {"type": "string"},
            "audiences": _STRINGS,
            "jwks": {"type": "object"},
            "jwks_uri": {"type": "string"},
            "tls_client_auth_subject_dn": {"type": "string"},
            "tls_client_auth_san_dns": {"type": "string"},
            "tls_client_auth_san_uri": {"type": "string"},
            "dpop_bound_access_tokens": {"type": "boolean", "description": "RFC 9449 §5.2: every token request must carry a DPoP proof"},
        },
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


_ETAG = {"ETag": {"schema": {"type": "string"}, "description": "The version of the client record (for If-Match)"}}
_IF_MATCH = {
    "in": "header",
    "name": "If-Match",
    "required": True,
    "schema": {"type": "string"},
    "description": "The ETag of the client as read: PATCH and DELETE refuse without it (428) or when it is stale (412)",
}
_CLIENT_ID = {"in": "path", "name": "client_id", "required": True, "schema": {"type": "string"}}
_AUTH_ERRORS = {
    "401": _error("No valid Bearer token (RFC 6750 `WWW-Authenticate: Bearer`)"),
    "403": _error("The token lacks the scope (insufficient_scope)"),
    "405": _error("Method not allowed"),
    "413": _error("Request body too large"),
    "429": _error("Too many failed authentications from this address"),
    "503": _error("Temporarily unavailable"),
}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str, scope: str, responses: dict[str, Any], body: dict[str, Any] | None = None, parameters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": [scope]}],
        "responses": {**responses, "400": _error("Invalid request"), **_AUTH_ERRORS},
    }
    if body is not None:
        operation["requestBody"] = body
    if parameters:
        operation["parameters"] = parameters
    return operation


def _options(properties: dict[str, Any]) -> dict[str, Any]:
    return _body({"type": "object", "properties": properties, "additionalProperties": False}, required=False)


def admin_paths() -> dict[str, Any]:
    """The /admin/ operations and the registration endpoints."""
    read, admin = f"{READ_SCOPE} or {ADMIN_SCOPE}", ADMIN_SCOPE
    client = _json("The client", _ref("Client"), _ETAG)
    missing = {"404": _error("No such client")}
    page = {
        "type": "object",
        "properties": {"clients": {"type": "array", "items": _ref("Client")}, "next": {"type": "string", "nullable": True}},
        "required": ["clients", "next"],
    }
    created_client = {"allOf": [_ref("Client"), {"type": "object", "properties": {"client_secret": {"type": "string"}}}]}
    rotated = {
        "type": "object",
        "properties": {
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
            "previous_secret_valid_until": {"type": "number", "nullable": True},
        },
        "required": ["client_id", "client_secret"],
    }
    keys = {"type": "object", "properties": {"keys": {"type": "array", "items": _ref("Key")}, "warnings": _STRINGS}, "required": ["keys"]}
    registration_auth = {
        "401": _error("No valid registration access token"),
        "405": _error("Method not allowed"),
        "413": _error("Request body too large"),
        "429": _error("Too many failed authentications from this address"),
        "503": _error("Temporarily unavailable"),
    }
    by_registration_token: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "/admin/clients": {
            "get": _operation(
                "List clients, paged (limit, cursor: follow `next`)",
                read,
                {"200": _json("A page of clients", page, {"Link": {"schema": {"type": "string"}}})},
                parameters=[
                    {"in": "query", "name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"in": "query", "name": "cursor", "schema": {"type": "string"}},
                ],
            ),
            "post": _operation(
                "Register a client (its secret, if it has one, is in this answer only)",
                admin,
                {"201": _json("Created", created_client, _ETAG), "409": _error("The client id is taken")},
                _body(_ref("NewClient")),
            ),
        },
        "/admin/clients/{client_id}": {
            "parameters": [_CLIENT_ID],
            "get": _operation("Show a client", read, {"200": client, **missing}),
            "patch": _operation(
                "Replace the fields given",
                admin,
                {
                    "200": client,
                    **missing,
                    "412": _error("If-Match is stale"),
                    "428": _error("If-Match is required"),
                },
                _body(_ref("ClientChanges")),
                [_IF_MATCH],
            ),
            "delete": _operation(
                "Delete a client",
                admin,
                {
                    "204": {"description": "Deleted"},
                    **missing,
                    "412": _error("If-Match is stale"),
                    "428": _error("If-Match is required"),
                },
                parameters=[_IF_MATCH],
            ),
        },
        "/admin/clients/{client_id}/rotate-secret": {
            "parameters": [_CLIENT_ID],
            "post": _operation(
                "A new secret (in this answer only); the old one stays valid `grace` seconds",
                admin,
                {"200": _json("The new secret", rotated, _ETAG), **missing},
                _options({"grace": {"type": "integer", "minimum": 0}}),
            ),
        },
        "/admin/clients/{client_id}/disable": {
            "parameters": [_CLIENT_ID],
            "post": _operation("Refuse the client's authentication and its tokens", admin, {"200": client, **missing}, _options({})),
        },
        "/admin/clients/{client_id}/enable": {
            "parameters": [_CLIENT_ID],
            "post": _operation("Allow a disabled client again", admin, {"200": client, **missing}, _options({})),
        },
        "/admin/clients/{client_id}/federation": {
            "parameters": [_CLIENT_ID],
            "get": _operation(
                "The client's federation rules",
                read,
                {
                    "200": _json(
                        "Rules",
                        {"type": "object", "properties": {"rules": _array("FederationRule")}, "required": ["rules"]},
                    ),
                    **missing,
                },
            ),
            "post": _operation(
                "Trust workload tokens of a trusted issuer for the client (SPEC §4.1)",
                admin,
                {
                    "201": _json("The rule", {"allOf": [_ref("FederationRule"), {"type": "object", "properties": {"warnings": _STRINGS}}]}),
                    **missing,
                },
                _body(
                    {
                        "type": "object",
                        "properties": {
                            "issuer": {"type": "string"},
                            "subject": {"type": "string"},
                            "audience": {"type": "string"},
                            "conditions": _STRINGS,
                            "single_use": {"type": "boolean"},
                        },
                        "required": ["issuer", "subject"],
                        "additionalProperties": False,
                    }
                ),
            ),
        },
        "/admin/clients/{client_id}/federation/{rule_id}": {
            "parameters": [_CLIENT_ID, {"in": "path", "name": "rule_id", "required": True, "schema": {"type": "string"}}],
            "delete": _operation("Remove a federation rule", admin, {"204": {"description": "Removed"}, "404": _error("No such rule")}),
        },
        "/admin/keys": {"get": _operation("The keyring (no private material)", read, {"200": _json("Keys", keys)})},
        "/admin/keys/rotate": {
            "post": _operation(
                "Rotate: next becomes active; with now=true, an emergency replacement of the active key",
                admin,
                {"200": _json("The keyring after the rotation", keys)},
                _options({"now": {"type": "boolean"}, "alg": {"type": "string", "enum": list(ALGORITHMS)}}),
            )
        },
        "/admin/keys/prune": {
            "post": _operation(
                "Delete retired keys whose tokens have all expired",
                admin,
                {"200": _json("The kids pruned", {"type": "object", "properties": {"pruned": _STRINGS}, "required": ["pruned"]})},
                _options({}),
            )
        },
        "/admin/issuers": {
            "get": _operation(
                "Trusted external issuers",
                read,
                {
                    "200": _json(
                        "Issuers",
                        {"type": "object", "properties": {"issuers": _array("TrustedIssuer")}, "required": ["issuers"]},
                    )
                },
            ),
            "post": _operation(
                "Trust an issuer (its discovery is fetched now unless jwks is given)",
                admin,
                {"201": _json("The issuer", _ref("TrustedIssuer"))},
                _body(
                    {
                        "type": "object",
                        "properties": {"issuer": {"type": "string"}, "jwks": {"type": "object"}, "allow_http": {"type": "boolean"}},
                        "required": ["issuer"],
                        "additionalProperties": False,
                    }
                ),
            ),
            "delete": _operation(
                "Stop trusting an issuer; its federation rules go with it",
                admin,
                {"200": _json("Removed", {"type": "object"}), "404": _error("No such issuer")},
                parameters=[{"in": "query", "name": "issuer", "required": True, "schema": {"type": "string"}}],
            ),
        },
        "/oauth/register": {
            "post": {
                "summary": "RFC 7591 dynamic registration, with an initial access token (scope tokendealer:register)",
                "security": [{"bearer": [REGISTER_SCOPE]}],
                "requestBody": _body(_ref("ClientMetadata")),
                "responses": {
                    "201": _json("Registered", _ref("RegisteredClient"), {"Location": {"schema": {"type": "string"}}}),
                    "400": _error("invalid_client_metadata"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/oauth/register/{client_id}": {
            "parameters": [_CLIENT_ID],
            "get": {
                "summary": "RFC 7592 §2.1 read",
                "security": by_registration_token,
                "responses": {"200": _json("Metadata", _ref("RegisteredClient")), **registration_auth},
            },
            "put": {
                "summary": "RFC 7592 §2.2 update",
                "security": by_registration_token,
                "requestBody": _body(_ref("ClientMetadata")),
                "responses": {
                    "200": _json("Metadata", _ref("RegisteredClient")),
                    "400": _error("invalid_client_metadata"),
                    **registration_auth,
                },
            },
            "delete": {
                "summary": "RFC 7592 §2.3 delete",
                "security": by_registration_token,
                "responses": {"204": {"description": "Deleted"}, **registration_auth},
            },
        },
    }
