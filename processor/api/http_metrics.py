"""The API's ``/metrics``: the bucket's pending backlog (what KEDA scales GPU workers on, from
zero: the API runs while no worker does), its age, and the API's own requests.

The backlog is counted at scrape time with LIST calls (``BucketQueue.backlog``: the inputs and the
done markers, 1000 keys a call), cached for ``BACKLOG_CACHE_S`` so that several scrapers, or a
scraper per replica, do not multiply the listings. The age of the oldest pending input comes from
the same listing: it costs nothing more.

Requests (``RequestObserver``, the outermost middleware, so it sees every answer, the guards' and
limits' too) are counted and timed by method, route template (``/v1/jobs/{job}``, never the raw
path: the label's values are the routes, however many jobs there are; a path no route matches is
``unmatched``) and status. The same middleware opens a tracing span per request when tracing is on
(``processor.tracing``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processor.errors import StoreAccessError, StoreError
from processor.queue.jobs import BacklogCount
from processor.tracing import NO_TRACING, Tracer

#: Seconds a backlog count is reused (KEDA polls every 30 s by default; Prometheus every 15-60 s).
BACKLOG_CACHE_S = 10.0
#: Buckets of the request latency histogram, in seconds: from a job read (milliseconds) to an event
#: stream's whole life (api.stream_max_s, 300 s by default).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: The route label of a request no route matched (a 404 for an unknown path, a refused Host).
UNMATCHED = "unmatched"


class BacklogSource(Protocol):
    """What the backlog gauges count from (``BucketQueue.backlog``)."""

    def backlog(self) -> BacklogCount | tuple[int, int]:
        """(inputs without a result, of them claimed by a worker[, the oldest one's upload time])."""
        ...


class ApiMetrics:
    def __init__(self, jobs: BacklogSource, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.jobs = jobs
        self.clock = clock
        self.now = now
        self.registry = CollectorRegistry()
        self._submitted = Counter("processor_api_jobs_submitted", "Jobs written by POST /v1/jobs (and the "
                                  "prototype's route); repeats of an Idempotency-Key are 'repeat'",
                                  ["outcome"], registry=self.registry)
        for outcome in ("created", "repeat"):
            self._submitted.labels(outcome)
        self._requests = Counter("processor_api_requests", "HTTP requests answered, by method, route template "
                                 "and status", ["method", "route", "status"], registry=self.registry)
        self._latency = Histogram("processor_api_request_duration_seconds", "Seconds from a request's start to the "
                                  "end of its answer (an event stream: its whole life), by method, route template "
                                  "and status", ["method", "route", "status"], buckets=LATENCY_BUCKETS_S,
                                  registry=self.registry)
        self._lock = threading.Lock()
        self._cached: tuple[float, BacklogCount] | None = None
        self.registry.register(_BacklogCollector(self))

    def submitted(self, created: bool) -> None:
        self._submitted.labels("created" if created else "repeat").inc()

    def answered(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request answered (``RequestObserver``)."""
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(method, route, str(status)).observe(seconds)

    def backlog(self) -> BacklogCount | None:
        """The backlog from a recent count; None when the store did not answer."""
        with self._lock:
            if self._cached is not None and self.clock() - self._cached[0] < BACKLOG_CACHE_S:
                return self._cached[1]
            try:
                counted = BacklogCount(*self.jobs.backlog())
            except (StoreError, StoreAccessError):
                return None
            self._cached = (self.clock(), counted)
            return counted

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _BacklogCollector:
    def __init__(self, metrics: ApiMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # unknown until scraped: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        counted = self.metrics.backlog()
        up = GaugeMetricFamily("processor_api_store_up", "1 when the last backlog count reached the bucket")
        up.add_metric([], 0 if counted is None else 1)
        yield up
        if counted is None:
            return
        yield GaugeMetricFamily("processor_pending_inputs", "Inputs without a result (manifest or final failure "
                                "record), claimed or not: what GPU workers still have to do", value=counted.pending)
        yield GaugeMetricFamily("processor_claimed_inputs", "Of the pending inputs, those a worker holds a claim "
                                "on now", value=counted.claimed)
        oldest = counted.oldest_pending_at
        age = 0.0 if oldest is None else max(0.0, (self.metrics.now() - oldest).total_seconds())
        yield GaugeMetricFamily("processor_oldest_pending_age_seconds", "Age of the oldest input without a result "
                                "(0: none), from the API's backlog count: what to scale out on beside "
                                "processor_pending_inputs", value=age)


class RequestObserver:
    """ASGI middleware: each HTTP request counted and timed (``ApiMetrics.answered``) and, with
    tracing on, a span (``<METHOD> <route template>``) around it."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics, tracer: Tracer = NO_TRACING,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracer
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 500  # an exception that escapes every handler is answered 500 by the server
        method = scope.get("method", "")

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.span(method, server=True, **{"http.request.method": method}) as span:
            try:
                await self.app(scope, receive, observed)
            finally:
                route = route_template(scope)
                self.metrics.answered(method, route, status, self.clock() - started)
                attributes: dict[str, str | int | None] = {"http.route": route, "http.response.status_code": status}
                span.set(**attributes)
                span.rename(f"{method} {route}")


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/v1/jobs/{job}``), or ``UNMATCHED``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED
