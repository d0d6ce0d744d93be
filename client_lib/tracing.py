"""OpenTelemetry tracing hooks: spans, and W3C `traceparent` on outgoing requests.

Off, and `opentelemetry` never imported, unless one of these holds (checked on first use):
- `OTEL_TRACES_EXPORTER` names exporters (`otlp`, `console`, or any installed one; `none` is off) and the
  `otel` extra is installed; a tracer provider is then built by the SDK from the standard `OTEL_*` variables
  (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, ...), for
  client_lib's spans only: the process's global provider stays the application's to set;
- the application has set up OpenTelemetry itself (a real global tracer provider): spans go there;
- `enable()` was called.
Off, every hook costs one function call. `OTEL_SDK_DISABLED=true` keeps tracing off.

Span attributes are only the names in `ATTRIBUTES`, so a secret, token or assertion cannot become one by a
slip of a caller: an unknown name is dropped (and logged once).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Keyword names the hooks take, and the span attribute each becomes (OpenTelemetry semantic conventions
# where there is one).
ATTRIBUTES = {
    "client_id": "oauth.client_id",
    "grant_type": "oauth.grant_type",
    "auth_method": "oauth.client_auth_method",
    "audience": "oauth.audience",
    "error": "oauth.error",
    "error_type": "error.type",
    "kid": "jwt.kid",
    "alg": "jwt.alg",
    "method": "http.request.method",
    "route": "http.route",
    "status": "http.response.status_code",
    "url": "url.full",
    "server_address": "server.address",
    "peer_address": "network.peer.address",
    "db_system": "db.system.name",
    "db_operation": "db.operation.name",
    "db_table": "db.collection.name",
}
MAX_VALUE = 256
# What `otlp` means for each OTLP protocol (the OpenTelemetry specification's default is http/protobuf).
OTLP_EXPORTERS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
ENTRY_POINTS = "opentelemetry_traces_exporter"


class TracingConfigError(ValueError):
    """An `OTEL_*` variable names something this process cannot do; the message names the variable."""


def exporter_names(environ: Any = os.environ) -> list[str]:
    """The span exporters `OTEL_TRACES_EXPORTER` asks for, as entry point names; [] for none (the default)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [name for name in names if name and name != "none"]
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if "otlp" in names and protocol not in OTLP_EXPORTERS:
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported: use http/protobuf or grpc")
    return [OTLP_EXPORTERS[protocol] if name == "otlp" else name for name in names]


_UNSET: Any = object()
_NO_SPAN = contextlib.nullcontext()
_provider: Any = _UNSET  # the tracer provider spans go to; None when off for good (set up off, or disabled)
_environment_read = False  # OTEL_TRACES_EXPORTER was read and names no exporter
_lock = threading.Lock()
_warned: set[str] = set()


def _current() -> Any:
    provider = _provider
    if provider is not _UNSET:
        return provider
    if _environment_read and "opentelemetry.trace" not in sys.modules:
        return None
    return configure()


def configure(service_name: str | None = None, set_global: bool = False) -> Any:
    """Tracing's state from the environment (done by the first hook that runs, or at start-up by a program
    that owns its process, which passes `set_global`), with `service_name` as the default `OTEL_SERVICE_NAME`.
    While the environment asks for none, a tracer provider the application sets up later is still picked up.
    The tracer provider, or None while off."""
    global _provider, _environment_read
    warning = None
    with _lock:
        if _provider is not _UNSET:
            return _provider
        provider = _application_provider()
        if provider is not None:
            _provider = provider
            return provider
        if _environment_read:
            return None
        try:
            names = exporter_names()
            provider = provider_from_environment(names, service_name, set_global) if names else None
        except ImportError:
            warning = "OTEL_TRACES_EXPORTER is set but the `otel` extra is not installed: tracing is off"
        except TracingConfigError as exc:
            warning = f"{exc}: tracing is off"
        except Exception as exc:  # an exporter that cannot be built must not fail the caller's requests
            warning = f"tracing is off: the exporter could not be set up ({exc.__class__.__name__}: {exc})"
        if warning is not None or not names:
            _environment_read, provider = True, None
        else:
            _provider = provider
    if warning is not None:
        # Logged once the lock is released: a log filter may ask for the trace id, which asks for this state.
        _warn_once(warning)
    return provider


def _application_provider() -> Any:
    """The global tracer provider if the application (or an earlier call here) has set a real one."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    return None if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)) else provider


def exporter_entry_points(names: list[str]) -> dict[str, Any]:
    """The installed exporter of each name, or TracingConfigError naming the first one missing."""
    from importlib.metadata import entry_points  # noqa: PLC0415

    available = {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}
    for name in names:
        if name not in available:
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER: no exporter {name!r} is installed (otlp, console or none)")
    return {name: available[name] for name in names}


def provider_from_environment(names: list[str], service_name: str | None = None, set_global: bool = False) -> Any:
    """A tracer provider set up by the SDK from the `OTEL_*` variables, exporting to `names` in batches (and
    made the process's global one with `set_global`); `service_name` is the default for `OTEL_SERVICE_NAME`."""
    from opentelemetry import trace  # noqa: PLC0415 (only with tracing on)
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    exporters = exporter_entry_points(names)
    resource = Resource.create()
    if service_name and str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(exporters[name].load()()))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def enable(tracer_provider: Any = None) -> None:
    """Trace from now on, to `tracer_provider` or else the global one, whatever the environment says."""
    global _provider
    from opentelemetry import trace  # noqa: PLC0415

    with _lock:
        _provider = tracer_provider or trace.get_tracer_provider()


