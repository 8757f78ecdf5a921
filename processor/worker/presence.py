"""This worker's capabilities record in the bucket (``processor.queue.workers``), kept while it runs.

``WorkerPresence`` is a ``WorkerObserver``: the worker's heartbeats (every scan, item and engine
step, and the idle waits it announces) say that its loop is alive, and a thread of its own writes
the record, at start, at most every ``refresh_s`` while the loop is alive, and at once when the
worker becomes ready, starts stopping or finds a style it cannot load. A worker whose loop hangs
(no heartbeat for ``stall_s``, the same bound as ``/healthz``) stops rewriting its record, which
then ages out like a dead worker's. ``close`` deletes it. No hook does I/O: the thread does, so a
slow or failing store never holds up the compute stage; a failed write is logged and tried again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from processor.errors import FatalError, StoreError
from processor.queue.protocol import BucketQueue
from processor.queue.workers import WORKER_RECORD_REFRESH_S, WorkerRecord
from processor.worker.metrics import WorkerObserver

log = logging.getLogger("processor.worker")

Phase = Literal["starting", "ready", "stopping"]


class WorkerPresence(WorkerObserver):
    """Keeps the record ``make_record(phase)`` builds in the bucket while the worker runs."""

    def __init__(self, queue: BucketQueue, make_record: Callable[[Phase], WorkerRecord], *, stall_s: float,
                 refresh_s: float = WORKER_RECORD_REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.make_record = make_record
        self.stall_s = stall_s
        self.refresh_s = refresh_s
        self.clock = clock
        self.phase: Phase = "starting"
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._quiet_until = self._last_beat
        self._last_write: float | None = None
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker_id: str | None = None
        #: Records written (for tests and logs).
        self.writes = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Write the record now (pruning long-dead workers' records) and keep it from a thread."""
        self._write(first=True)
        self._thread = threading.Thread(target=self._loop, name="worker-record", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        """What the worker can run changed (a style failed to load for an input): write soon."""
        self._poke.set()

    def close(self) -> None:
        """Stop rewriting the record and delete it (best effort: else it ages out)."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout=self.refresh_s)
            self._thread = None
        if self._worker_id is None:
            return
        try:
            self.queue.withdraw_worker(self._worker_id)
            log.info("worker_record_removed", extra={"worker": self._worker_id})
        except (StoreError, FatalError) as exc:
            log.warning("worker_record_remove_failed", extra={"error": type(exc).__name__, "detail": str(exc)})

    # ------------------------------------------------------------ hooks (no I/O)

    def heartbeat(self, quiet_s: float = 0.0) -> None:
        now = self.clock()
        with self._lock:
            self._last_beat = now
            self._quiet_until = max(self._quiet_until, now + quiet_s)

    def setup_done(self) -> None:
        self.phase = "ready"
        self.heartbeat()
        self._poke.set()

    def stopping(self) -> None:
        self.phase = "stopping"
        self._poke.set()

    def breaker_tripped(self, errors: object) -> None:
        self.stopping()

    # ------------------------------------------------------------ the thread

    def alive(self) -> bool:
        """Whether the worker's loop showed life within ``stall_s`` (or announced a quiet wait):
        setup, which loads models without heartbeats, counts as alive."""
        now = self.clock()
        with self._lock:
            if self.phase == "starting":
                return True
            return now - self._last_beat <= self.stall_s or now <= self._quiet_until

    def _loop(self) -> None:
        while not self._stop.is_set():
            poked = self._poke.wait(self.refresh_s)
            self._poke.clear()
            if self._stop.is_set():
                return
            due = self._last_write is None or self.clock() - self._last_write >= self.refresh_s
            if not (poked or due):
                continue
            if not self.alive():
                log.warning("worker_record_not_renewed", extra={"reason": "no progress within metrics.stall_s",
                                                                "stall_s": self.stall_s})
                continue
            self._write()

    def _write(self, *, first: bool = False) -> None:
        try:
            record = self.make_record(self.phase)
            self._worker_id = record.worker.id
            self.queue.announce_worker(record, prune=first)
        except Exception as exc:  # the record only informs: the worker goes on, the next write retries
            log.warning("worker_record_failed", extra={"error": type(exc).__name__, "detail": str(exc)},
                        exc_info=not isinstance(exc, (StoreError, FatalError)))
            return
        self._last_write = self.clock()
        self.writes += 1
