"""The API's ``/metrics``: the bucket's pending backlog (what KEDA scales GPU workers on, from
zero: the API runs while no worker does) and the API's own counters.

The backlog is counted at scrape time with LIST calls (``BucketQueue.backlog``: the inputs and the
done markers, 1000 keys a call), cached for ``BACKLOG_CACHE_S`` so that several scrapers, or a
scraper per replica, do not multiply the listings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from processor.errors import StoreAccessError, StoreError

#: Seconds a backlog count is reused (KEDA polls every 30 s by default; Prometheus every 15-60 s).
BACKLOG_CACHE_S = 10.0


class BacklogSource(Protocol):
    """What the backlog gauge counts from (``BucketQueue.backlog``)."""

    def backlog(self) -> tuple[int, int]:
        """(inputs without a result, of them claimed by a worker)."""
        ...


class ApiMetrics:
    def __init__(self, jobs: BacklogSource, clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = jobs
        self.clock = clock
        self.registry = CollectorRegistry()
        self._submitted = Counter("processor_api_jobs_submitted", "Jobs written by POST /v1/jobs (and the "
                                  "prototype's route); repeats of an Idempotency-Key are 'repeat'",
                                  ["outcome"], registry=self.registry)
        for outcome in ("created", "repeat"):
            self._submitted.labels(outcome)
        self._lock = threading.Lock()
        self._cached: tuple[float, int, int] | None = None
        self.registry.register(_BacklogCollector(self))

    def submitted(self, created: bool) -> None:
        self._submitted.labels("created" if created else "repeat").inc()

    def backlog(self) -> tuple[int, int] | None:
        """(pending, claimed) from a recent count; None when the store did not answer."""
        with self._lock:
            if self._cached is not None and self.clock() - self._cached[0] < BACKLOG_CACHE_S:
                return self._cached[1], self._cached[2]
            try:
                pending, claimed = self.jobs.backlog()
            except (StoreError, StoreAccessError):
                return None
            self._cached = (self.clock(), pending, claimed)
            return pending, claimed

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
        pending, claimed = counted
        yield GaugeMetricFamily("processor_pending_inputs", "Inputs without a result (manifest or final failure "
                                "record), claimed or not: what GPU workers still have to do", value=pending)
        yield GaugeMetricFamily("processor_claimed_inputs", "Of the pending inputs, those a worker holds a claim "
                                "on now", value=claimed)
