"""The rescan hint: a tiny object that tells running daemons what their next scan must look at.

Between full scans a daemon lists only the inputs after its high-water mark (``scan.py``), so an
input that becomes pending under a key sorting before the mark (requeued by ``processor retry``,
re-uploaded under an old key by ``processor submit``, uploaded by the API under a client's folder)
would wait for the next full scan: ``run.full_rescan_s`` (300 s by default). The writers that cause
that write ``<state>/rescan.json`` (``KeyLayout.rescan_hint``) after their own writes; each daemon
HEADs it on every scan (one request, no body) and, when its ETag or Last-Modified differs from what
it read before, GETs it once and decides:

- **Keyed** (``ArrivalHints``: the API, one writer per process): the hint names the writer, its
  sequence number and its latest ``MAX_HINT_ARRIVALS`` arrivals (sequence number and input key). A
  daemon that read this writer's hint before, and finds every arrival since then in the list,
  lists just those keys (``IncrementalScanner``'s targeted scan: a few requests, whatever the bucket
  holds). A submit through the API no longer costs every daemon a listing of the whole bucket.
- **Full** (anything else: ``request_rescan`` by ``processor retry`` and ``processor submit``, a
  writer the daemon has not read before, a gap the list does not cover, a body it cannot parse):
  the next scan is a full one.

Why "same writer" is the condition: writers overwrite one object. A second writer's version may
have replaced the first's before a daemon read it, and the second cannot know the first's keys;
only a daemon that sees one writer's versions in sequence knows it missed nothing.

Why a HEAD and not a notification service: it needs nothing but the bucket every worker already
reads, works the same on every store adapter, and costs one request a scan (one more, a GET, per
version). The body's ``requested_at``, ``by`` and ``count`` are for people reading the bucket.

Ordering, so that no request is missed: a writer puts the hint *after* its own writes (failure
records, deleted done markers, uploads), and a scan HEADs and GETs the hint *before* its listings.
A hint a scan read was therefore written after the changes it announces; a hint written later
differs from it and is read by the next scan. A keyed writer's puts never overlap (one thread
makes them), so the object's last version is its newest, carrying every earlier arrival; a daemon
that still reads an older version (a store that landed a retried put late) skips it.

Errors: a store error while reading the hint is logged and the scan goes on as scheduled (the hint
only makes things sooner, never correct); a store error while writing it is logged, and the caller
says that daemons will find the change at their next scheduled full scan.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime

from processor.errors import ObjectNotFound, ObjectTooLarge, StoreAccessError, StoreError
from processor.manifest import utcnow
from processor.queue.keys import KeyLayout
from processor.store.base import ObjectStore

log = logging.getLogger("processor.rescan")

#: What a daemon compares: (ETag, Last-Modified) of the hint object; ``ABSENT`` when there is none.
HintVersion = tuple[str, str]
ABSENT: HintVersion = ("", "")
#: Arrivals a keyed hint carries (its writer's latest): a daemon that missed more versions of it
#: than this between two scans makes a full scan instead.
MAX_HINT_ARRIVALS = 64
#: A hint body larger than this is not read (a keyed one is a few KB): the scan is a full one.
MAX_HINT_BYTES = 64 * 1024


@dataclass(frozen=True)
class RescanRequest:
    """The hint's body (informational: daemons only compare the object's version)."""

    requested_at: str
    #: The command that asked: "retry" or "submit".
    by: str
    #: Inputs it requeued or uploaded.
    count: int
    #: A keyed hint's writer (random, one per writing process) and this version's sequence number
    #: there; empty and 0 for a request of a full scan.
    writer: str = ""
    seq: int = 0
    #: A keyed hint's latest arrivals, ``[seq, input key]`` pairs, this version's included.
    arrivals: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class HintRead:
    """One version of the hint as a scan read it: the version, and what it announces."""

    version: HintVersion
    #: The keyed writer and sequence number, or None when the hint asks for a full scan.
    writer: str | None = None
    seq: int = 0
    #: seq -> input key, of a keyed hint.
    arrivals: dict[int, str] = field(default_factory=dict)

    def older_than(self, other: HintRead | None) -> bool:
        """Whether this is an earlier version of ``other``'s keyed writer (a put that landed late)."""
        return other is not None and self.writer is not None and self.writer == other.writer and self.seq < other.seq

    def keys_since(self, earlier: HintRead | None) -> list[str] | None:
        """The input keys this version announces beyond ``earlier`` (a version read before), or
        None when only a full scan is safe: no keyed writer here or there, another writer, or
        arrivals this version no longer lists. An out-of-order older version announces nothing."""
        if self.writer is None or earlier is None or earlier.writer != self.writer:
            return None
        if self.seq <= earlier.seq:
            return []
        missing = [n for n in range(earlier.seq + 1, self.seq + 1) if n not in self.arrivals]
        if missing:
            return None
        return [self.arrivals[n] for n in range(earlier.seq + 1, self.seq + 1)]


