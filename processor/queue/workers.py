"""Which workers are running, and which styles each can run: one capabilities record per live worker.

A worker writes ``<state>/workers/<worker id>.json`` (``WorkerRecord``) when it starts, rewrites it
at most every ``WORKER_RECORD_REFRESH_S`` while it makes progress (``processor.worker.presence``),
and deletes it on a clean exit. A worker that died or hangs stops rewriting it, and its record
ages out: a record counts as live while its age on the *server's* clock (the response ``Date``
minus its ``Last-Modified``, as claims are judged) is below the TTL it carries, capped at
``WORKER_RECORD_MAX_TTL_S``.

The API reads them (``read_roster``) to offer only the styles some live worker can run, to warn
when no worker runs, and for ``/readyz``. Reads are bounded like every record read: at most
``MAX_WORKER_RECORDS`` records (the newest by listing), each with a byte cap; one that does not
parse counts as unreadable, never trusted. Records of workers dead for longer than
``STALE_RECORD_S`` are deleted by the next worker to start (``prune_stale``), a bounded number at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from itertools import islice
from typing import Final, Literal

from pydantic import Field, ValidationError

from processor.errors import ObjectNotFound, ObjectTooLarge, StoreError
from processor.manifest import WorkerInfo, _Model, utcnow
from processor.queue.keys import KeyLayout, safe_segment
from processor.store.base import ObjectInfo, ObjectStore

log = logging.getLogger("processor.workers")

WORKER_SCHEMA: Final = "toy-cartoonizer/worker/v1"
#: Seconds: a worker rewrites its record at most this often (and at least this often while it makes progress).
WORKER_RECORD_REFRESH_S = 30.0
#: Seconds a record stays live without a rewrite: three refreshes, so one slow write does not drop a worker.
WORKER_RECORD_TTL_S = 3 * WORKER_RECORD_REFRESH_S
#: Seconds: the longest TTL believed from any record (a garbage or hostile one counts as this).
WORKER_RECORD_MAX_TTL_S = 3600.0
#: Bytes: the most of one record anyone reads (a record with 500 styles is about 100 KB).
MAX_WORKER_RECORD_BYTES = 256 * 1024
#: Records read at most per roster (the newest first): the workers a fleet runs at once, with room.
MAX_WORKER_RECORDS = 200
#: Keys listed at most per roster (five LIST calls): a prefix fuller than this is not ours alone.
MAX_LISTED_RECORDS = 5000
#: Seconds after which a record that was not rewritten is deleted by the next worker to start.
STALE_RECORD_S = 24 * 3600.0
#: Records one worker deletes at most when it starts (the rest wait for the next one).
MAX_PRUNED = 100
#: Seconds of resolution of HTTP dates (as ``claims.CLOCK_RESOLUTION_S``).
CLOCK_RESOLUTION_S = 1.0


class StyleState(str, Enum):
    """What a worker knows of one configured style."""

    #: One of its own styles (``run.styles``), loaded at start.
    READY = "ready"
    #: Being loaded now (the worker is starting).
    LOADING = "loading"
    #: Not loaded yet, and nothing it needs is missing here: it loads when an input asks for it.
    LOADABLE = "loadable"
    #: It cannot load here; ``reason`` says why (an extra, a model, the captioner).
    UNAVAILABLE = "unavailable"

    @property
    def runnable(self) -> bool:
        return self is not StyleState.UNAVAILABLE


class StyleCapability(_Model):
    """One configured style on one worker."""

    name: str
    state: StyleState
    #: Why it is unavailable (one line), or what loading it will take ("downloads ... on first use").
    reason: str | None = None


class WorkerRecord(_Model):
    """``<state>/workers/<id>.json``: one running worker, what it runs and what it can run."""

    schema_: Literal["toy-cartoonizer/worker/v1"] = Field(default=WORKER_SCHEMA, alias="schema")
    worker: WorkerInfo
    #: ``starting`` (loading its styles), ``ready`` (taking work), ``stopping`` (draining).
    phase: Literal["starting", "ready", "stopping"] = "starting"
    started_at: datetime = Field(default_factory=utcnow)
    #: When it wrote this version, on its own clock (liveness is judged on the store's).
    written_at: datetime = Field(default_factory=utcnow)
    #: Seconds this record stays live without a rewrite.
    ttl_s: float = WORKER_RECORD_TTL_S
    #: The styles every input gets (its ``run.styles``, or ``--style``).
    run_styles: list[str] = Field(default_factory=list)
    #: Every style in its configuration, in order.
    styles: list[StyleCapability] = Field(default_factory=list)
    #: The optional extras installed where it runs (``sd``, ``api``, ``otel``, ``cos``).
    extras: list[str] = Field(default_factory=list)

    def style(self, name: str) -> StyleCapability | None:
        return next((s for s in self.styles if s.name == name), None)


@dataclass(frozen=True)
class LiveWorker:
    """A record judged live, and its age on the store's clock."""

    record: WorkerRecord
    age_s: float


