"""The `tokendealer` command line (SPEC §5). Exit status: 0 done, 1 refused, 2 bad usage or configuration."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import SQLAlchemyError

from client_lib.jose import ALGORITHMS, default_algorithm, public_jwk

from . import db, tracing
from .audit import AuditLog
from .clients import ClientError, parse_claims
from .config import Config, ConfigError
from .issuers import IssuerError
from .keyring import DEFAULT_ALG, KeyringError, KeyStore
from .keystores import make_key_store
from .management import Management, ManagementError, admin_bootstrap_command, cli_actor

if TYPE_CHECKING:
    from . import reconcile
    from .registries import RemoteRegistry  # imported where used, at run time


class Refused(click.ClickException):
    """A request the command cannot carry out: one line on stderr, exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class BadConfig(Refused):
    exit_code = 2


class State:
    """What the commands share: the configuration (loaded once) and the stores built from it."""

    def __init__(self, config_file: str | None):
        self.config_file = config_file
        self._config: Config | None = None
        self._management: Management | None = None
        self.actor = cli_actor()

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = Config.load(config_file=self.config_file)
            except ConfigError as exc:
                raise BadConfig(str(exc)) from None
        return self._config

    def key_store(self) -> KeyStore:
        return make_key_store(self.config)

    @property
    def manage(self) -> Management:
        """The management operations (shared with the admin API), auditing as this command's user."""
        if self._management is None:
            self._management = Management.open(self.config, AuditLog(self.config.audit_log))
        return self._management


def refusals(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's errors into one readable line and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ManagementError, ClientError, IssuerError, KeyringError, db.SchemaError) as exc:
            raise Refused(str(exc)) from None
        except SQLAlchemyError as exc:
            raise Refused(f"database error ({exc.__class__.__name__}); has `tokendealer init` been run?") from None

    return wrapper


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print JSON for scripts, or the human text when given."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json or text is None else text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with settings.")
@click.pass_context
def main(ctx: click.Context, config_file: str | None) -> None:
    """TokenDealer: an OAuth2 client-credentials token server issuing JWT access tokens."""
    ctx.obj = State(config_file)


@main.command()
@click.option("--alg", type=click.Choice(ALGORITHMS), default=DEFAULT_ALG, show_default=True, help="Algorithm of new keys.")
@json_option
@click.pass_obj
@refusals
def init(state: State, alg: str, as_json: bool) -> None:
    """Create the database schema (or upgrade it) and the keyring (idempotent)."""
    db.upgrade_schema(db.make_engine(state.config.database_url))
    created = state.manage.init_keys(state.actor, "cli", alg)
    where = {
        "database": "the database",
        "pkcs11": f"the PKCS#11 token {state.config.pkcs11_token_label!r} (key states in the database)",
    }.get(state.config.keyring, str(state.config.keys_dir))
    bootstrap = admin_bootstrap_command(state.config)
    result = {"keyring": where, "keys_created": created, "database": "ready", "admin_bootstrap": bootstrap}
    emit(
        result,
        as_json,
        f"keyring {'created' if created else 'already present'} in {where}; database ready\n\n"
        f"To manage TokenDealer over HTTP (the admin API under /admin/), create a first admin client:\n  {bootstrap}\n"
        f"then fetch its token with --audience {state.config.management_audience} and send it as a Bearer token.",
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default: sized to the cores).")
@click.option("--dev", is_flag=True, help="Flask's development server instead of the production one.")
@click.pass_obj
@refusals
def serve(state: State, host: str, port: int, workers: int | None, dev: bool) -> None:
    """Serve the API (granian; --dev for Flask's server)."""
    from .serving import run  # noqa: PLC0415 (sets up multiprocess metrics before they are imported)

    db.check_schema(db.make_engine(state.config.database_url))
    state.key_store().load()
    try:
        tracing.check_environment()
    except tracing.TracingConfigError as exc:
        raise BadConfig(str(exc)) from None
    if state.config.plain_http_off_loopback:
        click.echo(
            f"warning: the issuer {state.config.issuer} is plain http off loopback, so secrets and tokens cross the network "
            "in clear: use an https issuer in production (http is fine on loopback for development)",
            err=True,
        )
    run(state.config, host, port, workers, dev, state.config_file)


@main.group("db")
def database() -> None:
    """Manage the database schema."""