def disable() -> None:
    """Trace no more in this process (until `enable()`)."""
    global _provider
    with _lock:
        _provider = None


def reset() -> None:
    """Forget the state, so the next hook reads the environment again (for tests)."""
    global _provider, _environment_read
    with _lock:
        _provider, _environment_read = _UNSET, False


def is_enabled() -> bool:
    return _current() is not None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def attributes(values: dict[str, Any]) -> dict[str, Any]:
    """Keyword values as span attributes: known names only, None dropped, text bounded."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        key = ATTRIBUTES.get(name)
        if key is None:
            _warn_once(f"span attribute {name!r} is not one of tracing.ATTRIBUTES; dropped")
            continue
        if value is None:
            continue
        if name == "url":
            value = safe_url(value)
        if isinstance(value, str):
            value = value[:MAX_VALUE]
        elif isinstance(value, (list, tuple)):
            value = [str(item)[:MAX_VALUE] for item in value]
        out[key] = value
    return out


def safe_url(url: str) -> str:
    """`url` without user info, query and fragment, where credentials could hide."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(malformed)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Tracer:
    """The hooks of one instrumentation scope (`client_lib`, `tokendealer`); each is a no-op while off."""

    def __init__(self, scope: str):
        self.scope = scope
        self._cached: tuple[Any, Any] = (None, None)

    def tracer(self) -> Any:
        """The OpenTelemetry tracer, or None while tracing is off."""
        provider = _current()
        if provider is None:
            return None
        cached, tracer = self._cached
        if cached is not provider:
            tracer = provider.get_tracer(self.scope)
            self._cached = (provider, tracer)
        return tracer

    @contextlib.contextmanager
    def _span(self, tracer: Any, name: str, kind: str, values: dict[str, Any], context: Any = None) -> Iterator[Any]:
        with tracer.start_as_current_span(
            name,
            context=context,
            kind=span_kind(kind),
            attributes=attributes(values),
            record_exception=False,  # exception messages can quote input; the class name is enough
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                failed(span, exc)
                raise

    def span(self, name: str, kind: str = "internal", context: Any = None, **values: Any) -> contextlib.AbstractContextManager[Any]:
        """A span around a block, child of the current one (or of `context`); yields the span, or None when off.
        `kind` is internal, client or server."""
        tracer = self.tracer()
        if tracer is None:
            return _NO_SPAN
        return self._span(tracer, name, kind, values, context)

    def traced(self, name: str, kind: str = "internal") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: a span `name` around each call (coroutine functions too)."""

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    tracer = self.tracer()
                    if tracer is None:
                        return await func(*args, **kwargs)
                    with self._span(tracer, name, kind, {}):
                        return await func(*args, **kwargs)

                return async_wrapper

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                tracer = self.tracer()
                if tracer is None:
                    return func(*args, **kwargs)
                with self._span(tracer, name, kind, {}):
                    return func(*args, **kwargs)

            return wrapper

        return decorate

    def annotate(self, **values: Any) -> None:
        """Set attributes on the current span."""
        if _current() is not None:
            from opentelemetry import trace  # noqa: PLC0415 (tracing is on: imported already)

            trace.get_current_span().set_attributes(attributes(values))

    def inject(self, headers: Any = None) -> Any:
        """`headers` (a new dict when None; any mutable mapping) with the current span's W3C `traceparent`
        (and whatever else `OTEL_PROPAGATORS` names: `tracestate`, baggage), unless they carry one already;
        `headers` as given while tracing is off."""
        if _current() is None:
            return headers
        from opentelemetry import propagate  # noqa: PLC0415 (tracing is on: imported already)

        headers = {} if headers is None else headers
        fields: dict[str, str] = {}
        propagate.inject(fields)
        for name, value in fields.items():
            if name not in headers:
                headers[name] = value
        return headers


def failed(span: Any, exc: BaseException) -> None:
    """Mark `span` failed by `exc`: its class and OAuth error code, never its message."""
    error = getattr(exc, "error", None)
    span.set_attributes(attributes({"error_type": type(exc).__name__, "error": error if isinstance(error, str) else None}))
    set_error(span)


def set_error(span: Any) -> None:
    """Set `span`'s status to Error (without a description, which could quote input)."""
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 (tracing is on: imported already)

    span.set_status(Status(StatusCode.ERROR))


def span_kind(kind: str) -> Any:
    """The SpanKind named `kind`: internal, client or server."""
    from opentelemetry.trace import SpanKind  # noqa: PLC0415 (tracing is on: imported already)

    return getattr(SpanKind, kind.upper())


_tracer = Tracer("client_lib")
span = _tracer.span
traced = _tracer.traced
annotate = _tracer.annotate
inject = _tracer.inject
