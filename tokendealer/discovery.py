"""Server metadata (RFC 8414, also served as OpenID discovery) and the OpenAPI 3 description of the API."""

from __future__ import annotations

from typing import Any

from client_lib.jose import ALGORITHMS, DPOP_ALGORITHMS

from .admin_openapi import SCHEMAS as ADMIN_SCHEMAS
from .admin_openapi import admin_paths
from .config import Config

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
# RFC 8705 §2: offered only when a trusted proxy passes client certificates (TOKENDEALER_CLIENT_CERT_HEADER).
TLS_AUTH_METHODS = ["tls_client_auth", "self_signed_tls_client_auth"]


def _auth_methods(config: Config) -> list[str]:
    return AUTH_METHODS + TLS_AUTH_METHODS if config.client_cert_header else AUTH_METHODS


def server_metadata(config: Config, grant_types: list[str]) -> dict[str, Any]:
    """RFC 8414 §2 authorization server metadata; `scopes_supported` names only the public scopes, as §2
    allows ("servers MAY choose not to advertise some supported scope values"). RFC 8705 §3.3 and §5:
    certificate-bound tokens are advertised when certificates reach the server; no `mtls_endpoint_aliases`,
    because the proxy terminating mutual TLS serves the very endpoint URLs named here."""
    methods = _auth_methods(config)
    return {
        "issuer": config.issuer,
        "token_endpoint": config.token_endpoint,
        "jwks_uri": config.url("/.well-known/jwks.json"),
        "introspection_endpoint": config.url("/oauth/introspect"),
        "revocation_endpoint": config.url("/oauth/revoke"),
        # RFC 7591 §3 (with an initial access token of scope tokendealer:register; README, "Managing from automation").
        "registration_endpoint": config.url("/oauth/register"),
        "grant_types_supported": grant_types,
        # REQUIRED by RFC 8414 §2; there is no authorization endpoint, and strict validators (Authlib)
        # refuse an empty list, so only the registered "none" type is named.
        "response_types_supported": ["none"],
        "token_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "introspection_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "revocation_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": config.scopes_published,
        # RFC 9449 §5.1: the algorithms a DPoP proof may use.
        "dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS),
        "service_documentation": config.url("/openapi.json"),
        "tls_client_certificate_bound_access_tokens": bool(config.client_cert_header),
    }


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _form_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": properties, "required": required}}},
    }


_CLIENT_AUTH_FIELDS = {
    "client_id": {"type": "string"},
    "client_secret": {"type": "string"},
    "client_assertion_type": {"type": "string"},
    "client_assertion": {"type": "string"},
}
# RFC 8693 §2.1, with grant_type=urn:ietf:params:oauth:grant-type:token-exchange.
_TOKEN_EXCHANGE_FIELDS = {
    "subject_token": {"type": "string"},
    "subject_token_type": {"type": "string"},
    "actor_token": {"type": "string"},
    "actor_token_type": {"type": "string"},
    "requested_token_type": {"type": "string"},
}
_ERRORS = {
    "400": _error_response("Invalid request"),
    "401": _error_response("Client authentication failed"),
    "413": _error_response("Request body too large"),
    "429": _error_response("Too many requests or failed authentications"),
    "503": _error_response("Temporarily unavailable"),
}
_GET_ERRORS = {"405": _error_response("Method not allowed")}


def _certificate_header(config: Config) -> list[dict[str, Any]]:
    """The header a trusted proxy passes the client certificate in (RFC 8705, RFC 9440), when configured."""
    if not config.client_cert_header:
        return []
    description = (
        "Set only by the TLS-terminating proxy (addresses in TOKENDEALER_TRUSTED_PROXIES; from anyone else it is "
        "ignored): the client's certificate as RFC 9440 :base64-DER: or nginx's URL-encoded PEM. It authenticates "
        "tls_client_auth / self_signed_tls_client_auth clients (with client_id) and binds tokens (cnf.x5t#S256)."
    )
    return [
        {"in": "header", "name": config.client_cert_header, "required": False, "schema": {"type": "string"}, "description": description}
    ]


