"""Cancelling a job through the bucket: the request, the worker's watch on it, and the record.

``<state>/cancel/<path>.json`` (``ItemKeys.cancel``, a ``manifest.CancelRecord``) names one input
version (its ETag: a new upload under the same key is new work, never cancelled by an old request):

- ``BucketJobs.cancel`` (``DELETE /v1/jobs/{id}``) writes it as a request (``status: requested``)
  first, whatever the job's state, so a worker that takes the job at that moment still sees it.
- A queued job is then removed (``remove_queued``): its input (``If-Match`` on the version
  cancelled), its sidecar and the style picture it uploaded, in the reverse of the order
  ``submit.write_job`` wrote them, and the record becomes ``cancelled`` (stage ``queued``). No
  worker can take it any more; the job view answers ``cancelled`` from the record, and a repeat of
  its ``Idempotency-Key`` finds it there. Its pending webhook stays: the sender sends
  ``job.cancelled`` when the webhook's events include it.
- A running job's worker stops at its next step: while an item computes, ``CancelWatch`` reads its
  request every ``claims.progress_s`` on a thread of its own (an engine's progress hook must do no
  I/O, so the hook only reads the flag it sets) and the hook raises ``errors.JobCancelled``. An
  item claimed but not computing yet is stopped by ``BucketQueue.existing_result``, which reads the
  request before the input. The worker then writes the record ``cancelled``, with where it stopped,
  and the ``cancelled`` done marker, so scans skip this version as they skip a done one. The input
  stays: upload it again to run it again.

A request that reaches the worker after an item's last step is too late: the job ends ``done``
(its commit wins; the request, naming an ended version, changes nothing).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

from processor.errors import (
    JobCancelled,
    ObjectNotFound,
    ObjectTooLarge,
    ObjectUnreadable,
    StoreAccessError,
    StoreError,
)
from processor.manifest import CancelRecord, Source, utcnow
from processor.queue.keys import MAX_SIDECAR_BYTES, ItemKeys, KeyLayout, split_extension
from processor.queue.records import read_record
from processor.queue.submit import EXTENSIONS
from processor.store.base import ObjectStore

log = logging.getLogger("processor.cancel")

#: The progress fields a cancel record keeps from the engine's last report.
PROGRESS_FIELDS = ("stage", "round", "rounds", "step", "steps")


def read_cancel(store: ObjectStore, keys: ItemKeys, etag: str | None = None) -> CancelRecord | None:
    """The input's cancel record (capped read); with ``etag``, only one naming that version."""
    try:
        record = read_record(store, keys.cancel, CancelRecord)
    except ObjectUnreadable:
        return None
    if record is None or (etag is not None and record.source.etag != etag):
        return None
    return record


def request_cancel(store: ObjectStore, keys: ItemKeys, *, etag: str, size: int, submitted_at: datetime,
                   by: str | None) -> CancelRecord:
    """Write the request to cancel version ``etag`` of the input (module docstring)."""
    record = CancelRecord(source=Source(key=keys.input, etag=etag, size=size), submitted_at=submitted_at,
                          requested_by=by)
    store.put(keys.cancel, record.to_json_bytes(), content_type="application/json")
    log.info("cancel_requested", extra={"key": keys.input, "etag": etag, "by": by})
    return record


def remove_queued(store: ObjectStore, layout: KeyLayout, keys: ItemKeys, request: CancelRecord) -> CancelRecord:
    """Remove a queued job (module docstring) and record it ``cancelled``. Raises
    ``PreconditionFailed`` when the input was replaced since the request (the new version is new
    work: nothing is removed)."""
    look = _job_style_image(store, layout, keys)
    store.delete(keys.input, if_match=request.source.etag)
    for key in (keys.sidecar, look):
        if key is None:
            continue
        try:
            store.delete(key)
        except (StoreError, StoreAccessError) as exc:  # the job is gone already: a leftover, not a failure
            log.warning("cancel_leftover", extra={"key": key, "error": type(exc).__name__})
    record = request.model_copy(update={"status": "cancelled", "cancelled_at": utcnow(), "stage": "queued"})
    store.put(keys.cancel, record.to_json_bytes(), content_type="application/json")
    log.info("cancelled", extra={"key": keys.input, "etag": request.source.etag, "stage": "queued"})
    return record


