"""``processor retry``: requeue failed inputs so that the next worker pass processes them again.

After a bad deploy or a broken GPU has left final failure records behind (``StageFailed`` with
the retry budget spent), or after raising a limit that made inputs fail (``--all``), an operator
requeues them instead of re-uploading photos.

How it finds them: LIST calls over ``failed/`` and the done markers (1000 keys a call, narrowed
by ``--prefix``), and one GET per failure record listed (its error class, whether it is
permanent, the input version it is about). Never a request per input.

How it requeues one input, in this order (safe while workers run):

1. rewrite its failure record with ``final: false``, ``attempts: 0`` and ``requeued_at``, with
   ``If-Match`` on the ETag just read: a record a worker rewrote meanwhile is left alone (reported
   as changed). A worker that now finds this record treats the input as retryable, with a new
   budget of ``run.max_attempts`` attempts, instead of marking it failed again;
2. delete its ``failed`` done marker, so the next scan offers the input again.

When at least one input was requeued, it then writes the rescan hint (``processor.queue.rescan``), so
that running daemons make their next scan a full one: a requeued input sorts anywhere, usually
before a daemon's high-water mark, where incremental scans do not look.

The error, message and hint stay in the record until the input succeeds (the success deletes
it) or fails again (the new failure replaces it). Nothing under ``outputs/`` is touched.

Left open: a worker that finalises the same input version in the instant between steps 1 and 2
(its record put, then its marker put) can leave the marker behind; running ``retry`` again
requeues it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from processor import errors as error_module
from processor.errors import ConfigError, ItemError, ObjectNotFound, ObjectTooLarge, PreconditionFailed
from processor.manifest import MAX_RECORD_BYTES, FailureRecord, utcnow
from processor.queue.keys import CUT_HASH_CHARS, CUT_MARK, MAX_PATH_BYTES, KeyLayout, record_path, safe_path
from processor.queue.outcomes import Outcome
from processor.queue.rescan import request_rescan
from processor.store.base import ObjectStore

log = logging.getLogger("processor.requeue")


@dataclass(frozen=True)
class Failure:
    """One failure record that matched the filters."""

    record_key: str
    #: The record object's ETag when it was read (the condition of its rewrite).
    record_etag: str
    record: FailureRecord
    #: Whether the listing found the ``failed`` done marker of the record's input version.
    marked: bool

    @property
    def input(self) -> str:
        return self.record.source.key


@dataclass
class Selection:
    """The failure records ``find_failures`` matched, and what it left out."""

    failures: list[Failure] = field(default_factory=list)
    #: Records listed under the prefix.
    listed: int = 0
    #: Permanent failures left out (no ``--all``).
    permanent_skipped: int = 0
    #: Records that could not be parsed (not written by this processor, or a newer schema).
    unreadable: list[str] = field(default_factory=list)


@dataclass
class RequeueResult:
    """What ``requeue`` did: inputs requeued, records that changed meanwhile, the rescan hint."""

    requeued: list[Failure] = field(default_factory=list)
    #: Records a worker rewrote between our read and our rewrite (their input is being worked on).
    changed: list[Failure] = field(default_factory=list)
    #: Whether the rescan hint was written (False when nothing was requeued or the store refused).
    rescan_requested: bool = False


def error_classes(names: Iterable[str]) -> frozenset[str] | None:
    """The record ``error`` values that ``--error NAME`` matches: the class and its subclasses
    (``InvalidInput`` matches ``CorruptImage``). None when no filter was given."""
    names = list(names)
    if not names:
        return None
    known = {name: obj for name, obj in vars(error_module).items()
             if isinstance(obj, type) and issubclass(obj, ItemError)}
    matched: set[str] = set()
    for name in names:
        cls = known.get(name)
        if cls is None:
            raise ConfigError(f"--error {name}: not an item error class; known: {', '.join(sorted(known))}")
        matched |= {n for n, c in known.items() if issubclass(c, cls)}
    return frozenset(matched)


def _listing_prefix(prefix: str) -> str:
    """The safe form of the complete folders of ``prefix`` (a path under ``inputs/``), so the LIST
    calls stop at that folder; the partial last segment is matched on the record's input key."""
    folder, slash, _partial = prefix.rpartition("/")
    if not (slash and folder):
        return ""
    safe = safe_path(folder)
    # A path that long is cut where it ends (keys.py): the keys below it need not start with it.
    if len(safe.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES - len(CUT_MARK) - CUT_HASH_CHARS:
        return ""
    return safe + "/"


def find_failures(
    store: ObjectStore,
    layout: KeyLayout,
    *,
    include_permanent: bool = False,
    prefix: str = "",
    errors: frozenset[str] | None = None,
) -> Selection:
    """Failure records under ``prefix`` (a path under the inputs prefix, like an S3 prefix) that
    match the filters: non-permanent ones, or every one with ``include_permanent``."""
    inputs = layout.prefixes.inputs
    if prefix.startswith(inputs):
        prefix = prefix[len(inputs):]
    narrowed = _listing_prefix(prefix)
    markers = {obj.key for obj in store.list(layout.done_prefix + narrowed)}
    selection = Selection()
    # Record keys escape folder names ending in ".json" (keys.record_path); markers do not.
    for obj in store.list(layout.prefixes.failed + record_path(narrowed)):
        selection.listed += 1
        try:
            found = store.get(obj.key, max_bytes=MAX_RECORD_BYTES)
        except ObjectNotFound:
            continue  # the input succeeded meanwhile and its record was deleted
        except ObjectTooLarge:
            selection.unreadable.append(obj.key)  # not a record of ours; never downloaded
            continue
        try:
            record = FailureRecord.model_validate_json(found.body)
        except ValidationError:
            selection.unreadable.append(obj.key)
            continue
        if not record.source.key.startswith(inputs + prefix):
            continue
        if errors is not None and record.error not in errors:
            continue
        if record.permanent and not include_permanent:
            selection.permanent_skipped += 1
            continue
        try:
            keys = layout.for_input(record.source.key)
        except ValueError:
            selection.unreadable.append(obj.key)  # names an input outside inputs/
            continue
        marker = keys.done_marker(record.source.etag, Outcome.FAILED)
        selection.failures.append(Failure(obj.key, found.info.etag, record, marked=marker in markers))
    return selection


def requeue(store: ObjectStore, layout: KeyLayout, failures: Iterable[Failure],
            now: datetime | None = None) -> RequeueResult:
    """Requeue each failure (module docstring: record first, then the done marker)."""
    now = now or utcnow()
    result = RequeueResult()
    for failure in failures:
        record = failure.record.model_copy(update={"final": False, "attempts": 0, "requeued_at": now})
        try:
            store.put(failure.record_key, record.to_json_bytes(), content_type="application/json",
                      if_match=failure.record_etag)
        except PreconditionFailed:
            log.warning("requeue_skipped", extra={"key": failure.input, "reason": "failure record changed"})
            result.changed.append(failure)
            continue
        # A final record has its marker, even one the listing missed (written just after it).
        if failure.marked or failure.record.final:
            keys = layout.for_input(failure.input)
            store.delete(keys.done_marker(failure.record.source.etag, Outcome.FAILED))
        log.info("requeued", extra={"key": failure.input, "error": failure.record.error,
                                    "attempts": failure.record.attempts})
        result.requeued.append(failure)
    if result.requeued:  # after every record and marker: a daemon that sees the hint sees them
        result.rescan_requested = request_rescan(store, layout, by="retry", count=len(result.requeued), now=now)
    return result
