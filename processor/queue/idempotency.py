"""``Idempotency-Key`` records: a repeated submit returns the first job and writes nothing.

``<state>/api/idempotency/<sha256 of scope and key>.json`` (``KeyLayout.idempotency_prefix``) is
created with ``If-None-Match: *`` before the job's input is written, so of two replicas racing on
one key exactly one writes a job, and the other answers with it. The scope is the caller's token:
keys are per client. The record holds the job id and the request's fingerprint; the same key with
another request is a conflict. Records are read with a byte cap (``MAX_IDEMPOTENCY_RECORD_BYTES``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone

from processor.errors import ObjectTooLarge, PreconditionFailed, StoreAccessError, StoreError
from processor.queue.keys import KeyLayout
from processor.store.base import ObjectStore

log = logging.getLogger("processor.idempotency")

#: Bytes: the most of an idempotency record anyone reads. Ours are about 200 bytes.
MAX_IDEMPOTENCY_RECORD_BYTES = 4096


class IdempotencyConflict(RuntimeError):
    """An ``Idempotency-Key`` reused with a different request (or held by a record not of ours)."""

    def __init__(self, job_id: str | None) -> None:
        super().__init__(job_id or "a record not written by this processor")
        #: The job the key belongs to; None when its record is not one of ours.
        self.job_id = job_id


class IdempotencyRecords:
    """Reserves idempotency keys for new jobs (module docstring)."""

    def __init__(self, store: ObjectStore, layout: KeyLayout) -> None:
        self.store = store
        self.prefix = layout.idempotency_prefix

    def key_for(self, scope: str, idempotency_key: str) -> str:
        return self.prefix + hashlib.sha256(f"{scope}\0{idempotency_key}".encode()).hexdigest()

    def reserve(self, record_key: str, job: str, fingerprint: str) -> str | None:
        """Create the record for ``job``: None when this call holds the key now, else the job of
        the earlier request with this key. ``IdempotencyConflict`` when that request differed."""
        record = json.dumps({"job": job, "fingerprint": fingerprint,
                             "created_at": datetime.now(timezone.utc).isoformat()}).encode()
        try:
            self.store.put(record_key, record, content_type="application/json", if_none_match=True)
            return None
        except PreconditionFailed:
            pass
        try:
            existing = json.loads(self.store.get(record_key, max_bytes=MAX_IDEMPOTENCY_RECORD_BYTES).body)
        except (ObjectTooLarge, ValueError, RecursionError):
            raise IdempotencyConflict(None) from None
        if not isinstance(existing, dict) or not isinstance(existing.get("job"), str):
            raise IdempotencyConflict(None)
        if existing["job"] == job:
            # ``job`` is unique to this call: our record landed and only its response was lost (the
            # store retried the create and met it). The job is still to be written.
            return None
        if existing.get("fingerprint") != fingerprint:
            raise IdempotencyConflict(existing["job"])
        return str(existing["job"])

    def drop(self, record_key: str) -> None:
        """Delete a record whose job was not written (else a repeat would answer with a job
        never written). Best effort: logged when the store refuses."""
        try:
            self.store.delete(record_key)
        except (StoreError, StoreAccessError):
            log.warning("idempotency_record_left", extra={"key": record_key})