@dataclass(frozen=True)
class StyleAvailability:
    """What the live workers say of one style name."""

    name: str
    #: Live workers that run it (ready, loading or loadable there).
    workers: list[str] = field(default_factory=list)
    #: ``worker id: reason`` for each live worker that cannot.
    reasons: list[str] = field(default_factory=list)

    @property
    def runnable(self) -> bool:
        return bool(self.workers)

    def why_not(self) -> str:
        """One line for a style no live worker runs."""
        if self.reasons:
            more = f" (and {len(self.reasons) - 1} more)" if len(self.reasons) > 1 else ""
            return f"no running worker can load it: {self.reasons[0]}{more}"
        return "no running worker has it in its configuration"


@dataclass(frozen=True)
class Roster:
    """The live workers, as far as the bounded read saw them."""

    live: list[LiveWorker] = field(default_factory=list)
    #: Records found but not live (aged out: dead or hung workers).
    stale: int = 0
    #: Records that are not ours (do not parse, too large).
    unreadable: int = 0
    #: More records were listed than were read (``MAX_WORKER_RECORDS``).
    truncated: bool = False

    @property
    def any_live(self) -> bool:
        return bool(self.live)

    def availability(self, name: str) -> StyleAvailability:
        workers, reasons = [], []
        for w in self.live:
            cap = w.record.style(name)
            if cap is None:
                continue
            if cap.state.runnable:
                workers.append(w.record.worker.id)
            else:
                reasons.append(f"{w.record.worker.id}: {cap.reason or 'unavailable'}")
        return StyleAvailability(name, workers, reasons)


def record_key(layout: KeyLayout, worker_id: str) -> str:
    return f"{layout.workers_prefix}{safe_segment(worker_id)}.json"


def write_record(store: ObjectStore, layout: KeyLayout, record: WorkerRecord) -> ObjectInfo:
    """Put the worker's record (unconditionally: only that worker writes its key); its info."""
    key = record_key(layout, record.worker.id)
    return store.put(key, record.to_json_bytes(), content_type="application/json")


def remove_record(store: ObjectStore, layout: KeyLayout, worker_id: str) -> None:
    store.delete(record_key(layout, worker_id))


def judge_record(body: bytes, info: ObjectInfo) -> tuple[WorkerRecord | None, float, bool]:
    """(the record or None when it is not one of ours, its age in seconds on the store's clock,
    whether it is live). A record's TTL is its own, at most ``WORKER_RECORD_MAX_TTL_S``."""
    server_now = info.server_time or datetime.now(timezone.utc)
    age = (server_now - info.last_modified).total_seconds()
    try:
        record: WorkerRecord | None = WorkerRecord.model_validate_json(body)
    except ValidationError:
        record = None
    ttl = WORKER_RECORD_MAX_TTL_S
    if record is not None and math.isfinite(record.ttl_s) and record.ttl_s > 0:
        ttl = min(record.ttl_s, WORKER_RECORD_MAX_TTL_S)
    whole_seconds = server_now.microsecond == 0 and info.last_modified.microsecond == 0
    live = age < ttl + (CLOCK_RESOLUTION_S if whole_seconds else 0.0)
    return record, age, live


def read_roster(store: ObjectStore, layout: KeyLayout, *, max_records: int = MAX_WORKER_RECORDS) -> Roster:
    """The live workers: LIST calls over the workers prefix, then one capped GET per record, the
    ``max_records`` most recently written first. May raise ``StoreError``."""
    found_keys = list(islice(_listed(store, layout), MAX_LISTED_RECORDS + 1))
    listed = sorted(found_keys[:MAX_LISTED_RECORDS], key=lambda o: o.last_modified, reverse=True)
    live: list[LiveWorker] = []
    stale = unreadable = 0
    for info in listed[:max_records]:
        try:
            found = store.get(info.key, max_bytes=MAX_WORKER_RECORD_BYTES)
        except ObjectNotFound:
            continue  # its worker stopped meanwhile
        except ObjectTooLarge:
            unreadable += 1
            continue
        record, age, is_live = judge_record(found.body, found.info)
        if record is None:
            unreadable += 1
        elif is_live:
            live.append(LiveWorker(record, age))
        else:
            stale += 1
    live.sort(key=lambda w: w.record.worker.id)
    return Roster(live=live, stale=stale, unreadable=unreadable,
                  truncated=len(found_keys) > MAX_LISTED_RECORDS or len(listed) > max_records)


def prune_stale(store: ObjectStore, layout: KeyLayout, now: datetime, *, keep: str,
                max_pruned: int = MAX_PRUNED) -> int:
    """Delete records last written more than ``STALE_RECORD_S`` before ``now`` (the store's clock:
    the Last-Modified of a record just written), never ``keep``; at most ``max_pruned``. The count.
    Best effort: a store error ends it quietly (the next worker to start tries again)."""
    pruned = 0
    try:
        old = (o for o in _listed(store, layout)
               if o.key != keep and (now - o.last_modified).total_seconds() > STALE_RECORD_S)
        for info in islice(old, max_pruned):
            store.delete(info.key)
            pruned += 1
    except StoreError as exc:
        log.warning("worker_records_prune_failed", extra={"error": type(exc).__name__, "detail": str(exc)})
    if pruned:
        log.info("worker_records_pruned", extra={"records": pruned})
    return pruned


def _listed(store: ObjectStore, layout: KeyLayout) -> Iterable[ObjectInfo]:
    return (o for o in store.list(layout.workers_prefix) if o.key.endswith(".json"))
