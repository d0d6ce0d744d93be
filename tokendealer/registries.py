"""The registries `tokendealer apply` carries a plan out on: this machine's, through the management layer the CLI
and the admin API share (the same checks, error texts and audit lines, `via: apply`), or a remote server's
admin API (SPEC §3.2), which audits each change with the acting client's id.

Either way a client is changed or deleted only in the version the plan was made from: one changed meanwhile
(by another operator, another apply) is refused rather than overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urljoin

import requests
from sqlalchemy.exc import SQLAlchemyError

from client_lib import TokenClientError
from client_lib.core.failures import network_failure

from .clients import ClientError
from .management import Management, ManagementError, etag
from .manifest import DesiredClient, DesiredIssuer, DesiredRule, Manifest, ManifestError
from .reconcile import RegistryError, Snapshot

VIA = "apply"
# A client's fields as the admin API (and the management layer) take them: `enabled` has its own action, and
# the auth method follows from the keys, certificate or `no_secret`.
_NOT_WRITABLE = ("enabled", "auth_method")
# Pages of clients read from a remote registry, at most (a million clients).
MAX_PAGES = 1000


def _stale(client_id: str) -> RegistryError:
    return RegistryError(f"client {client_id!r} changed since apply read it; run apply again to see the new difference")


@contextmanager
def _refusals() -> Iterator[None]:
    """The management layer's refusals as RegistryError, with their own (already readable) text."""
    try:
        yield
    except ManagementError as exc:
        raise RegistryError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise RegistryError(f"database error ({exc.__class__.__name__}); has `tokendealer init` been run?") from None


class LocalRegistry:
    """The registry of this machine's configuration, through `management.Management`."""

    def __init__(self, manage: Management, actor: str):
        self.manage = manage
        self.actor = actor

    def validate(self, manifest: Manifest) -> None:
        """Every client record through the registry's own checks, before anything is changed."""
        for desired in manifest.clients:
            try:
                self.manage.clients.validate(desired.record)
            except ClientError as exc:
                raise ManifestError(f"{desired.where}: {exc}") from None

    def snapshot(self) -> Snapshot:
        with _refusals():
            clients = {c.client_id: c.public_view() for c in self.manage.list_clients()}
            rules = {client_id: [r.view() for r in self.manage.federation_rules(client_id)] for client_id in clients}
            issuers = {i.issuer: i.view() for i in self.manage.list_issuers()}
        return Snapshot(clients, rules, issuers)

    def create_client(self, client: DesiredClient) -> str | None:
        fields = {k: v for k, v in client.fields().items() if k not in _NOT_WRITABLE}
        no_secret = client.auth_method == "federated"
        with _refusals():
            _, secret = self.manage.create_client(self.actor, VIA, client.client_id, no_secret=no_secret, **fields)
            if not client.record.enabled:
                self.manage.set_enabled(self.actor, VIA, client.client_id, False)
        return secret

    def update_client(self, client_id: str, changes: dict[str, Any], seen: dict[str, Any]) -> None:
        with _refusals():
            tag = self._unchanged(client_id, seen)
            fields = {k: v for k, v in changes.items() if k not in _NOT_WRITABLE}
            if fields:
                tag = etag(self.manage.update_client(self.actor, VIA, client_id, fields, if_match=tag))
            if "enabled" in changes:
                self.manage.set_enabled(self.actor, VIA, client_id, changes["enabled"])

    def delete_client(self, client_id: str, seen: dict[str, Any]) -> None:
        with _refusals():
            self.manage.delete_client(self.actor, VIA, client_id, if_match=self._unchanged(client_id, seen))

    def _unchanged(self, client_id: str, seen: dict[str, Any]) -> str:
        """The client's ETag, when it is still the version the plan was made from."""
        client = self.manage.show_client(client_id)
        if client.public_view() != seen:
            raise _stale(client_id)
        return etag(client)

    def add_rule(self, client_id: str, rule: DesiredRule) -> list[str]:
        with _refusals():
            _, warnings = self.manage.federate(
                self.actor, VIA, client_id, rule.issuer, rule.subject, rule.audience, rule.conditions, rule.single_use
            )
        return warnings

    def remove_rule(self, client_id: str, rule_id: str) -> None:
        with _refusals():
            self.manage.remove_rule(self.actor, VIA, client_id, rule_id)

    def put_issuer(self, issuer: DesiredIssuer) -> None:
        with _refusals():
            self.manage.add_issuer(self.actor, VIA, issuer.issuer, jwks=issuer.jwks, allow_http=issuer.allow_http)

    def remove_issuer(self, issuer: str) -> None:
        with _refusals():
            self.manage.remove_issuer(self.actor, VIA, issuer)


