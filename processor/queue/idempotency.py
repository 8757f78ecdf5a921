"""``Idempotency-Key`` records: a repeated submit returns the first job and writes nothing.

``<state>/api/idempotency/<sha256 of scope and key>.json`` (``KeyLayout.idempotency_prefix``) is
created with ``If-None-Match: *`` before the job's input is written, so of two replicas racing on
one key exactly one writes a job, and the other answers with it. The scope is the caller's client
name: keys are per client. The record holds the job id and the request's fingerprint; the same key
with another request is a conflict. Records are read with a byte cap (``MAX_IDEMPOTENCY_RECORD_BYTES``).

Between the record and the photo a request is half-written, and a repeat (a client's retry, a
second replica) must neither answer with a job that does not exist yet nor wait forever:

- while the record's job has no input and the record is younger than ``takeover_s`` (on the
  store's clock), its writer is taken to be at work: ``IdempotencyPending`` (the API waits and
  asks again, and answers 409 with Retry-After if it is still pending);
- a record older than that whose job was never written is a writer that died (a crash, a lost
  replica): a repeat takes the key over (``If-Match`` on the record it read, so of several repeats
  one wins) and writes its own job;
- a writer that stalled past ``takeover_s`` and finds, once its job is written, that the key
  names another job now (``confirm``) gives its own job up: the key answers one job only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone

from processor.errors import ObjectNotFound, ObjectTooLarge, PreconditionFailed, StoreAccessError, StoreError
from processor.queue.keys import KeyLayout
from processor.store.base import ObjectStore, StoredObject

log = logging.getLogger("processor.idempotency")

#: Bytes: the most of an idempotency record anyone reads. Ours are about 200 bytes.
MAX_IDEMPOTENCY_RECORD_BYTES = 4096
#: Seconds after which a record whose job was never written counts as its writer's death (the API
#: passes ``api.idempotency_takeover_s``).
DEFAULT_TAKEOVER_S = 60.0
#: Tries of ``reserve`` when the record it met vanishes before it is read (its writer failed and
#: dropped it): then the key is free again and the next create may win it.
RESERVE_TRIES = 3


class IdempotencyConflict(RuntimeError):
    """An ``Idempotency-Key`` reused with a different request (or held by a record not of ours)."""

    def __init__(self, job_id: str | None) -> None:
        super().__init__(job_id or "a record not written by this processor")
        #: The job the key belongs to; None when its record is not one of ours.
        self.job_id = job_id


class IdempotencyPending(RuntimeError):
    """The first request with this key is still writing its job: ask again shortly."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class IdempotencyRecords:
    """Reserves idempotency keys for new jobs (module docstring)."""

    def __init__(self, store: ObjectStore, layout: KeyLayout, *, takeover_s: float = DEFAULT_TAKEOVER_S) -> None:
        self.store = store
        self.prefix = layout.idempotency_prefix
        self.takeover_s = takeover_s

    def key_for(self, scope: str, idempotency_key: str) -> str:
        return self.prefix + hashlib.sha256(f"{scope}\0{idempotency_key}".encode()).hexdigest()

    def reserve(self, record_key: str, job: str, fingerprint: str, *, exists: Callable[[str], bool]) -> str | None:
        """Hold the key for ``job``: None when this call holds it now (write the job), else the
        earlier request's job, which ``exists``. ``IdempotencyPending`` while that job is being
        written; ``IdempotencyConflict`` when that request differed."""
        record = json.dumps({"job": job, "fingerprint": fingerprint,
                             "created_at": datetime.now(timezone.utc).isoformat()}).encode()
        for _ in range(RESERVE_TRIES):
            try:
                self.store.put(record_key, record, content_type="application/json", if_none_match=True)
                return None
            except PreconditionFailed:
                pass
            try:
                found = self.store.get(record_key, max_bytes=MAX_IDEMPOTENCY_RECORD_BYTES)
            except ObjectNotFound:
                continue  # dropped by its failed writer just now: the key is free again
            except ObjectTooLarge:
                raise IdempotencyConflict(None) from None
            earlier = _job_of(found.body)
            if earlier is None:
                raise IdempotencyConflict(None)
            if earlier == job:
                # ``job`` is unique to this call: our record landed and only its response was lost (the
                # store retried the create and met it). The job is still to be written.
                return None
            if _fingerprint_of(found.body) != fingerprint:
                raise IdempotencyConflict(earlier)
            if exists(earlier):
                return earlier
            if _age_s(found) < self.takeover_s:
                raise IdempotencyPending(earlier)
            try:
                self.store.put(record_key, record, content_type="application/json", if_match=found.info.etag)
            except PreconditionFailed:
                raise IdempotencyPending(earlier) from None  # another repeat took it over first
            log.warning("idempotency_taken_over", extra={"key": record_key, "dead_job": earlier, "job": job})
            return None
        raise IdempotencyPending(job)

    def confirm(self, record_key: str, job: str) -> str | None:
        """After ``job`` was written under this key: None while the key still names it, else the
        job it names now (a repeat took the key over while this writer stalled)."""
        try:
            found = self.store.get(record_key, max_bytes=MAX_IDEMPOTENCY_RECORD_BYTES)
        except (ObjectNotFound, ObjectTooLarge):
            return None  # deleted or replaced by hand: nothing names another job
        named = _job_of(found.body)
        return None if named is None or named == job else named

    def drop(self, record_key: str) -> None:
        """Delete a record whose job was not written (else a repeat would answer with a job
        never written). Best effort: logged when the store refuses."""
        try:
            self.store.delete(record_key)
        except (StoreError, StoreAccessError):
            log.warning("idempotency_record_left", extra={"key": record_key})


def _fields(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _job_of(body: bytes) -> str | None:
    job = _fields(body).get("job")
    return job if isinstance(job, str) else None


def _fingerprint_of(body: bytes) -> object:
    return _fields(body).get("fingerprint")


def _age_s(found: StoredObject) -> float:
    """Seconds since the record was written, on the store's clock (as claims are judged)."""
    now = found.info.server_time or datetime.now(timezone.utc)
    return (now - found.info.last_modified).total_seconds()