def stopped_record(request: CancelRecord | None, source: Source, progress: Mapping[str, object],
                   **fields: object) -> CancelRecord:
    """The record of a job a worker stopped: the request's, with where it stopped."""
    base = request or CancelRecord(source=source)
    kept = {name: progress.get(name) for name in PROGRESS_FIELDS if progress.get(name) is not None}
    return base.model_copy(update={"status": "cancelled", "cancelled_at": utcnow(), **kept, **fields})


def _job_style_image(store: ObjectStore, layout: KeyLayout, keys: ItemKeys) -> str | None:
    """The style picture the job uploaded with its photo (``submit.write_job``'s job-scoped name,
    read from the sidecar), never a shared picture a sidecar names."""
    try:
        body = store.get(keys.sidecar, max_bytes=MAX_SIDECAR_BYTES).body
        named = json.loads(body).get("style_image")
    except (ObjectNotFound, ObjectTooLarge, ObjectUnreadable, ValueError, AttributeError):
        return None
    if not isinstance(named, str):
        return None
    own = layout.prefixes.styles + split_extension(keys.relpath)[0]
    return named if any(named == own + ext for ext in EXTENSIONS.values()) else None


class Watched:
    """One item whose cancel request ``CancelWatch`` reads; its engines' progress hook calls
    ``stop_if_requested`` (no I/O)."""

    def __init__(self, keys: ItemKeys, etag: str, due: float = 0.0) -> None:
        self.keys = keys
        self.etag = etag
        #: The request, once read.
        self.request: CancelRecord | None = None
        #: Monotonic time of this item's next read: one period after its last read (now when it
        #: was never read), then one period after each read.
        self.due = due
        self._seen = threading.Event()

    @property
    def requested(self) -> bool:
        return self._seen.is_set()

    def found(self, request: CancelRecord) -> None:
        self.request = request
        self._seen.set()

    def stop_if_requested(self, progress: Mapping[str, object]) -> None:
        """Raise ``JobCancelled`` (with ``progress``) once the request was read."""
        if self._seen.is_set():
            raise JobCancelled(f"{self.keys.input} was cancelled", progress=dict(progress))


class CancelWatch:
    """Reads the cancel request of each item being computed every ``every_s`` after its own last
    read (the claim's; at once when it starts without one), on a daemon thread of its own, started
    on first use; idle (no request sent) while nothing is watched. Each item keeps its own period,
    so an item that starts never makes the others be read early: the reads are one per item per
    period, however many items compute at once. ``close`` stops the thread."""

    def __init__(self, store: ObjectStore, every_s: float) -> None:
        self.store = store
        self.every_s = every_s
        self._watched: list[Watched] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, keys: ItemKeys, etag: str, *, last_read: float | None = None) -> Iterator[Watched]:
        """Watch ``keys``' request while in the context. ``last_read``: monotonic time of a read made
        before (the claim's), which the first read comes one period after; without it, at once."""
        watched = Watched(keys, etag, due=0.0 if last_read is None else last_read + self.every_s)
        with self._changed:
            if self._closed:
                raise RuntimeError("the cancel watch is closed")
            self._watched.append(watched)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cancel-watch", daemon=True)
                self._thread.start()
            self._changed.notify()  # its first read now, not a period later
        try:
            yield watched
        finally:
            with self._changed:
                self._watched.remove(watched)

    def close(self) -> None:
        """Stop the thread (a watch in progress ends with it); idempotent."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                now = time.monotonic()
                pending = [w for w in self._watched if not w.requested]
                due = [w for w in pending if w.due <= now]
                if not due:
                    next_due = min((w.due for w in pending), default=None)
                    self._changed.wait(None if next_due is None else next_due - now)
                    continue
                for w in due:
                    w.due = now + self.every_s
            for w in due:  # outside the lock: a read may take a while, and watching() must not wait
                self.check(w)

    def check(self, watched: Watched) -> None:
        """One read of ``watched``'s request; a store that fails is asked again next period."""
        try:
            request = read_cancel(self.store, watched.keys, watched.etag)
        except (StoreError, StoreAccessError) as exc:
            log.debug("cancel_check_failed", extra={"key": watched.keys.input, "error": type(exc).__name__})
            return
        except Exception as exc:  # noqa: BLE001 - the watch must outlive any one read
            log.warning("cancel_check_failed", extra={"key": watched.keys.input, "error": type(exc).__name__,
                                                      "detail": str(exc)})
            return
        if request is not None:
            watched.found(request)
