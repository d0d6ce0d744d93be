"""The server's OpenTelemetry tracing: a span per request, accepting the caller's W3C `traceparent`, with
child spans for the steps worth seeing (client authentication, database statements, signing, outbound
fetches) and the request's outcome as attributes (client id, grant type, HTTP status, OAuth error).

Off unless `OTEL_TRACES_EXPORTER` names an exporter and the `otel` extra is installed (the rules and the
attribute allow-list are client_lib's, `client_lib.tracing`, which the server shares); off, `instrument`
wraps nothing and every other hook costs one function call.
"""

from __future__ import annotations

import contextvars
import importlib.util
import re
from collections.abc import Callable, Iterable
from typing import Any

from client_lib import tracing as _common

SERVICE_NAME = "tokendealer"

_tracer = _common.Tracer("tokendealer")
span = _tracer.span
traced = _tracer.traced
annotate = _tracer.annotate
inject = _tracer.inject
TracingConfigError = _common.TracingConfigError

# The server span of the request being handled, which carries the request's outcome.
_request_span: contextvars.ContextVar[Any] = contextvars.ContextVar("tokendealer_request_span", default=None)
_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)', re.IGNORECASE)


def check_environment() -> None:
    """At start-up: raise TracingConfigError naming the `OTEL_*` variable whose value cannot be honoured
    (an unknown protocol or exporter). Without the `otel` extra the workers only log that tracing is off."""
    names = _common.exporter_names()
    if names and _sdk_installed():
        _common.exporter_entry_points(names)


def _sdk_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ImportError:
        return False


def instrument(app: Any, engine: Any) -> None:
    """With tracing on (as the `OTEL_*` variables say): a server span around every request of the Flask
    `app` (its token fast path included), and a span per statement on the SQLAlchemy `engine`."""
    if _common.configure(SERVICE_NAME, set_global=True) is None:
        return
    app.wsgi_app = TracingMiddleware(app.wsgi_app, app.url_map)
    _instrument_engine(engine)


def enabled() -> bool:
    """Whether spans are being recorded (the `OTEL_*` variables asked for them and the exporter loaded)."""
    return _common.is_enabled()


def annotate_request(**values: Any) -> None:
    """Record the request's outcome (client id, grant type, error): on its server span and the current span."""
    if not _common.is_enabled():
        return
    annotate(**values)
    request_span = _request_span.get()
    if request_span is not None:
        request_span.set_attributes(_common.attributes(values))


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None without an active span."""
    if not _common.is_enabled():
        return None
    from opentelemetry import trace  # noqa: PLC0415 (tracing is on: imported already)

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def extract(environ: dict[str, Any]) -> Any:
    """The trace context a caller sent (W3C `traceparent`, `tracestate`) in a WSGI environ."""
    from opentelemetry import propagate  # noqa: PLC0415 (tracing is on: imported already)

    return propagate.extract(environ, getter=_ENVIRON_GETTER)


class _EnvironGetter:
    """Reads HTTP headers from a WSGI environ for the propagators."""

    @staticmethod
    def get(environ: dict[str, Any], name: str) -> list[str] | None:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        return None if value is None else [value]

    @staticmethod
    def keys(environ: dict[str, Any]) -> list[str]:
        return [key[5:].lower().replace("_", "-") for key in environ if key.startswith("HTTP_")]


_ENVIRON_GETTER: Any = _EnvironGetter()  # an opentelemetry Getter, without importing it while off


class TracingMiddleware:
    """WSGI middleware: one server span per request, child of the caller's `traceparent` when it sent one,
    named for the route (`POST /oauth/token`), with the status and the outcome the endpoints record."""

    def __init__(self, app: Callable[..., Iterable[bytes]], url_map: Any):
        self.app = app
        self.url_map = url_map

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not _common.is_enabled():
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        route = self._route(environ, method)
        values = {"method": method, "route": route, "peer_address": environ.get("REMOTE_ADDR")}
        with span(f"{method} {route}" if route else method, kind="server", context=extract(environ), **values) as server_span:
            token = _request_span.set(server_span)

            def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                code = int(status[:3])
                server_span.set_attributes(_common.attributes({"status": code}))
                if code >= 500:  # a 4xx is the caller's failure, not the server's (semantic conventions)
                    server_span.set_attributes(_common.attributes({"error_type": str(code)}))
                    _common.set_error(server_span)
                return start_response(status, headers, exc_info)

            try:
                return self.app(environ, recording_start_response)
            finally:
                _request_span.reset(token)

    def _route(self, environ: dict[str, Any], method: str) -> str | None:
        """The URL rule the path matches, so span names stay few whatever paths callers send."""
        try:
            rule, _ = self.url_map.bind("", path_info=environ.get("PATH_INFO", "/")).match(method=method, return_rule=True)
        except Exception:  # not found, wrong method, redirect: no route
            return None
        return rule.rule


def _instrument_engine(engine: Any) -> None:
    """A client span per SQL statement, named for its operation and first table; never its parameters."""
    from sqlalchemy import event  # noqa: PLC0415

    system = engine.dialect.name

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        tracer = _tracer.tracer()
        if tracer is None:
            return
        operation = (statement.split(None, 1) or ["SQL"])[0].upper()
        match = _TABLE.search(statement)
        table = match.group(1) if match else None
        values = {"db_system": system, "db_operation": operation, "db_table": table}
        context._tokendealer_span = tracer.start_span(
            f"{operation} {table}" if table else operation, kind=_common.span_kind("client"), attributes=_common.attributes(values)
        )

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        db_span = getattr(context, "_tokendealer_span", None)
        if db_span is not None:
            db_span.end()

    @event.listens_for(engine, "handle_error")
    def _error(exception_context: Any) -> None:
        db_span = getattr(exception_context.execution_context, "_tokendealer_span", None)
        if db_span is not None:
            _common.failed(db_span, exception_context.original_exception)
            db_span.end()