class RemoteRegistry:
    """A server's registry through its admin API, with a session that authenticates every request (client_lib's
    `TokenAuth`, pinned to the admin API's origin)."""

    def __init__(self, session: requests.Session, base_url: str, timeout: float = 30.0):
        self.session = session
        self.base = base_url.rstrip("/") + "/"
        self.timeout = timeout

    def validate(self, manifest: Manifest) -> None:
        """Nothing more here: the server checks each change with the registry's own rules, and a refusal stops
        apply with what was done before it."""

    def _call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, urljoin(self.base, path), json=body, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise RegistryError(f"{method} {path}: the admin API cannot be reached ({network_failure(exc)})") from None
        except TokenClientError as exc:
            raise RegistryError(f"cannot get an admin token: {exc}") from None
        if response.status_code >= 400:
            try:
                answer = response.json()
                why = answer.get("error_description") or answer.get("error")
            except ValueError:
                why = None
            raise RegistryError(f"{method} {path}: {why or 'refused'} (HTTP {response.status_code})")
        return response

    def _json(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = self._call(method, path, body, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise RegistryError(f"{method} {path}: the answer is not JSON") from None

    @staticmethod
    def _client(client_id: str, *rest: str) -> str:
        return "/".join(["admin/clients", quote(client_id, safe=""), *rest])

    def snapshot(self) -> Snapshot:
        clients: dict[str, dict[str, Any]] = {}
        path: str | None = "admin/clients?limit=1000"
        for _ in range(MAX_PAGES):
            if path is None:
                break
            page = self._json("GET", path)
            clients.update((c["client_id"], c) for c in page["clients"])
            path = page.get("next")
        else:
            raise RegistryError(f"more than {MAX_PAGES} pages of clients")
        rules = {client_id: self._json("GET", self._client(client_id, "federation"))["rules"] for client_id in clients}
        issuers = {i["issuer"]: i for i in self._json("GET", "admin/issuers")["issuers"]}
        return Snapshot(clients, rules, issuers)

    def create_client(self, client: DesiredClient) -> str | None:
        body = {k: v for k, v in client.fields().items() if k not in _NOT_WRITABLE}
        body |= {"client_id": client.client_id, "no_secret": client.auth_method == "federated"}
        secret = self._json("POST", "admin/clients", body).get("client_secret")
        if not client.record.enabled:
            self._call("POST", self._client(client.client_id, "disable"))
        return secret

    def update_client(self, client_id: str, changes: dict[str, Any], seen: dict[str, Any]) -> None:
        tag = self._unchanged(client_id, seen)
        fields = {k: v for k, v in changes.items() if k not in _NOT_WRITABLE}
        if fields:
            self._call("PATCH", self._client(client_id), fields, headers={"If-Match": tag})
        if "enabled" in changes:
            self._call("POST", self._client(client_id, "enable" if changes["enabled"] else "disable"))

    def delete_client(self, client_id: str, seen: dict[str, Any]) -> None:
        self._call("DELETE", self._client(client_id), headers={"If-Match": self._unchanged(client_id, seen)})

    def _unchanged(self, client_id: str, seen: dict[str, Any]) -> str:
        response = self._call("GET", self._client(client_id))
        if response.json() != seen or not response.headers.get("ETag"):
            raise _stale(client_id)
        return response.headers["ETag"]

    def add_rule(self, client_id: str, rule: DesiredRule) -> list[str]:
        return self._json("POST", self._client(client_id, "federation"), rule.view()).get("warnings", [])

    def remove_rule(self, client_id: str, rule_id: str) -> None:
        self._call("DELETE", self._client(client_id, "federation", quote(rule_id, safe="")))

    def put_issuer(self, issuer: DesiredIssuer) -> None:
        body: dict[str, Any] = {"issuer": issuer.issuer, "allow_http": issuer.allow_http}
        if issuer.jwks is not None:
            body["jwks"] = issuer.jwks
        self._call("POST", "admin/issuers", body)

    def remove_issuer(self, issuer: str) -> None:
        self._call("DELETE", "admin/issuers", params={"issuer": issuer})
