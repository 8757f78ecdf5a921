"""What a running worker tells the outside: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``.

The worker knows nothing of Prometheus. It calls the small hooks of a ``WorkerObserver`` (this
base class does nothing, so a worker built without one pays nothing); the composition root
(``cli.py``) builds a ``PrometheusObserver`` and serves it with ``MetricsServer``::

    GET /metrics   Prometheus text format (OpenMetrics when the scraper asks for it)
    GET /healthz   200 while the worker makes progress; 503 once it made none for metrics.stall_s
    GET /readyz    200 once setup() loaded the models and a scan reached the store; 503 before,
                   while the store is unreachable, and after SIGTERM (the worker is draining)

Every observer has its own ``CollectorRegistry`` (never the process-global default), so tests
and tools can run several workers in one process without their numbers mixing.

Counters that other objects already keep (claim conflicts and takeovers in ``ClaimManager``,
retries in the store's ``RetryPolicy``, requests in the store) are read when Prometheus scrapes,
not copied by hooks; so is GPU memory, and only when the process has already imported torch and
initialised CUDA (a scrape must never import torch or create a CUDA context).
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from processor.config import MetricsSettings
from processor.errors import ConfigError
from processor.queue.outcomes import RESOLVED, Outcome
from processor.store.base import CountsRequests

log = logging.getLogger("processor.metrics")

#: Every outcome the worker counts for an input (``processor.queue.outcomes``), exported from zero so a
#: dashboard's rate() has a series before the first one happens.
OUTCOMES = tuple(o.value for o in Outcome)
#: Seconds: histogram buckets from a 10 ms GET to a 10-minute Stable Diffusion item.
STAGE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0)
#: Seconds: buckets of a scan (LIST calls over inputs/ and the done markers).
SCAN_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Inputs per compute call (``run.batch_inputs`` is at most 64).
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
#: The prefix of a per-style timing key in ``Job.timings`` (``render`` writes ``style:<name>``).
STYLE_TIMING_PREFIX = "style:"


class WorkerObserver:
    """The hooks ``Worker`` calls. This base does nothing; every hook must be cheap and thread-safe
    (the fetch, compute and upload threads all call them). The worker calls them through a
    ``GuardedObserver``, so one that raises is logged, not fatal."""

    def heartbeat(self, quiet_s: float = 0.0) -> None:
        """The loop is alive; it may now be silent for ``quiet_s`` seconds on purpose (an idle wait)."""

    def setup_done(self) -> None:
        """Models are loaded: the worker can take work."""

    def scanned(self, pending: int, seconds: float, *, full: bool = True) -> None:
        """A scan reached the store and found ``pending`` inputs without a result: all of them
        (``full``), or those new since the last scan (an incremental scan)."""

    def scan_failed(self, error: str) -> None:
        """A scan could not reach the store (after retries)."""

    def oldest_pending(self, uploaded_at: float | None) -> None:
        """The last scan's oldest input without a result was uploaded at ``uploaded_at`` (Unix
        seconds, the store's Last-Modified); None: it found none."""

    def item(self, outcome: Outcome, timings: Mapping[str, float] | None = None) -> None:
        """One input left the worker with ``outcome``; ``timings`` are its stages' seconds."""

    def stage(self, name: str, seconds: float) -> None:
        """A stage that is not part of an item's ``timings`` (the manifest commit)."""

    def computed_together(self, inputs: int) -> None:
        """The compute stage rendered ``inputs`` inputs in one call (``run.batch_inputs``)."""

    def stopping(self) -> None:
        """Shutdown was requested: finish what is in hand, take nothing new."""

    def breaker_tripped(self, errors: Sequence[str]) -> None:
        """The circuit breaker tripped (``processor.queue.failpolicy``): the worker stops as unhealthy;
        ``errors`` are the last failures that tripped it."""