@database.command("upgrade")
@json_option
@click.pass_obj
@refusals
def db_upgrade(state: State, as_json: bool) -> None:
    """Apply the schema migrations (Alembic) the database lacks."""
    db.upgrade_schema(db.make_engine(state.config.database_url))
    emit({"database": "upgraded"}, as_json, "database schema is up to date")


# ---- client ---------------------------------------------------------------------------------------


def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--scope", "scopes", multiple=True, help="Allowed scope (repeatable; space-separated too)."),
        click.option("--audience", "audiences", multiple=True, help="Allowed audience (repeatable)."),
        click.option("--default-scope", "default_scopes", multiple=True, help="Scope granted when none is asked."),
        click.option("--default-audience", help="Audience used when none is asked."),
        click.option("--ttl", type=int, help="Token lifetime in seconds for this client."),
        click.option("--claim", "claims", multiple=True, help="Extra claim name=value (repeatable)."),
        click.option("--jwks", "jwks_file", type=click.Path(dir_okay=False), help="Public JWK Set file (private_key_jwt)."),
        click.option("--jwks-uri", help="URL of the client's public JWK Set (private_key_jwt)."),
        # RFC 8693 token exchange policy.
        click.option(
            "--serves", "serves", multiple=True, help="Audience identity of this service: tokens for it may be exchanged (repeatable)."
        ),
        click.option("--exchange-audience", "exchange_audiences", multiple=True, help="Audience it may exchange tokens for (repeatable)."),
        # Sender-constrained tokens (RFC 9449 DPoP, RFC 8705 mTLS).
        click.option("--require-dpop/--no-require-dpop", "require_dpop", default=None, help="Refuse token requests without a DPoP proof."),
        click.option("--tls-subject", help="Certificate subject DN that authenticates the client (RFC 8705 tls_client_auth)."),
        click.option("--tls-san", help="Certificate subjectAltName (URI or DNS) that authenticates the client (tls_client_auth)."),
        json_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _read_jwks(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise Refused(f"--jwks {path}: cannot read ({exc.strerror})") from None
    except ValueError:
        raise Refused(f"--jwks {path}: not valid JSON") from None


@main.group()
def client() -> None:
    """Register and manage clients."""


@client.command("create")
@click.argument("name")
@_client_options
@click.option("--no-secret", is_flag=True, help="No secret: the client authenticates only by federation, certificate or key.")
@click.pass_obj
@refusals
def client_create(state: State, name: str, no_secret: bool, as_json: bool, **options: Any) -> None:
    """Register client NAME; prints its client_id and (once) its client_secret as JSON."""
    record, secret = state.manage.create_client(
        state.actor,
        "cli",
        name,
        scopes=options["scopes"],
        audiences=options["audiences"],
        default_scopes=options["default_scopes"] or None,
        default_audience=options["default_audience"],
        token_ttl=options["ttl"],
        claims=parse_claims(options["claims"]),
        jwks=_read_jwks(options["jwks_file"]),
        jwks_uri=options["jwks_uri"],
        no_secret=no_secret,
        serves=options["serves"],
        exchange_audiences=options["exchange_audiences"],
        require_dpop=bool(options["require_dpop"]),
        tls_subject=options["tls_subject"],
        tls_san=options["tls_san"],
    )
    out = record.public_view()
    if secret:
        out["client_secret"] = secret
    emit(out, True)


@client.command("update")
@click.argument("client_id")
@_client_options
@click.pass_obj
@refusals
def client_update(state: State, client_id: str, as_json: bool, **options: Any) -> None:
    """Replace the fields given (a repeatable option replaces the whole list)."""
    changes = _client_changes(options)
    if not changes:
        raise click.UsageError("nothing to update: give at least one option")
    updated = state.manage.update_client(state.actor, "cli", client_id, changes)
    emit(updated.public_view(), True)


def _client_changes(options: dict[str, Any]) -> dict[str, Any]:
    """The registry fields the options given set (an empty repeatable option sets nothing)."""
    changes: dict[str, Any] = {}
    for name in ("scopes", "audiences", "default_scopes", "serves", "exchange_audiences"):
        if options[name]:
            changes[name] = options[name]
    for option, field in (
        ("default_audience", "default_audience"),
        ("ttl", "token_ttl"),
        ("jwks_uri", "jwks_uri"),
        ("require_dpop", "require_dpop"),
        ("tls_subject", "tls_subject"),
        ("tls_san", "tls_san"),
    ):
        if options[option] is not None:
            changes[field] = options[option]
    if options["claims"]:
        changes["claims"] = parse_claims(options["claims"])
    if options["jwks_file"] is not None:
        changes["jwks"] = _read_jwks(options["jwks_file"])
    return changes


@client.command("list")
@json_option
@click.pass_obj
@refusals
def client_list(state: State, as_json: bool) -> None:
    """List clients (never their secrets)."""
    records = state.manage.list_clients()
    lines = [f"{'CLIENT_ID':<24} {'ENABLED':<8} {'AUTH':<16} {'SCOPES':<30} AUDIENCES"]
    for r in records:
        lines.append(f"{r.client_id:<24} {str(r.enabled).lower():<8} {r.auth_method:<16} {' '.join(r.scopes):<30} {' '.join(r.audiences)}")
    emit([r.public_view() for r in records], as_json, "\n".join(lines))


@client.command("show")
@click.argument("client_id")
@json_option
@click.pass_obj
@refusals
def client_show(state: State, client_id: str, as_json: bool) -> None:
    """Show one client (never its secret)."""
    view = state.manage.show_client(client_id).public_view()
    emit(view, as_json, "\n".join(f"{k}: {v}" for k, v in view.items()))


def _client_action(name: str, doc: str, action: Callable[[State, str], Any]) -> None:
    @client.command(name, help=doc)
    @click.argument("client_id")
    @json_option
    @click.pass_obj
    @refusals
    def command(state: State, client_id: str, as_json: bool) -> None:
        action(state, client_id)
        emit({"client_id": client_id, "result": name}, as_json, f"{name}: {client_id}")


_client_action("disable", "Refuse the client's authentication and its tokens.", lambda s, c: s.manage.set_enabled(s.actor, "cli", c, False))
_client_action("enable", "Allow a disabled client again.", lambda s, c: s.manage.set_enabled(s.actor, "cli", c, True))
_client_action("delete", "Delete the client.", lambda s, c: s.manage.delete_client(s.actor, "cli", c))


@client.command("rotate-secret")
@click.argument("client_id")
@click.option("--grace", type=click.IntRange(0), default=0, show_default=True, help="Seconds the old secret stays valid.")
@json_option
@click.pass_obj
@refusals
def client_rotate_secret(state: State, client_id: str, grace: int, as_json: bool) -> None:
    """Give the client a new secret (printed once)."""
    record, secret = state.manage.rotate_secret(state.actor, "cli", client_id, grace)
    emit({"client_id": record.client_id, "client_secret": secret, "previous_secret_valid_until": record.previous_secret_expires_at}, True)


@client.command("federate")
@click.argument("client_id")
@click.option("--issuer", help="A trusted issuer (`tokendealer issuers add`).")
@click.option("--subject", help="The token's sub: exact, or a prefix ending in *.")
@click.option("--audience", help="The token's aud must contain it (default: this server's issuer URL).")
@click.option("--condition", "conditions", multiple=True, help="CLAIM=VALUE on a dotted claim path; VALUE exact or a glob (repeatable).")
@click.option("--single-use", is_flag=True, help="Refuse a second use of the same token jti.")
@click.option("--list", "list_rules", is_flag=True, help="List the client's federation rules.")
@click.option("--remove", "remove_rule", metavar="RULE_ID", help="Remove one of the client's rules.")
@json_option
@click.pass_obj
@refusals
def client_federate(
    state: State,
    client_id: str,
    issuer: str | None,
    subject: str | None,
    audience: str | None,
    conditions: tuple[str, ...],
    single_use: bool,
    list_rules: bool,
    remove_rule: str | None,
    as_json: bool,
) -> None:
    """Trust workload tokens of an external issuer for CLIENT_ID (workload identity federation)."""
    manage = state.manage
    if list_rules or remove_rule:
        if issuer or subject or audience or conditions or single_use or (list_rules and remove_rule):
            raise click.UsageError("--list and --remove RULE_ID take no other option")
        if remove_rule:
            manage.remove_rule(state.actor, "cli", client_id, remove_rule)
            emit({"client_id": client_id, "rule_id": remove_rule, "result": "removed"}, as_json, f"removed: {remove_rule}")
            return
        found = [r.view() for r in manage.federation_rules(client_id)]
        lines = [f"{'RULE_ID':<20} {'ISSUER':<32} {'SUBJECT':<40} {'AUDIENCE':<28} CONDITIONS"]
        for r in found:
            flags = " ".join(r["conditions"]) + (" single-use" if r["single_use"] else "")
            lines.append(f"{r['rule_id']:<20} {r['issuer']:<32} {r['subject']:<40} {r['audience']:<28} {flags}")
        emit(found, as_json, "\n".join(lines))
        return
    if not issuer or not subject:
        raise click.UsageError("--issuer and --subject are required (or --list / --remove RULE_ID)")
    rule, warnings = manage.federate(state.actor, "cli", client_id, issuer, subject, audience, conditions, single_use)
    _warn(warnings)
    emit(rule.view(), True)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@client.command("jwks")
@click.argument("pem_file", type=click.Path(dir_okay=False))
@click.option("--alg", type=click.Choice(ALGORITHMS), help="Algorithm the key signs with (default: from the key type).")
def client_jwks(pem_file: str, alg: str | None) -> None:
    """Print the public JWK Set of a private or public key PEM, for `client create --jwks`."""
    try:
        data = Path(pem_file).read_bytes()
        if b"PUBLIC KEY" in data:
            public = serialization.load_pem_public_key(data)
        else:
            public = serialization.load_pem_private_key(data, password=None).public_key()
        jwk = public_jwk(public, alg or default_algorithm(public))
    except OSError as exc:
        raise Refused(f"{pem_file}: cannot read ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise Refused(f"{pem_file}: not a PEM EC P-256, RSA or Ed25519 key") from None
    emit({"keys": [jwk]}, True)


# ---- issuers --------------------------------------------------------------------------------------


@main.group()
def issuers() -> None:
    """Trust external OIDC issuers whose workload tokens clients may accept (`client federate`)."""


@issuers.command("add")
@click.argument("url")
@click.option("--jwks", "jwks_file", type=click.Path(dir_okay=False), help="The issuer's public JWK Set, for an unreachable issuer.")
@click.option("--allow-http", is_flag=True, help="Allow a plain-http issuer off loopback (not for production).")
@json_option
@click.pass_obj
@refusals
def issuers_add(state: State, url: str, jwks_file: str | None, allow_http: bool, as_json: bool) -> None:
    """Trust the issuer URL (its exact `iss`): keys through its OIDC discovery, or the given JWK Set."""
    record = state.manage.add_issuer(state.actor, "cli", url, jwks=_read_jwks(jwks_file), allow_http=allow_http)
    emit(record.view(), as_json, f"trusted: {url} (keys from {record.jwks_uri or jwks_file})")


@issuers.command("list")
@json_option
@click.pass_obj
@refusals
def issuers_list(state: State, as_json: bool) -> None:
    """List the trusted issuers."""
    records = [r.view() for r in state.manage.list_issuers()]
    lines = [f"{'ISSUER':<48} {'KEYS':<10} JWKS_URI"] + [f"{r['issuer']:<48} {r['keys']:<10} {r['jwks_uri'] or '-'}" for r in records]
    emit(records, as_json, "\n".join(lines))


@issuers.command("remove")
@click.argument("url")
@json_option
@click.pass_obj
@refusals
def issuers_remove(state: State, url: str, as_json: bool) -> None:
    """Stop trusting the issuer URL; its federation rules go with it."""
    rules = state.manage.remove_issuer(state.actor, "cli", url)
    emit({"issuer": url, "result": "removed", "rules_removed": rules}, as_json, f"removed: {url} and {rules} federation rule(s)")


# ---- keys -----------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Manage the signing keyring."""


def _key_table(rows: list[dict[str, Any]]) -> str:
    def when(ts: float | None) -> str:
        return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

    lines = [f"{'KID':<44} {'ALG':<6} {'STATE':<8} {'AGE':>9} {'CREATED':<21} PRUNABLE AT"]
    for r in rows:
        lines.append(
            f"{r['kid']:<44} {r['alg']:<6} {r['state']:<8} {r['age_seconds']:>8}s {when(r['created_at']):<21} {when(r['prunable_at'])}"
        )
    return "\n".join(lines)


@keys.command("init")
@click.option("--alg", type=click.Choice(ALGORITHMS), default=DEFAULT_ALG, show_default=True)
@json_option
@click.pass_obj
@refusals
def keys_init(state: State, alg: str, as_json: bool) -> None:
    """Create the first active key and a next key."""
    created = state.manage.init_keys(state.actor, "cli", alg)
    rows = state.manage.key_rows()
    emit(rows, as_json, ("keyring created\n" if created else "keyring already present\n") + _key_table(rows))


@keys.command("rotate")
@click.option("--alg", type=click.Choice(ALGORITHMS), help="Algorithm of the new key (default: the active key's).")
@click.option("--now", "emergency", is_flag=True, help="Emergency: replace the active key at once (leaked key).")
@json_option
@click.pass_obj
@refusals
def keys_rotate(state: State, alg: str | None, emergency: bool, as_json: bool) -> None:
    """Promote next to active and retire the old active key (--now: replace it at once)."""
    _warn(state.manage.rotate_keys(state.actor, "cli", alg, emergency))
    rows = state.manage.key_rows()
    emit(rows, as_json, ("emergency rotation done\n" if emergency else "rotation done\n") + _key_table(rows))


@keys.command("prune")
@json_option
@click.pass_obj
@refusals
def keys_prune(state: State, as_json: bool) -> None:
    """Delete retired keys whose tokens have all expired."""
    gone = state.manage.prune_keys(state.actor, "cli")
    emit(gone, as_json, f"pruned {len(gone)} key(s)" + "".join(f"\n  {kid}" for kid in gone))


@keys.command("list")
@json_option
@click.pass_obj
@refusals
def keys_list(state: State, as_json: bool) -> None:
    """Show every key: state, algorithm, age and when it may be pruned."""
    rows = state.manage.key_rows()
    emit(rows, as_json, _key_table(rows))


# ---- apply ----------------------------------------------------------------------------------------


@main.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--prune", is_flag=True, help="Also delete the clients, rules (and issuers, if it lists any) the file does not name.")
@click.option("--secrets-out", type=click.Path(dir_okay=False), help="Write new clients' secrets to this file (mode 0600), not stdout.")
@click.option("--no-new-secrets", is_flag=True, help="Refuse to create clients with a secret (unattended runs whose output is logged).")
@click.option("--server", metavar="URL", help="Apply to a remote server through its admin API (at URL) instead of this machine's database.")
@click.option("--issuer", metavar="URL", help="With --server: the issuer to get the admin token from (default: the server URL).")
@click.option("--admin-audience", help="With --server: the admin API's token audience (default: {issuer}/admin).")
@click.option("--client-id", envvar="TOKENDEALER_CLIENT_ID", help="With --server: the admin client (or TOKENDEALER_CLIENT_ID).")
@click.option(
    "--client-secret-file", type=click.Path(exists=True, dir_okay=False), help="With --server: its secret (else TOKENDEALER_CLIENT_SECRET)."
)
@click.option("--private-key", type=click.Path(dir_okay=False), help="With --server: its PEM key for private_key_jwt instead of a secret.")
@click.option("--key-id", help="With --server: the kid of --private-key.")
@json_option
@click.pass_obj
@refusals
def apply(
    state: State, file: str, dry_run: bool, prune: bool, secrets_out: str | None, no_new_secrets: bool, as_json: bool, **remote: Any
) -> None:
    """Make the registry match FILE (TOML or YAML clients, federation rules, issuers), printing the changes."""
    # Imported here: jsonschema and PyYAML would add a seventh to every other command's start-up time.
    from . import manifest, reconcile, secretfile  # noqa: PLC0415
    from .registries import LocalRegistry  # noqa: PLC0415

    try:
        registry: reconcile.Registry
        if remote["server"]:
            registry, rule_audience = _remote_registry(dry_run, **remote)
        else:
            registry, rule_audience = LocalRegistry(state.manage, state.actor), state.config.issuer
        wanted = manifest.load(file, rule_audience)
        registry.validate(wanted)
        if secrets_out:
            secretfile.check(secrets_out)
        plan = reconcile.plan(wanted, registry.snapshot(), prune)
    except (manifest.ManifestError, reconcile.RegistryError, secretfile.SecretFileError) as exc:
        raise Refused(str(exc)) from None
    for change in plan.changes:
        if no_new_secrets and change.action == "create" and change.client and change.client.auth_method == "client_secret":
            raise Refused(f"{change.client.where}: would get a client secret, and --no-new-secrets is given")
        if remote["server"] and change.action == "delete" and change.kind == "client" and change.name == remote["client_id"]:
            raise Refused(f"--prune would delete the admin client {change.name!r} apply runs as: list it in the file")
    outcome = None if dry_run else reconcile.execute(plan.changes, registry)
    written, unwritten = None, None
    if outcome is not None and outcome.secrets and secrets_out:
        try:
            secretfile.write(secrets_out, outcome.secrets)
            written = secrets_out
        except secretfile.SecretFileError as exc:
            unwritten = exc
            outcome.secrets = {}  # never printed instead: the error says how to give those clients a secret
    _apply_report(plan, outcome, written, as_json)
    if unwritten is not None:
        raise Refused(
            f"{unwritten}; the new clients exist without a secret you hold: give them one with `tokendealer client rotate-secret ID`"
        )
    if outcome is not None and outcome.failed is not None:
        made = "the changes above it were made" if outcome.done else "nothing was changed"
        raise Refused(f"stopped at {outcome.failed.action} {outcome.failed.label()}: {outcome.error} ({made})")


def _remote_registry(
    dry_run: bool,
    server: str,
    issuer: str | None,
    admin_audience: str | None,
    client_id: str | None,
    client_secret_file: str | None,
    private_key: str | None,
    key_id: str | None,
) -> tuple[RemoteRegistry, str]:
    """The admin API at `server`, every request carrying a token of the admin client (client_lib, pinned to the
    server's origin); and the issuer, a federation rule's default audience there."""
    import requests  # noqa: PLC0415

    from client_lib import TokenAuth, TokenClient, TokenClientError  # noqa: PLC0415

    from .registries import RemoteRegistry  # noqa: PLC0415

    issuer = issuer or server.rstrip("/")
    if not client_id:
        raise click.UsageError("--server needs the admin client: --client-id or TOKENDEALER_CLIENT_ID")
    secret = os.environ.get("TOKENDEALER_CLIENT_SECRET")
    if client_secret_file:
        try:
            secret = Path(client_secret_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"{client_secret_file}: cannot read ({exc})", param_hint="--client-secret-file") from None
    if bool(secret) == bool(private_key):
        raise click.UsageError("--server needs exactly one of a secret (TOKENDEALER_CLIENT_SECRET, --client-secret-file) and --private-key")
    try:
        client = TokenClient(issuer, client_id, secret, private_key=private_key, key_id=key_id, retries=0)
    except (TokenClientError, OSError, ValueError) as exc:
        raise Refused(f"cannot use the admin client: {exc}") from None
    session = requests.Session()
    # A dry run only reads: it asks for no more than the read scope.
    scope = "tokendealer:read" if dry_run else "tokendealer:admin"
    session.auth = TokenAuth(client, audience=admin_audience or issuer + "/admin", scope=scope, origin=server)
    return RemoteRegistry(session, server), issuer


def _apply_report(plan: reconcile.Plan, outcome: reconcile.Outcome | None, written: str | None, as_json: bool) -> None:
    from .reconcile import report  # noqa: PLC0415

    if not as_json:
        click.echo("\n".join(report(plan, outcome, written)))
        return
    data: dict[str, Any] = {"dry_run": outcome is None, "plan": plan.view()}
    if outcome is not None:
        data["done"] = [c.view() for c in outcome.done]
        data["failed"] = None if outcome.failed is None else {**outcome.failed.view(), "error": outcome.error}
        if written:
            data["secrets_written_to"] = written
        elif outcome.secrets:
            data["client_secrets"] = outcome.secrets
    emit(data, True)


# ---- token and verify -----------------------------------------------------------------------------


@main.command()
@click.option("--client-id", envvar="TOKENDEALER_CLIENT_ID", required=True, help="Or TOKENDEALER_CLIENT_ID.")
@click.option(
    "--client-secret",
    envvar="TOKENDEALER_CLIENT_SECRET",
    help="Or TOKENDEALER_CLIENT_SECRET; `-` reads it from stdin. A literal value is visible in the process list.",
)
@click.option("--client-secret-file", type=click.Path(exists=True, dir_okay=False), help="Read the secret from this file.")
@click.option("--private-key", type=click.Path(dir_okay=False), help="PEM key for private_key_jwt instead of a secret.")
@click.option("--key-id", help="kid of the private key.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="PEM TLS client certificate (RFC 8705 mTLS); with --cert-key.")
@click.option("--cert-key", type=click.Path(exists=True, dir_okay=False), help="The PEM private key of --cert.")
@click.option(
    "--federated-token-file", type=click.Path(dir_okay=False), help="Workload token file (Kubernetes, SPIFFE…): federated authentication."
)
@click.option("--dpop-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key: a DPoP-bound token (RFC 9449).")
@click.option("--audience", help="Audience of the token.")
@click.option("--scope", help="Space-separated scopes.")
@click.option("--url", envvar="TOKENDEALER_URL", help="Server base URL (default: the issuer).")
@json_option
@click.pass_context
def token(
    ctx: click.Context,
    client_id: str,
    client_secret: str | None,
    client_secret_file: str | None,
    private_key: str | None,
    key_id: str | None,
    cert: str | None,
    cert_key: str | None,
    federated_token_file: str | None,
    dpop_key: str | None,
    audience: str | None,
    scope: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Fetch an access token as a client and print it. With --cert and --cert-key the request presents that TLS
    client certificate (to a proxy terminating mutual TLS): alone, it authenticates the client; with a secret
    or key, it binds the token. With --dpop-key the token is bound to that key (present it with DPoP proofs)."""
    from client_lib import TokenClient, TokenClientError  # noqa: PLC0415

    state = ctx.obj
    client_secret = _client_secret(ctx, client_secret, client_secret_file)
    if bool(cert) != bool(cert_key):
        raise click.UsageError("give --cert and --cert-key together")
    ways_in = [way for way in (client_secret, private_key, federated_token_file) if way]
    if len(ways_in) > 1 or not (ways_in or cert):
        raise click.UsageError(
            "give exactly one of a client secret (--client-secret, --client-secret-file or TOKENDEALER_CLIENT_SECRET),"
            " --private-key and --federated-token-file, or only --cert and --cert-key"
        )
    issuer = state.config.issuer
    # With --url the server is reached at another address than its issuer: skip discovery.
    endpoint = url.rstrip("/") + "/oauth/token" if url else None
    try:
        client = TokenClient(
            issuer,
            client_id,
            client_secret,
            private_key=private_key,
            key_id=key_id,
            cert=(cert, cert_key) if cert and cert_key else None,
            federated_token_file=federated_token_file,
            dpop_key=dpop_key,
            token_endpoint=endpoint,
            retries=0,
        )
        response = client.fetch_token_response(audience=audience, scope=scope)
    except TokenClientError as exc:
        raise Refused(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise Refused(f"cannot use the key: {exc}") from None
    emit(response, as_json, response["access_token"])


def _client_secret(ctx: click.Context, secret: str | None, secret_file: str | None) -> str | None:
    """The secret from --client-secret-file, stdin (`--client-secret -`) or TOKENDEALER_CLIENT_SECRET; one given
    as a literal --client-secret still works, with a warning, since every local user can read argv."""
    from_argv = ctx.get_parameter_source("client_secret") is ParameterSource.COMMANDLINE
    if secret_file is not None:
        if from_argv:
            raise click.UsageError("give only one of --client-secret and --client-secret-file")
        try:
            return Path(secret_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"{secret_file}: cannot read ({exc})", param_hint="--client-secret-file") from None
    if secret == "-":
        return sys.stdin.read().strip()
    if secret and from_argv:
        click.echo(
            "warning: --client-secret VALUE is visible to other local users in the process list; "
            "use TOKENDEALER_CLIENT_SECRET, --client-secret-file PATH or --client-secret - (stdin)",
            err=True,
        )
    return secret


@main.command()
@click.argument("token", default="-")
@click.option("--audience", required=True, help="The audience the token must carry.")
@json_option
@click.pass_obj
@refusals
def verify(state: State, token: str, audience: str, as_json: bool) -> None:
    """Verify TOKEN (or stdin) against the local keyring and print its claims."""
    from .app import build_services  # noqa: PLC0415
    from .tokens import TokenRejected  # noqa: PLC0415

    if token == "-":
        token = sys.stdin.read().strip()
    services = build_services(state.config)
    services.keys.current()
    if services.keys.error:
        raise Refused(services.keys.error)
    try:
        claims = services.tokens.validate(token, audience)
    except TokenRejected as exc:
        raise Refused(f"invalid token: {exc}") from None
    emit(claims, True)


def run() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(prog_name="tokendealer")
