"""Whether the bucket takes a write, for ``/readyz``: an API that cannot write cannot take a job.

A bucket that answers reads but refuses writes (a full disk under the local store, a quota, a
policy that turned read-only) would keep a replica ready while every submit failed. ``WriteProbe``
writes one small object under the state prefix (``BucketJobs.probe_write``) at most once per
``READY_WRITE_EVERY_S`` per replica and reuses that answer in between, so a probe every few
seconds costs the bucket one small write a half-minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from processor.errors import StoreAccessError, StoreError
from processor.queue.jobs import BucketJobs

#: Seconds between two write probes of one replica.
READY_WRITE_EVERY_S = 30.0


class WriteProbe:
    """The last write probe's answer, renewed when older than ``every_s`` (thread-safe)."""

    def __init__(self, jobs: BucketJobs, replica: str, *, every_s: float = READY_WRITE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = jobs
        self.replica = replica
        self.every_s = every_s
        self.clock = clock
        self._last: tuple[float, str | None] | None = None
        self._lock = threading.Lock()

    def failure(self) -> str | None:
        """None when the bucket took the latest probe write; else why it did not."""
        with self._lock:
            if self._last is not None and self.clock() - self._last[0] < self.every_s:
                return self._last[1]
            try:
                self.jobs.probe_write(self.replica)
                why = None
            except (StoreError, StoreAccessError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            self._last = (self.clock(), why)
            return why