class GuardedObserver(WorkerObserver):
    """Dispatches each hook to ``inner`` (and then to each of ``more``: the capabilities record's
    keeper, say), logging and swallowing what each raises: a broken metric or probe must never end
    a pass (dramatiq: a middleware's errors are logged, never fatal to the worker). The worker
    calls its observers only through one of these."""

    def __init__(self, inner: WorkerObserver, *more: WorkerObserver) -> None:
        self.inner = inner
        self.observers = (inner, *more)

    def _call(self, hook: str, *args: Any, **kwargs: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args, **kwargs)
            except Exception as exc:
                log.warning("observer_failed", extra={"hook": hook, "error": type(exc).__name__,
                                                      "detail": str(exc)}, exc_info=True)

    def heartbeat(self, quiet_s: float = 0.0) -> None:
        self._call("heartbeat", quiet_s)

    def setup_done(self) -> None:
        self._call("setup_done")

    def scanned(self, pending: int, seconds: float, *, full: bool = True) -> None:
        self._call("scanned", pending, seconds, full=full)

    def scan_failed(self, error: str) -> None:
        self._call("scan_failed", error)

    def oldest_pending(self, uploaded_at: float | None) -> None:
        self._call("oldest_pending", uploaded_at)

    def item(self, outcome: Outcome, timings: Mapping[str, float] | None = None) -> None:
        self._call("item", outcome, timings)

    def stage(self, name: str, seconds: float) -> None:
        self._call("stage", name, seconds)

    def computed_together(self, inputs: int) -> None:
        self._call("computed_together", inputs)

    def stopping(self) -> None:
        self._call("stopping")

    def breaker_tripped(self, errors: Sequence[str]) -> None:
        self._call("breaker_tripped", errors)