class ArrivalHints:
    """The keyed hint writer of one process (the API): ``announce(key)`` after each upload.

    One thread of its own writes the hint (started on first use): puts never overlap, so the
    object's last version is always the newest (two request threads putting at once could land
    out of order, and a late older body would hide the newest key), and announcements that arrive
    while a put is in flight are written together by the next one (a busy API writes the hint
    less often than it takes uploads). ``announce`` does not wait for the put; a hint lost with the
    process costs daemons latency, never an input. ``flush`` waits for what was announced."""

    def __init__(self, store: ObjectStore, layout: KeyLayout, *, by: str = "api") -> None:
        self.store = store
        self.layout = layout
        self.by = by
        self.writer = secrets.token_hex(8)
        self._changed = threading.Condition()
        self._seq = 0
        self._recent: deque[tuple[int, str]] = deque(maxlen=MAX_HINT_ARRIVALS)
        #: The sequence number the last finished put carried (refused or not).
        self._written = 0
        #: Bumped by ``close``: a thread of an earlier generation stops (never two writing at once).
        self._generation = 0
        self._thread: threading.Thread | None = None
        #: Puts made so far (for tests and the benchmark).
        self.puts = 0

    def announce(self, key: str) -> None:
        """Name ``key``, an input just created under a new name, in the hint (written soon, on the
        writer's thread; a daemon that has listed the key already does not list it again)."""
        with self._changed:
            self._seq += 1
            self._recent.append((self._seq, key))
            if self._thread is None:  # first use, or after close (an app started again)
                self._thread = threading.Thread(target=self._run, args=(self._generation,), name="arrival-hints",
                                                daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every announcement so far is in a finished put; False on timeout."""
        with self._changed:
            target = self._seq
            return self._changed.wait_for(lambda: self._written >= target or self._thread is None, timeout_s)

    def close(self) -> None:
        """Write what is announced, then stop the thread (a later ``announce`` starts another)."""
        self.flush(timeout_s=10)
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self, generation: int) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._seq > self._written or self._generation != generation)
                if self._generation != generation:
                    return  # closed (close flushed first)
                body = RescanRequest(requested_at=utcnow().isoformat(), by=self.by, count=len(self._recent),
                                     writer=self.writer, seq=self._seq, arrivals=list(self._recent))
            _put_hint(self.store, self.layout, body, quiet=True)
            with self._changed:
                self.puts += 1
                self._written = body.seq
                self._changed.notify_all()


def request_rescan(store: ObjectStore, layout: KeyLayout, *, by: str, count: int,
                   now: datetime | None = None) -> bool:
    """Write the hint so that every running daemon's next scan is a full one. Call it after the
    writes it announces. Returns False (and logs) when the store refused it."""
    body = RescanRequest(requested_at=(now or utcnow()).isoformat(), by=by, count=count)
    return _put_hint(store, layout, body)


def _put_hint(store: ObjectStore, layout: KeyLayout, body: RescanRequest, *, quiet: bool = False) -> bool:
    try:
        store.put(layout.rescan_hint, json.dumps(asdict(body)).encode(), content_type="application/json")
    except (StoreError, StoreAccessError) as exc:
        log.warning("rescan_request_failed", extra={"key": layout.rescan_hint, "error": type(exc).__name__,
                                                    "detail": str(exc)})
        return False
    # One line per upload would double the API's log: the keyed writer logs at debug.
    log.log(logging.DEBUG if quiet else logging.INFO, "rescan_requested",
            extra={"key": layout.rescan_hint, "by": body.by, "count": body.count, "seq": body.seq})
    return True


def read_hint_version(store: ObjectStore, layout: KeyLayout) -> HintVersion | None:
    """The hint's current version (one HEAD): ``ABSENT`` when there is no hint, None when the store
    could not tell (logged; the caller keeps to its schedule)."""
    try:
        info = store.head(layout.rescan_hint)
    except ObjectNotFound:
        return ABSENT
    except (StoreError, StoreAccessError) as exc:
        log.warning("rescan_hint_unreadable", extra={"key": layout.rescan_hint, "error": type(exc).__name__,
                                                     "detail": str(exc)})
        return None
    return info.etag, info.last_modified.isoformat()


def read_hint(store: ObjectStore, layout: KeyLayout) -> HintRead | None:
    """The hint's current version and what it announces (one GET): a full-scan request when the
    body is not a keyed hint; ``ABSENT`` when there is none; None when the store could not tell
    (logged; the caller keeps to its schedule)."""
    try:
        obj = store.get(layout.rescan_hint, max_bytes=MAX_HINT_BYTES)
    except ObjectNotFound:
        return HintRead(ABSENT)
    except ObjectTooLarge:
        return HintRead(read_hint_version(store, layout) or ABSENT)
    except (StoreError, StoreAccessError) as exc:
        log.warning("rescan_hint_unreadable", extra={"key": layout.rescan_hint, "error": type(exc).__name__,
                                                     "detail": str(exc)})
        return None
    version = (obj.info.etag, obj.info.last_modified.isoformat())
    try:
        body = json.loads(obj.body)
        writer, seq = body["writer"], body["seq"]
        arrivals = {int(n): str(key) for n, key in body["arrivals"]}
    except (ValueError, TypeError, KeyError):
        return HintRead(version)  # an older writer's, or no hint we know: a full scan
    if not isinstance(writer, str) or not writer or not isinstance(seq, int) or seq not in arrivals:
        return HintRead(version)
    return HintRead(version, writer=writer, seq=seq, arrivals=arrivals)