def openapi_document(config: Config) -> dict[str, Any]:
    """An OpenAPI 3.0 document of every endpoint."""
    certificate = _certificate_header(config)
    with_certificate = {"parameters": certificate} if certificate else {}
    claims = {"type": "object", "additionalProperties": True}
    status = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"], "additionalProperties": True}
    return {
        "openapi": "3.0.3",
        "info": {"title": "TokenDealer", "version": "1.0.0", "description": "OAuth 2.0 token server for services"},
        "servers": [{"url": config.issuer}],
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
                    "required": ["error"],
                },
                "Token": {
                    "type": "object",
                    "properties": {
                        "access_token": {"type": "string"},
                        "token_type": {"type": "string", "enum": ["Bearer", "DPoP"]},
                        "expires_in": {"type": "integer"},
                        "scope": {"type": "string"},
                        "issued_token_type": {"type": "string"},
                    },
                    "required": ["access_token", "token_type", "expires_in", "scope"],
                },
                **ADMIN_SCHEMAS,
            },
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "An access token of this server"},
            },
        },
        "paths": {
            "/oauth/token": {
                "post": {
                    "summary": "Client-credentials grant (RFC 6749 §4.4), token exchange (RFC 8693) and JWT bearer grant (RFC 7523 §2.1)",
                    "description": (
                        "grant_type=client_credentials with client authentication (a secret, private_key_jwt, or a "
                        "client_assertion from a trusted external issuer with client_id: federated client authentication), "
                        "grant_type=urn:ietf:params:oauth:grant-type:token-exchange, "
                        "or grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer with assertion= a workload token of a "
                        "trusted issuer and no client authentication (the matching federation rule names the client)."
                    ),
                    "security": [{"basic": []}, {}],
                    "parameters": [
                        {
                            "name": "DPoP",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": (
                                "RFC 9449 DPoP proof (a dpop+jwt JWS with htm=POST and htu= this endpoint): the token is "
                                "then bound to its key (cnf.jkt) and token_type is DPoP. A bad proof is 400 "
                                "invalid_dpop_proof; with TOKENDEALER_DPOP_NONCE a proof without the current nonce is 400 "
                                "use_dpop_nonce and the nonce comes in the DPoP-Nonce response header."
                            ),
                        },
                        *certificate,
                    ],
                    "requestBody": _form_body(
                        {
                            "grant_type": {"type": "string"},
                            "scope": {"type": "string"},
                            "audience": {"type": "string"},
                            "resource": {"type": "array", "items": {"type": "string"}},
                            "assertion": {"type": "string", "description": "RFC 7523 §2.1: the JWT of the jwt-bearer grant"},
                            **_TOKEN_EXCHANGE_FIELDS,
                            **_CLIENT_AUTH_FIELDS,
                        },
                        ["grant_type"],
                    ),
                    "responses": {
                        "200": _json_response("Access token", {"$ref": "#/components/schemas/Token"}),
                        **_ERRORS,
                        "400": {
                            **_error_response("Invalid request, or invalid_dpop_proof / use_dpop_nonce (RFC 9449 §5, §8)"),
                            "headers": {
                                "DPoP-Nonce": {
                                    "description": "With use_dpop_nonce: the nonce the next proof must carry",
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                    },
                }
            },
            "/oauth/introspect": {
                "post": {
                    **with_certificate,
                    "summary": "Token introspection (RFC 7662)",
                    "security": [{"basic": []}, {}],
                    "requestBody": _form_body(
                        {"token": {"type": "string"}, "token_type_hint": {"type": "string"}, **_CLIENT_AUTH_FIELDS}, ["token"]
                    ),
                    "responses": {
                        "200": _json_response(
                            "Introspection result",
                            {
                                "type": "object",
                                "properties": {"active": {"type": "boolean"}},
                                "required": ["active"],
                                "additionalProperties": True,
                            },
                        ),
                        **_ERRORS,
                    },
                }
            },
            "/oauth/revoke": {
                "post": {
                    **with_certificate,
                    "summary": "Token revocation (RFC 7009)",
                    "security": [{"basic": []}, {}],
                    "requestBody": _form_body(
                        {"token": {"type": "string"}, "token_type_hint": {"type": "string"}, **_CLIENT_AUTH_FIELDS}, ["token"]
                    ),
                    "responses": {"200": _json_response("Revoked, or nothing to revoke", {"type": "object"}), **_ERRORS},
                }
            },
            "/verify_token": {
                "post": {
                    "summary": "Verify an access token and return its claims",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"access_token": {"type": "string"}, "audience": {"type": "string"}},
                                    "required": ["access_token", "audience"],
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json_response("The token's claims", claims),
                        "400": _error_response("Invalid request or invalid token"),
                        "401": _error_response("Client authentication failed (with TOKENDEALER_VERIFY_TOKEN_AUTH)"),
                        "413": _ERRORS["413"],
                        "429": _error_response("Too many requests from this address, or failed authentications"),
                        "503": _ERRORS["503"],
                    },
                }
            },
            "/.well-known/jwks.json": {
                "get": {
                    "summary": "JWK Set of the published public keys (RFC 7517)",
                    "responses": {
                        "200": _json_response(
                            "JWK Set",
                            {
                                "type": "object",
                                "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
                                "required": ["keys"],
                            },
                        ),
                        "304": {"description": "Not modified"},
                        **_GET_ERRORS,
                    },
                }
            },
            "/.well-known/oauth-authorization-server": {
                "get": {
                    "summary": "RFC 8414 metadata",
                    "responses": {"200": _json_response("Metadata", claims), "503": _ERRORS["503"], **_GET_ERRORS},
                }
            },
            "/.well-known/openid-configuration": {
                "get": {
                    "summary": "The same metadata for OIDC discovery",
                    "responses": {"200": _json_response("Metadata", claims), "503": _ERRORS["503"], **_GET_ERRORS},
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json_response("Alive", status), **_GET_ERRORS}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {"200": _json_response("Ready", status), "503": _json_response("Not ready", status), **_GET_ERRORS},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "401": _error_response("The metrics bearer token is missing or wrong (TOKENDEALER_METRICS_TOKEN)"),
                        "403": _error_response("The address is not allowed (TOKENDEALER_METRICS_ALLOW)"),
                        **_GET_ERRORS,
                    },
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json_response("OpenAPI", claims), **_GET_ERRORS}}},
            **admin_paths(),
        },
    }