class PrometheusObserver(WorkerObserver):
    """The worker's metrics in their own registry, and the health and readiness it serves."""

    def __init__(self, *, stall_s: float, clock: Callable[[], float] = time.monotonic,
                 registry: CollectorRegistry | None = None) -> None:
        self.stall_s = stall_s
        self._clock = clock
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._started = clock()
        self._last_progress = self._started
        self._quiet_until = self._started
        self._setup_done = False
        self._stopping = False
        #: None before the first scan; then whether the last scan reached the store, and why not.
        self._scan_ok: bool | None = None
        self._scan_error = ""
        self._backlog = 0
        self._store: Any = None
        self._claims: Any = None

        r = self.registry
        self.items = Counter("processor_items", "Inputs by what happened to them.", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.items.labels(outcome)
        self.stages = Histogram("processor_stage_seconds",
                                "Seconds per item in each stage (render: all styles of one item).",
                                ["stage"], buckets=STAGE_BUCKETS_S, registry=r)
        self.styles = Histogram("processor_style_seconds", "Seconds to render one style's variants of one item.",
                                ["style"], buckets=STAGE_BUCKETS_S, registry=r)
        self.batch_inputs = Histogram("processor_compute_batch_inputs",
                                      "Inputs per compute call (run.batch_inputs: those already prepared).",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.scan_seconds = Histogram("processor_scan_seconds", "Seconds per scan of the bucket.",
                                      buckets=SCAN_BUCKETS_S, registry=r)
        self.scan_failures = Counter("processor_scan_failures", "Scans that could not reach the store.", registry=r)
        self.backlog = Gauge("processor_backlog_inputs",
                             "Inputs without a result: the last scan's count, less those this worker resolved since.",
                             registry=r)
        self.last_scan = Gauge("processor_last_scan_timestamp_seconds", "Unix time of the last successful scan.",
                               registry=r)
        #: Unix time the oldest pending input of the last scan was uploaded; None: none pending.
        self._oldest_pending: float | None = None
        Gauge("processor_oldest_pending_age_seconds",
              "Age of the oldest input without a result that the last scan found (0: none): what to scale out on "
              "beside processor_backlog_inputs.", registry=r).set_function(self._oldest_pending_age)
        Gauge("processor_ready", "1 when /readyz answers 200.", registry=r).set_function(lambda: float(self.ready()[0]))
        Gauge("processor_seconds_since_progress", "Seconds since the worker last made progress (/healthz).",
              registry=r).set_function(lambda: self._clock() - self._last_progress)
        self.info = Info("processor_worker", "The worker: id, version, compute device.", registry=r)
        self.breaker_trips = Counter("processor_breaker_trips",
                                     "Times the worker stopped as unhealthy: run.max_consecutive_failures "
                                     "items in a row failed in a pipeline stage.", registry=r)
        r.register(_ScrapeTimeCollector(self))
        # The standard process_* (memory, CPU, open files) and python_info, in this registry too.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    # ------------------------------------------------------------ wiring

    def watch(self, *, store: Any = None, claims: Any = None, info: Mapping[str, str] | None = None) -> None:
        """Objects whose own counters are read at scrape time: the store (requests, and retries of
        its ``retry_policy``) and the ``ClaimManager`` (conflicts, takeovers)."""
        self._store = store
        self._claims = claims
        if info:
            self.info.info({k: str(v) for k, v in info.items() if v is not None})

    # ------------------------------------------------------------ hooks

    def heartbeat(self, quiet_s: float = 0.0) -> None:
        now = self._clock()
        with self._lock:
            self._last_progress = now
            self._quiet_until = max(self._quiet_until, now + quiet_s)

    def setup_done(self) -> None:
        with self._lock:
            self._setup_done = True
        self.heartbeat()

    def computed_together(self, inputs: int) -> None:
        self.batch_inputs.observe(inputs)

    def scanned(self, pending: int, seconds: float, *, full: bool = True) -> None:
        self.last_scan.set_to_current_time()
        self.scan_seconds.observe(seconds)
        with self._lock:
            self._backlog = pending if full else self._backlog + pending
            self.backlog.set(self._backlog)
            self._scan_ok, self._scan_error = True, ""
        self.heartbeat()

    def oldest_pending(self, uploaded_at: float | None) -> None:
        with self._lock:
            self._oldest_pending = uploaded_at

    def _oldest_pending_age(self) -> float:
        with self._lock:
            oldest = self._oldest_pending
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def scan_failed(self, error: str) -> None:
        self.scan_failures.inc()
        with self._lock:
            self._scan_ok, self._scan_error = False, error
        self.heartbeat()

    def item(self, outcome: Outcome, timings: Mapping[str, float] | None = None) -> None:
        self.items.labels(str(outcome)).inc()
        if outcome in RESOLVED:
            # Keep the gauge honest between scans (a daemon's pass can take hours), never below 0.
            with self._lock:
                self._backlog = max(0, self._backlog - 1)
                self.backlog.set(self._backlog)
        render_s = 0.0
        styled = False
        for name, seconds in (timings or {}).items():
            if name.startswith(STYLE_TIMING_PREFIX):
                self.styles.labels(name[len(STYLE_TIMING_PREFIX):]).observe(seconds)
                render_s += seconds
                styled = True
            else:
                self.stages.labels(name).observe(seconds)
        if styled:
            self.stages.labels("render").observe(render_s)
        self.heartbeat()

    def stage(self, name: str, seconds: float) -> None:
        self.stages.labels(name).observe(seconds)

    def stopping(self) -> None:
        with self._lock:
            self._stopping = True

    def breaker_tripped(self, errors: Sequence[str]) -> None:
        self.breaker_trips.inc()
        self.stopping()  # it takes no more work: not ready

    # ------------------------------------------------------------ probes

    def health(self) -> tuple[bool, str]:
        """Alive: in setup, stopping, or progress within ``stall_s`` (plus any announced idle wait)."""
        now = self._clock()
        with self._lock:
            if not self._setup_done:
                return True, f"starting: setup running for {now - self._started:.0f}s"
            if self._stopping:
                return True, "stopping"
            silent = now - self._last_progress
            deadline = max(self._last_progress, self._quiet_until) + self.stall_s
        if now > deadline:
            return False, (f"no progress for {silent:.0f}s (metrics.stall_s={self.stall_s:g}): "
                           "the worker looks wedged")
        return True, f"ok: last progress {silent:.0f}s ago"

    def ready(self) -> tuple[bool, str]:
        """Ready: models loaded, the last scan reached the store, and no shutdown requested."""
        with self._lock:
            if not self._setup_done:
                return False, "not ready: loading models (setup)"
            if self._stopping:
                return False, "not ready: stopping"
            if self._scan_ok is None:
                return False, "not ready: no scan yet"
            if not self._scan_ok:
                return False, f"not ready: store unreachable ({self._scan_error})"
        return True, "ready"


class _ScrapeTimeCollector:
    """Values other objects keep, read when Prometheus scrapes."""

    def __init__(self, observer: PrometheusObserver) -> None:
        self.observer = observer

    def describe(self) -> list[Metric]:
        return []  # names vary with what is watched; nothing else in this registry uses them

    def collect(self) -> Iterator[Metric]:
        claims = self.observer._claims  # noqa: SLF001 - the observer's own wiring
        if claims is not None:
            yield CounterMetricFamily("processor_claim_conflicts",
                                      "Claims not taken because another worker held them (or won the race).",
                                      value=claims.conflicts)
            yield CounterMetricFamily("processor_claim_takeovers",
                                      "Expired claims of other (dead or paused) workers taken over.",
                                      value=claims.takeovers)
        store = self.observer._store  # noqa: SLF001
        if isinstance(store, CountsRequests):
            yield CounterMetricFamily("processor_store_requests", "Requests sent to the store (retries included).",
                                      value=store.request_count())
        if store is not None:
            policy = getattr(store, "retry_policy", None)
            if policy is not None:
                yield CounterMetricFamily("processor_store_retries",
                                          "Store requests retried after a transient error (timeouts, 5xx, throttling).",
                                          value=policy.retries)
        yield from _gpu_memory()


def _gpu_memory() -> Iterator[Metric]:
    """CUDA memory per device, only when this process already uses CUDA (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if not torch.cuda.is_initialized():
            return
        allocated = GaugeMetricFamily("processor_gpu_memory_allocated_bytes",
                                      "Bytes of GPU memory held by tensors now.", labels=["device"])
        peak = GaugeMetricFamily("processor_gpu_memory_max_allocated_bytes",
                                 "Peak bytes of GPU memory held by tensors since the worker started.",
                                 labels=["device"])
        reserved = GaugeMetricFamily("processor_gpu_memory_reserved_bytes",
                                     "Bytes of GPU memory held by PyTorch's caching allocator.", labels=["device"])
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            allocated.add_metric([device], torch.cuda.memory_allocated(index))
            peak.add_metric([device], torch.cuda.max_memory_allocated(index))
            reserved.add_metric([device], torch.cuda.memory_reserved(index))
    except Exception as exc:  # noqa: BLE001 - a broken driver must not take /metrics down
        log.debug("gpu_memory_unreadable", extra={"error": type(exc).__name__, "detail": str(exc)})
        return
    yield from (allocated, peak, reserved)


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # A restarted worker must get its port back at once, not after TIME_WAIT.
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # a probe every 10 s is not worth a log line


def wsgi_app(observer: PrometheusObserver) -> Callable[..., Any]:
    """The endpoints as a WSGI application (``/metrics`` is prometheus_client's own)."""
    metrics = make_wsgi_app(observer.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path in ("/healthz", "/readyz"):
            ok, detail = observer.health() if path == "/healthz" else observer.ready()
            status = "200 OK" if ok else "503 Service Unavailable"
        else:
            status, detail = "404 Not Found", "not found: try /metrics, /healthz, /readyz"
        body = (detail + "\n").encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class MetricsServer:
    """``wsgi_app`` on ``host:port``, served from a daemon thread.

    ``fallback_to_free_port``: when ``port`` is in use, listen on a free port the kernel picks
    (logged as ``metrics_port_taken``) instead of raising ``ConfigError``.
    """

    def __init__(self, observer: PrometheusObserver, host: str, port: int, *,
                 fallback_to_free_port: bool = False) -> None:
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(host, port, wsgi_app(observer), server_class, _QuietHandler)
        except OSError as exc:
            if not (fallback_to_free_port and exc.errno == errno.EADDRINUSE):
                raise ConfigError(
                    f"metrics.port: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                    "set metrics.port (or --metrics-port) to a free port, or 0 to turn metrics off"
                ) from exc
            self._server = make_server(host, 0, wsgi_app(observer), server_class, _QuietHandler)
            log.warning("metrics_port_taken", extra={
                "host": host, "port": port, "serving_on": self._server.server_address[1],
                "hint": "another process holds the default metrics port (a second worker on this host?); "
                        "set metrics.port or --metrics-port to pin one, or 0 to turn metrics off"})
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics_serving", extra={"host": host, "port": self.port,
                                           "paths": ["/metrics", "/healthz", "/readyz"]})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class MetricsEndpoint:
    """What ``processor run`` holds: the observer, and its server unless metrics are off.

    A taken port stops the worker (``ConfigError``, exit 3) only when the port was configured;
    the default one falls back to a free port, so several workers share a host unconfigured.
    """

    def __init__(self, settings: MetricsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.observer = PrometheusObserver(stall_s=settings.stall_s, clock=clock)
        self.server = (MetricsServer(self.observer, settings.host, settings.port,
                                     fallback_to_free_port=settings.port_is_default)
                       if settings.port else None)

    @property
    def port(self) -> int | None:
        """The port actually served (None: metrics off)."""
        return self.server.port if self.server is not None else None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def describe_endpoint(settings: MetricsSettings) -> tuple[str, str]:
    """``processor doctor``'s row: (status, detail). Warns when the port is taken on this machine."""
    if not settings.port:
        return "ok", "off (metrics.port: 0)"
    where = f"{settings.host}:{settings.port}"
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.port))
        except OSError as exc:
            if settings.port_is_default:
                return "warn", (f"{where} is not free here ({exc.strerror or exc}): `processor run` on this machine "
                                "would serve on a free port instead; set metrics.port or --metrics-port to pin one")
            return "warn", (f"{where} is not free here ({exc.strerror or exc}): `processor run` on this machine "
                            "would stop at start; set metrics.port or --metrics-port (0: off)")
    return "ok", f"`processor run` serves /metrics, /healthz, /readyz on {where}"
