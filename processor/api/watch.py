"""How the API learns that a job moved: one watcher per replica, shared by every waiting request and
event stream, instead of each of them re-reading the job's state on a timer.

A job moves when a worker writes its claim (taken, progress, released) or its done marker (the
commit or the final failure: ``processor.queue.keys``). ``JobWatch`` watches exactly those keys for
the jobs someone waits on, and wakes their waiters; the waiters then read the job's state once.

- On the local store, the OS tells it (``watchdog`` on ``<state>/claims/`` and ``<state>/done/``):
  no request at all. (A folder shared over a network file system may not report another host's
  writes: there the waiters' own ``RESYNC_S`` is the bound.)
- On S3 and COS, one thread probes each watched job every ``api.poll_s``: a HEAD of its claim and
  a LIST of its done markers (two requests, where a state read takes up to five), however many
  streams watch that job.

Each watched job has a generation, counted up at every change seen. A waiter takes the generation
*before* it reads the state and then waits for a later one, so a change that lands between its
read and its wait still wakes it. A change the watcher misses (a probe that failed, an event the OS
dropped) costs latency only: waiters give up after their own timeout and read the state anyway
(``RESYNC_S``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.errors import ObjectNotFound, StoreAccessError, StoreError
from processor.queue.jobs import UnknownJob
from processor.queue.keys import ItemKeys
from processor.queue.protocol import BucketQueue

log = logging.getLogger("processor.api")

#: Seconds a waiter waits for the watcher before it reads the job's state anyway.
RESYNC_S = 15.0
#: Seconds a job stays watched after its last waiter left (a stream's next wait finds its version).
LINGER_S = 30.0
#: Jobs watched at once; past this a request's wait falls back to reading the state every RESYNC_S
#: (each id a client names costs memory, and on S3 a probe every poll_s while it is waited on).
MAX_WATCHED_JOBS = 10_000

#: watchdog's events for a file opened or closed without a write: reading a claim (as every state
#: read does) must not wake its waiters, or each read would cause the next.
READ_ONLY_EVENTS = frozenset({"opened", "closed_no_write"})

#: A job's version as the probe sees it: the claim's ETag ("" without one) and its done markers.
Version = tuple[str, tuple[str, ...]]


@dataclass
class _Watched:
    keys: ItemKeys
    version: Version | None = None
    #: Changes seen so far.
    generation: int = 0
    #: Someone waited on it: only then is it probed (an id a client merely named is not).
    waited: bool = False
    waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)
    #: Monotonic seconds of the last use (the job is forgotten LINGER_S after, without waiters).
    used_at: float = field(default_factory=time.monotonic)


class JobWatch:
    """Wakes the waiters of a job when its claim or done markers change. Starts on first use;
    ``close`` stops it. ``local_root``: the local store's folder (OS events, no polling)."""

    def __init__(self, queue: BucketQueue, poll_s: float, *, local_root: Path | None = None) -> None:
        self.queue = queue
        self.poll_s = poll_s
        self.local_root = local_root
        self._jobs: dict[str, _Watched] = {}
        #: A watched job's claim key and done-marker folder -> the jobs watching it: an OS event
        #: finds its jobs at once, however many are watched (a job lingers LINGER_S after its wait).
        self._by_key: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._started = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        #: Probes sent (two requests each), for tests and the benchmark.
        self.probes = 0

    def generation(self, job: str) -> int:
        """The job's generation now; watching starts here. Take it before reading the job's state.
        ``UnknownJob`` for an id that names no key."""
        keys = self.queue.keys_of(job)
        self._start()
        with self._lock:
            watched = self._jobs.get(job)
            if watched is None:
                if len(self._jobs) >= MAX_WATCHED_JOBS:
                    return 0  # not watched: ``changed`` only times out
                watched = self._jobs[job] = _Watched(keys)
                for key in (keys.claim, keys.done_prefix):
                    self._by_key.setdefault(key, set()).add(job)
            watched.used_at = time.monotonic()
            return watched.generation

    async def changed(self, job: str, since: int, timeout_s: float) -> int:
        """The job's generation once it is past ``since``, or after ``timeout_s`` (then it may still
        be ``since``)."""
        event, loop = asyncio.Event(), asyncio.get_running_loop()
        with self._lock:
            watched = self._jobs.get(job)
            if watched is None:  # never taken, forgotten, or past MAX_WATCHED_JOBS
                await asyncio.sleep(timeout_s)
                return since
            if watched.generation != since:
                return watched.generation
            watched.waited = True
            watched.waiters.add((loop, event))
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        with self._lock:
            watched.waiters.discard((loop, event))
            watched.used_at = time.monotonic()
            return watched.generation

    def _wake(self, watched: _Watched) -> None:
        """Count a change and wake the job's waiters (called with ``_lock`` held)."""
        watched.generation += 1
        for loop, event in list(watched.waiters):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # that waiter's loop has closed: nobody to wake

    # ------------------------------------------------------------------ sources

    def _start(self) -> None:
        with self._lock:
            if self._started or self._closed.is_set():
                return
            self._started = True
        if self.local_root is not None:
            self._watch_folder(self.local_root)
        self._thread = threading.Thread(target=self._run, name="job-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Forgets jobs nobody waits on; without OS events, probes the watched ones."""
        while not self._closed.wait(self.poll_s):
            now = time.monotonic()
            with self._lock:
                for job in [j for j, w in self._jobs.items() if not w.waiters and now - w.used_at > LINGER_S]:
                    self._forget(job)
                watched = list(self._jobs.values())
            if self._observer is None:
                for entry in watched:
                    if entry.waited:
                        self._probe(entry)

    def _probe(self, watched: _Watched) -> None:
        store, keys = self.queue.store, watched.keys
        try:
            try:
                claim = store.head(keys.claim).etag
            except ObjectNotFound:
                claim = ""
            markers = tuple(sorted(o.key for o in store.list(keys.done_prefix)))
        except (StoreError, StoreAccessError, UnknownJob) as exc:
            log.debug("job_watch_probe_failed", extra={"key": keys.input, "error": type(exc).__name__})
            return
        self.probes += 1
        version = (claim, markers)
        with self._lock:
            # The first probe counts as a change too: the job may have moved since its waiter read it.
            if version != watched.version:
                watched.version = version
                self._wake(watched)

    def _watch_folder(self, root: Path) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        layout = self.queue.layout
        state = root / layout.prefixes.state
        state.mkdir(parents=True, exist_ok=True)
        watch = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in READ_ONLY_EVENTS:
                    return  # a read (the waiters' own state reads among them) changes nothing
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path:
                        watch._seen(os.path.relpath(os.fsdecode(path), root).replace(os.sep, "/"))

        self._observer = Observer()
        self._observer.schedule(Handler(), str(state), recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def _seen(self, key: str) -> None:
        """A key under the state prefix changed: wake the jobs it is the claim or a done marker of
        (a done marker is ``<done_prefix><etag>.<outcome>``: its folder is the job's prefix)."""
        with self._lock:
            jobs = self._by_key.get(key, set()) | self._by_key.get(key[: key.rfind("/") + 1], set())
            for job in jobs:
                self._wake(self._jobs[job])

    def _forget(self, job: str) -> None:
        """Stop watching ``job`` (called with ``_lock`` held)."""
        watched = self._jobs.pop(job)
        for key in (watched.keys.claim, watched.keys.done_prefix):
            jobs = self._by_key.get(key, set())
            jobs.discard(job)
            if not jobs:
                self._by_key.pop(key, None)

    def close(self) -> None:
        self._closed.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
