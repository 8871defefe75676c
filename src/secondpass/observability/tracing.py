"""OpenTelemetry spans along a request's path, and nothing at all when tracing is off.

Why a module of its own: the scoring engine (``pipeline/``) opens spans for the
cache, the queue wait and the model, the HTTP layers open the request span and
the proxy the upstream call, and all of them must work unchanged when the
``tracing`` extra is not installed or tracing is not configured. Every helper
here answers with a shared no-op when :func:`enabled` is false, so the cost of
tracing off is one attribute read per call site. It imports nothing of ours
and nothing of HTTP, so the pipeline may use it.

The tracer comes from a :class:`~opentelemetry.sdk.trace.TracerProvider` handed
to :func:`enable` (tests pass one with an in-memory exporter) or built by
:func:`configure` from ``--otlp-endpoint`` or the standard ``OTEL_*``
variables. The process-wide OpenTelemetry provider is left alone, so an
application embedding the library keeps its own.

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> enable(TracerProvider())
    >>> with span("secondpass.demo", {"answer": 42}):
    ...     pass
    >>> disable()
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from secondpass.errors import ConfigurationError, MissingDependencyError

try:  # opentelemetry-api is optional (extra "tracing"); without it every helper is a no-op
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised only without the extra
    otel_context = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]
    TraceContextTextMapPropagator = None  # type: ignore[assignment,misc]

__all__ = [
    "attached",
    "configure",
    "current_context",
    "current_trace_id",
    "disable",
    "enable",
    "enabled",
    "inject",
    "record",
    "server_span",
    "span",
    "trace_headers",
    "traced_stage",
]

_NOOP: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
_tracer: Any = None
"""The tracer spans come from; ``None`` means tracing is off."""
_w3c: Any = None if TraceContextTextMapPropagator is None else TraceContextTextMapPropagator()


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _tracer is not None


def enable(provider: Any) -> None:
    """Record spans with ``provider`` (an SDK ``TracerProvider``) from now on."""
    global _tracer  # noqa: PLW0603 - one switch for the whole process, read on hot paths
    if trace is None:
        package = "opentelemetry-api"
        raise MissingDependencyError(package, "tracing")
    from secondpass import __version__

    _tracer = provider.get_tracer("secondpass", __version__)


def disable() -> None:
    """Stop recording spans (the provider is the caller's to shut down)."""
    global _tracer  # noqa: PLW0603
    _tracer = None


def configure(
    *, endpoint: str | None, service_name: str, environ: Mapping[str, str] | None = None
) -> Any | None:
    """Turn tracing on when an OTLP endpoint is configured; the provider, or ``None`` if off.

    ``endpoint`` (``--otlp-endpoint``) wins over ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
    and ``OTEL_EXPORTER_OTLP_ENDPOINT``; it is a base URL, as the latter is, and
    spans go to ``<endpoint>/v1/traces`` over OTLP/HTTP. ``OTEL_SDK_DISABLED=true``
    or ``OTEL_TRACES_EXPORTER=none`` keep tracing off; ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` name the process (default ``service_name``).
    Call ``shutdown()`` on the provider at exit to flush the last spans.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    traces_url = None
    if endpoint is None:
        traces_url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    if endpoint is None and traces_url is None:
        return None
    if traces_url is None:
        assert endpoint is not None
        if not endpoint.startswith(("http://", "https://")):
            msg = f"--otlp-endpoint must be an http(s) URL such as http://127.0.0.1:4318, got {endpoint!r}"
            raise ConfigurationError(msg)
        traces_url = endpoint.rstrip("/") + "/v1/traces"
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        package = "opentelemetry-sdk"
        raise MissingDependencyError(package, "tracing") from exc
    name = env.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    enable(provider)
    return provider


def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """A child of the current span for the ``with`` block (a no-op when tracing is off)."""
    tracer = _tracer
    if tracer is None:
        return _NOOP
    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    return tracer.start_as_current_span(name, attributes=attributes, kind=kind)  # type: ignore[no-any-return]


def server_span(
    name: str, headers: Iterable[tuple[bytes, bytes]], attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """The span of one incoming request, continuing the client's W3C ``traceparent`` if sent.

    A malformed ``traceparent`` is ignored (a new trace starts), as the W3C
    recommendation says; only ``traceparent`` and ``tracestate`` are read.
    """
    tracer = _tracer
    if tracer is None:
        return _NOOP
    carrier = {}
    for key, value in headers:
        lowered = key.lower()
        if lowered in (b"traceparent", b"tracestate"):
            carrier[lowered.decode("latin-1")] = value.decode("latin-1")
    parent = _w3c.extract(carrier) if carrier else None
    return tracer.start_as_current_span(  # type: ignore[no-any-return]
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    )


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's W3C ``traceparent`` (and ``tracestate``) to ``headers``."""
    if _tracer is not None:
        _w3c.inject(headers)


def trace_headers() -> dict[str, str]:
    """The W3C headers of the current span for an outgoing call; empty when tracing is off.

    The connectors add them to their engine calls, so a ``/v1/search`` trace
    continues into Elasticsearch/OpenSearch as the proxy's upstream calls do.
    """
    headers: dict[str, str] = {}
    inject(headers)
    return headers


def current_context() -> object | None:
    """The caller's trace context, to carry to another thread or loop; ``None`` when off."""
    if _tracer is None:
        return None
    return otel_context.get_current()


@contextlib.contextmanager
def attached(ctx: object | None) -> Iterator[None]:
    """Make ``ctx`` (from :func:`current_context`) the current one for the block."""
    if ctx is None or otel_context is None:
        yield
        return
    token = otel_context.attach(ctx)  # type: ignore[arg-type]
    try:
        yield
    finally:
        otel_context.detach(token)


def record(
    name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None
) -> None:
    """A finished child span for an interval measured elsewhere (another thread's batch).

    The queue wait and the forward pass happen in the batcher and the model
    thread, which serve several requests at once; their intervals are measured
    there (wall clock, ``time.time_ns()``) and recorded under each request's span.
    """
    tracer = _tracer
    if tracer is None:
        return
    child = tracer.start_span(name, start_time=start_ns, attributes=attributes)
    child.end(end_time=max(start_ns, end_ns))


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits) for log lines; ``None`` when off or outside a span."""
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def traced_stage(stage: Any) -> Any:
    """``stage`` (a :class:`~secondpass.pipeline.first_stage.FirstStage`) with a span per call.

    Returned as is when tracing is off, so an untraced service pays nothing.
    """
    return stage if _tracer is None else _TracedStage(stage)


class _TracedStage:
    """A first stage whose every retrieval is a ``secondpass.first_stage`` span."""

    def __init__(self, stage: Any) -> None:
        self._stage = stage

    def retrieve(self, query: str, *, size: int, **kwargs: Any) -> Any:
        with span("secondpass.first_stage", {"secondpass.window": size}, client=True):
            return self._stage.retrieve(query, size=size, **kwargs)

    async def aretrieve(self, query: str, *, size: int, **kwargs: Any) -> Any:
        with span("secondpass.first_stage", {"secondpass.window": size}, client=True):
            return await self._stage.aretrieve(query, size=size, **kwargs)

    def __getattr__(self, name: str) -> Any:  # the stage's other attributes (encoder, ...)
        return getattr(self._stage, name)


def now_ns() -> int:
    """Wall-clock nanoseconds, the clock span timestamps use."""
    return time.time_ns()
