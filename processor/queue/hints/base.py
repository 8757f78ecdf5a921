"""Hints: signals that new work may be in the bucket, so a waiting worker scans now.

A hint never decides anything: the scan and the claims do. A lost hint costs latency (the worker
finds the input at its next scheduled scan), a duplicated one costs one scan. So hint sources are
free to drop, repeat or over-report; the only thing they must not do is block the worker.

``Wakeup`` is where the sources leave hints and where the worker waits for them (threads on both
sides). A hint names the key prefixes it is about when its source knows them (a file watcher, a
bucket notification): the worker then lists just those. A hint without prefixes (the rescan hint
object changed) asks for an ordinary scan, which the rescan hint makes a full one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

#: Prefixes one hint may name; past this a hint asks for an ordinary scan instead (one listing of
#: the whole inputs prefix is cheaper than hundreds of small ones).
MAX_HINT_PREFIXES = 64
#: Seconds between checks of the stop flag while a worker waits for a hint.
STOP_CHECK_S = 0.2


@dataclass(frozen=True)
class Hint:
    """What arrived since the worker last looked: which sources spoke and about which prefixes."""

    sources: frozenset[str]
    #: Key prefixes that changed (an input key, an input's stem + ".", a folder + "/"); empty
    #: with ``anywhere``.
    prefixes: frozenset[str]
    #: Some source could not say where (or named too many prefixes): scan as usual.
    anywhere: bool
    #: Monotonic seconds of the first signal merged into this hint (for the wake-to-claim log).
    since: float


class Wakeup:
    """A mailbox of hints. Sources call ``notify`` from their own threads; the worker calls ``wait``
    (blocking, with a timeout) or ``take`` (not blocking). Signals that arrive before the worker
    looks are merged into one hint."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._sources: set[str] = set()
        self._prefixes: set[str] = set()
        self._anywhere = False
        self._since: float | None = None

    def notify(self, source: str, prefixes: Iterable[str] | None = None) -> None:
        """Something changed under ``prefixes`` (None: somewhere)."""
        with self._lock:
            self._sources.add(source)
            if prefixes is None:
                self._anywhere = True
            else:
                self._prefixes.update(prefixes)
                if len(self._prefixes) > MAX_HINT_PREFIXES:
                    self._anywhere = True
            if self._since is None:
                self._since = self._clock()
            self._arrived.set()

    def take(self) -> Hint | None:
        """The hint gathered so far (and forget it), or None when nothing arrived."""
        with self._lock:
            if self._since is None:
                return None
            hint = Hint(sources=frozenset(self._sources),
                        prefixes=frozenset() if self._anywhere else frozenset(self._prefixes),
                        anywhere=self._anywhere, since=self._since)
            self._sources, self._prefixes, self._anywhere, self._since = set(), set(), False, None
            self._arrived.clear()
            return hint

    def wait(self, timeout_s: float, stop: threading.Event | None = None) -> Hint | None:
        """Block until a hint arrives (returned and forgotten), ``timeout_s`` pass or ``stop`` is set
        (both: None)."""
        deadline = self._clock() + timeout_s
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return self.take()
            if self._arrived.wait(min(remaining, STOP_CHECK_S) if stop is not None else remaining):
                return self.take()


class HintSource(Protocol):
    """One way of learning that inputs arrived. ``start`` begins delivering to ``wakeup`` (on the
    source's own thread; it never raises for a lost connection, it logs and retries); ``close``
    stops it. Sources are context managers, like the stores."""

    #: The source's name in ``run.hints`` and in log lines.
    name: str

    def start(self, wakeup: Wakeup) -> None: ...

    def close(self) -> None: ...


def listing_prefix(key: str, *, folder: bool = False) -> str:
    """What to list to find the input that ``key`` names: a folder's keys, or every key that shares
    a file's stem (the photo and its sidecar, ``a.jpg`` and ``a.json``)."""
    if folder:
        return key.rstrip("/") + "/"
    head, slash, name = key.rpartition("/")
    stem, dot, _ext = name.rpartition(".")
    return f"{head}{slash}{stem}." if dot and stem else key
