"""Compute on every core: a pool of processes for styles that need no GPU (toon, masks).

A GPU worker computes one item at a time in its own process (the GPU is the bottleneck, and CUDA
does not survive a fork). A CPU-only style is bound by the Python and OpenCV work of one core, so
on a CPU node the worker runs ``run.cpu_workers`` items at once, each in a process of this pool;
the worker's threads still do the fetching, claiming and uploading.

Each process is started (``spawn``: nothing of the parent's threads or locks is inherited) with
``setup``, a picklable callable that builds and sets up the item pipeline once; items then travel
as pickles (a decoded image in, the variants out). An item's failure comes back as the same
``ItemError`` with its hint; a process that dies (out of memory, a crash in native code) fails
only the item it held (``StageFailed``), and the pool is built anew for the next.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from processor.errors import ItemError, StageFailed
from processor.pipeline.item import ItemPipeline, Prepared, Rendered

log = logging.getLogger("processor.worker")

#: Seconds ``start`` waits for the last process to set up once the first has (a model may load).
SETUP_WAIT_S = 600.0

#: The pipeline of this pool process, built by ``_start``.
_pipeline: ItemPipeline | None = None
#: The barrier every process of the pool meets at in ``_ready`` (``ProcessCompute.start``).
_started: Any = None


def _start(setup: Callable[[], ItemPipeline], started: Any) -> None:
    global _pipeline, _started
    _started = started
    # The worker decides when to stop (its first signal finishes the items in hand): a Ctrl-C that
    # reaches the whole process group must not kill the items computing here. A process ends when
    # the worker closes the pool, or when the worker is gone (its end of the pipe closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _pipeline = setup()


def _ready() -> bool:
    """Held until every process of the pool runs it: so each process takes exactly one of
    ``start``'s calls, and ``start`` returns only once all of them have set up."""
    _started.wait(SETUP_WAIT_S)
    return _pipeline is not None


def _compute(prepared: Prepared) -> tuple[Rendered | None, dict[str, float], tuple[type, str, dict[str, Any]] | None]:
    """One item in a pool process: (rendered, timings, None) or (None, timings, the ItemError as
    class, message and attributes (its hint, a StyleUnavailable's styles): exceptions pickle
    without their keyword arguments)."""
    assert _pipeline is not None, "the pool process was not set up"
    timings: dict[str, float] = {}
    try:
        return _pipeline.compute(prepared, timings), timings, None
    except ItemError as exc:
        return None, timings, (type(exc), str(exc), dict(vars(exc)))


class ProcessCompute:
    """``size`` processes that compute items; ``compute`` blocks the calling thread until its item
    is done (the worker calls it from ``size`` compute threads)."""

    def __init__(self, setup: Callable[[], ItemPipeline], size: int) -> None:
        self.setup = setup
        self.size = size
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start every process and wait until each has set up its pipeline (models load once, at
        the worker's start, not on the first items)."""
        executor = self._pool()
        # One call per process: each waits at a barrier for the others, so no process answers two
        # (one that was still starting would otherwise be left unready, e.g. to a Ctrl-C).
        for future in [executor.submit(_ready) for _ in range(self.size)]:
            future.result()
        log.info("compute_processes", extra={"processes": self.size})

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(self.size, mp_context=context, initializer=_start,
                                                     initargs=(self.setup, context.Barrier(self.size)))
            return self._executor

    def compute(self, prepared: Prepared, timings: dict[str, float]) -> Rendered:
        executor = self._pool()
        try:
            rendered, spent, error = executor.submit(_compute, prepared).result()
        except BrokenProcessPool as exc:
            with self._lock:
                if self._executor is executor:
                    self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            log.error("compute_process_died", extra={"detail": str(exc)})
            raise StageFailed(f"the process computing this item died ({exc})") from exc
        timings.update(spent)
        if error is not None:
            cls, message, attributes = error
            failure: Any = cls(message)
            failure.__dict__.update(attributes)
            raise failure
        assert rendered is not None
        return rendered

    def pids(self) -> list[int]:
        """The pool's processes (for tests and logs)."""
        with self._lock:
            processes = getattr(self._executor, "_processes", None) or {}
        return list(processes)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
