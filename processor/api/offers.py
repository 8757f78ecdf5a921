"""Which styles the API offers, from the running workers' capabilities records
(``processor.queue.workers``): the upload page, ``GET /v1/styles`` and ``/readyz`` read them here.

The API and the workers scale apart (a Deployment of API replicas, GPU workers scaled from zero by
KEDA), so a missing worker never makes the API unready or refuses a job: with no worker running,
every style the API's configuration defines is offered and the answer warns that jobs will wait.
With workers running, a style none of them can load (its extra or its model is missing on every
one) is offered no more: the page greys it out with the reason, ``/v1/styles`` says why. A job
that names it anyway is accepted (a worker that can may start later) and waits with its
``StyleUnavailable`` record once a worker tried it.

``RosterCache`` reads the records at most every ``ROSTER_CACHE_S`` per replica, so page loads and
probes cost the bucket one listing per few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from processor.config import Settings
from processor.config.licenses import noncommercial_uses
from processor.errors import StoreAccessError, StoreError
from processor.queue.jobs import BucketJobs
from processor.queue.workers import Roster

log = logging.getLogger("processor.api")

#: Seconds one replica reuses the workers' records it read.
ROSTER_CACHE_S = 5.0
#: What the page and the API say while no worker runs.
NO_WORKER = "no worker is running: jobs will wait until one starts"
#: Why a style is not offered whose weights carry a non-commercial licence.
NONCOMMERCIAL = "non-commercial weights, which this service does not run (run.allow_noncommercial)"


class RosterCache:
    """The last roster read, renewed when older than ``every_s`` (thread-safe). None when the
    records could not be read (the store failed): callers then offer what the configuration defines."""

    def __init__(self, jobs: BucketJobs, *, every_s: float = ROSTER_CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = jobs
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, Roster | None] | None = None

    def get(self) -> Roster | None:
        with self._lock:
            if self._last is not None and self.clock() - self._last[0] < self.every_s:
                return self._last[1]
            try:
                roster: Roster | None = self.jobs.workers()
            except (StoreError, StoreAccessError) as exc:
                log.warning("workers_unreadable", extra={"error": type(exc).__name__, "detail": str(exc)})
                roster = None
            self._last = (self.clock(), roster)
            return roster


@dataclass(frozen=True)
class StyleOffer:
    """One style the API's configuration defines, as the page and ``/v1/styles`` show it."""

    name: str
    engine: str
    #: In ``run.styles``: what a job without ``styles`` gets.
    default: bool
    #: Whether to offer it: not refused by this service and, while workers run, some worker runs it.
    offered: bool
    #: Live workers that run it (ready, loading, or loadable on first use).
    workers: tuple[str, ...] = ()
    #: Why it is not offered (one line); None when it is.
    reason: str | None = None


@dataclass(frozen=True)
class Offers:
    styles: list[StyleOffer]
    #: Live workers (None: their records could not be read).
    live_workers: int | None
    #: ``NO_WORKER`` while none runs; None otherwise.
    warning: str | None

    @property
    def offered(self) -> list[StyleOffer]:
        return [s for s in self.styles if s.offered]

    @property
    def not_offered(self) -> list[StyleOffer]:
        return [s for s in self.styles if not s.offered]


def style_offers(settings: Settings, roster: Roster | None) -> Offers:
    """Every configured style, offered or not and why (module docstring)."""
    live = roster is not None and roster.any_live
    out = []
    for name, style in sorted(settings.styles.items()):
        default = name in settings.run.styles
        if not settings.run.allow_noncommercial and noncommercial_uses(style):
            out.append(StyleOffer(name, style.engine, default, offered=False, reason=NONCOMMERCIAL))
            continue
        if not live or roster is None:
            out.append(StyleOffer(name, style.engine, default, offered=True))
            continue
        availability = roster.availability(name)
        out.append(StyleOffer(name, style.engine, default, offered=availability.runnable,
                              workers=tuple(availability.workers),
                              reason=None if availability.runnable else availability.why_not()))
    return Offers(out, live_workers=None if roster is None else len(roster.live),
                  warning=NO_WORKER if roster is not None and not roster.any_live else None)
