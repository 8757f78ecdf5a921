"""Optional tracing with OpenTelemetry (the ``otel`` extra; ``tracing.enabled``).

The worker traces each input it takes as one trace: an ``item`` span from its claim to its outcome,
with ``claim``, ``download``, ``decode``, ``render``, ``upload`` and ``commit`` spans under it, and
a ``scan`` span per scan; the API traces each request (``<METHOD> <route template>``,
``processor.api.http_metrics``). The trace id goes into the records the item's worker writes
(``Manifest.trace_id``, ``FailureRecord.trace_id``, ``CancelRecord.trace_id``) and into every log
line written inside a span (``trace_id``, ``processor.log.bind_trace``), so a manifest or a log
line leads to the trace.

With tracing off (the default) ``NO_TRACING`` stands in: its spans are one shared object whose
methods do nothing, nothing imports ``opentelemetry``, and a span costs a function call. Spans go
out over OTLP/HTTP (``tracing.exporter: otlp``; where to is the SDK's standard environment:
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``) or to
stderr (``console``). The provider is this process's own, never the global one: other libraries'
instrumentation (FastAPI's own, when a global provider is set) stays as their operator set it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from processor.log import bind_trace, unbind_trace

if TYPE_CHECKING:  # only the real tracer's types; never imported at run time unless tracing is on
    from opentelemetry.sdk.trace import TracerProvider

    from processor.config.sections import TracingSettings

#: Attribute values a span keeps (OpenTelemetry's primitive types).
Attribute = str | int | float | bool


class Span:
    """A span that records nothing (tracing off): every method is a no-op, ``trace_id`` is None."""

    trace_id: str | None = None

    def set(self, **attributes: Attribute | None) -> None:
        """Set attributes (None values are left out)."""

    def error(self, exc: BaseException) -> None:
        """Mark the span failed with ``exc``."""

    def rename(self, name: str) -> None:
        """Name the span anew (the API's, once the route that answered is known)."""

    def end(self, **attributes: Attribute | None) -> None:
        """End a span started with ``Tracer.start`` (``span`` blocks end themselves)."""


#: The one span of a tracer that records nothing.
NO_SPAN = Span()


class Tracer:
    """Tracing off: spans that do nothing (module docstring). ``OtelTracer`` records them."""

    enabled = False

    def start(self, name: str, *, parent: Span | None = None, server: bool = False,
              **attributes: Attribute | None) -> Span:
        """A span that lasts until its ``end`` (the worker's ``item``, which several threads add to)."""
        return NO_SPAN

    def span(self, name: str, *, parent: Span | None = None, server: bool = False,
             **attributes: Attribute | None) -> AbstractContextManager[Span]:
        """A span for a ``with`` block, under ``parent`` (default: the span current on this
        thread); log lines inside it carry its trace id; an exception marks it failed.
        ``server``: the span of a request this process serves."""
        return _NO_SPAN_BLOCK

    def close(self) -> None:
        """Send what is buffered (at the process's end)."""


class _NoSpanBlock(AbstractContextManager[Span]):
    def __enter__(self) -> Span:
        return NO_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SPAN_BLOCK = _NoSpanBlock()
NO_TRACING = Tracer()


class OtelSpan(Span):
    """An OpenTelemetry span."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.trace_id = format(span.get_span_context().trace_id, "032x")

    def set(self, **attributes: Attribute | None) -> None:
        self.span.set_attributes(_clean(attributes))

    def error(self, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    def rename(self, name: str) -> None:
        self.span.update_name(name)

    def end(self, **attributes: Attribute | None) -> None:
        self.set(**attributes)
        self.span.end()


class OtelTracer(Tracer):
    """Spans recorded with OpenTelemetry's SDK through ``provider``."""

    enabled = True

    def __init__(self, provider: TracerProvider, name: str = "processor") -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(name)

    def start(self, name: str, *, parent: Span | None = None, server: bool = False,
              **attributes: Attribute | None) -> Span:
        return OtelSpan(self.tracer.start_span(name, context=_context(parent), kind=_kind(server),
                                               attributes=_clean(attributes)))

    @contextmanager
    def span(self, name: str, *, parent: Span | None = None, server: bool = False,
             **attributes: Attribute | None) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, context=_context(parent), kind=_kind(server),
                                               attributes=_clean(attributes), record_exception=False,
                                               set_status_on_exception=False) as raw:
            span = OtelSpan(raw)
            token = bind_trace(span.trace_id)
            try:
                yield span
            except BaseException as exc:
                span.error(exc)
                raise
            finally:
                unbind_trace(token)

    def close(self) -> None:
        self.provider.shutdown()


def _context(parent: Span | None) -> Any:
    if not isinstance(parent, OtelSpan):
        return None  # the span current on this thread (or a new trace)
    from opentelemetry import trace

    return trace.set_span_in_context(parent.span)


def _kind(server: bool) -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.SERVER if server else SpanKind.INTERNAL


def _clean(attributes: dict[str, Attribute | None]) -> dict[str, Attribute]:
    return {f"processor.{k}" if "." not in k else k: v for k, v in attributes.items() if v is not None}


def build_tracer(settings: TracingSettings, service: str) -> Tracer:
    """The tracer ``settings`` ask for: ``NO_TRACING`` unless ``tracing.enabled``. ``service`` names
    the process in the backend (``OTEL_SERVICE_NAME`` overrides it). Tracing on without the
    ``otel`` extra is a ``ConfigError`` that says what to install."""
    if not settings.enabled:
        return NO_TRACING
    from processor.errors import ConfigError

    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigError(f"tracing.enabled needs OpenTelemetry's SDK ({exc.name} is not installed): "
                          "pip install 'toy-cartoonizer[otel]', or set tracing.enabled: false") from None
    # OTEL_SERVICE_NAME, when set, names the service (the SDK reads it when we name none).
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(named),
                              sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    if settings.exporter == "console":
        exporter: Any = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigError(f"tracing.exporter: otlp needs {exc.name}: pip install 'toy-cartoonizer[otel]', "
                              "or set tracing.exporter: console") from None
        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return OtelTracer(provider)
