"""The API's one adapter to the bucket protocol: every read and write ``processor serve`` makes.

The API is another client of the protocol the worker and ``processor retry`` speak
(``processor.queue.keys``, ``scan``, ``claims``, ``manifest``, ``requeue``, ``rescan``); it keeps no
state of its own, so any number of replicas can serve the same bucket.

- A job is one input key. Its id is the key's path under ``inputs/`` in URL-safe base64 (no
  padding), so inputs dropped into the bucket directly are jobs too. API uploads go to
  ``inputs/<api.submit_prefix><time-ordered id>.<ext>``, their sidecar beside them (written
  first, so a worker never sees the photo without it).
- Its status, for the input's current version (its ETag): ``done`` when the manifest's
  ``source.etag`` matches, ``failed`` when a final failure record does, ``running`` while a live
  claim names that version (its ``progress`` comes with it), else ``queued``.
- ``Idempotency-Key``: ``<state>/api/idempotency/<hash>.json`` is created with
  ``If-None-Match: *`` before the input is written, so of two replicas racing on one key exactly
  one writes a job, and the other answers with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from processor.config import Settings
from processor.errors import InvalidKey, ObjectNotFound, PreconditionFailed, StoreAccessError, StoreError
from processor.manifest import FailureRecord, Manifest
from processor.queue.claims import Claim, ClaimManager, ClaimProgress
from processor.queue.keys import ItemKeys, KeyLayout, is_directory_marker, is_sidecar
from processor.queue.requeue import Failure, requeue
from processor.queue.rescan import request_rescan
from processor.queue.scan import scan
from processor.store.base import ObjectInfo, ObjectStore, StoredObject, StreamsObjects

log = logging.getLogger("processor.api.jobs")

#: A bucket record read back by ``JobQueue._read`` (a manifest or a failure record).
RecordT = TypeVar("RecordT", bound=BaseModel)

#: File extension of an upload, from its sniffed format (``pipeline.decode.sniff_format``).
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "HEIF": ".heic", "AVIF": ".avif",
              "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp"}
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "HEIF": "image/heif",
                 "AVIF": "image/avif", "GIF": "image/gif", "TIFF": "image/tiff", "BMP": "image/bmp"}
#: Jobs one page of ``GET /v1/jobs`` holds at most.
MAX_PAGE = 200


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.done, JobStatus.failed)


class UnknownJob(LookupError):
    """No input under this id (never submitted, deleted, or not an id)."""


class NotFailed(RuntimeError):
    """A retry of a job that has no final failure record."""

    def __init__(self, status: JobStatus) -> None:
        super().__init__(f"the job is {status.value}, not failed")
        self.status = status


class IdempotencyConflict(RuntimeError):
    """An ``Idempotency-Key`` reused with a different request."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


@dataclass(frozen=True)
class Submission:
    """A validated request: the photo's bytes and format, and the sidecar to write beside it."""

    image: bytes
    #: The sniffed format (``JPEG``, ``PNG``, ...).
    format: str
    #: The sidecar mapping, already validated by ``pipeline.sidecar``; empty: no sidecar.
    sidecar: dict[str, object] = field(default_factory=dict)
    webhook: str | None = None
    #: The picture of the look uploaded with the photo (written under ``prefixes.styles``), and its
    #: sniffed format; None when the request named none or an existing key (then in ``sidecar``).
    style_image: bytes | None = None
    style_image_format: str | None = None

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.image)
        digest.update(json.dumps([self.sidecar, self.webhook], sort_keys=True).encode())
        if self.style_image is not None:
            digest.update(b"\0style_image\0" + hashlib.sha256(self.style_image).digest())
        return digest.hexdigest()


@dataclass(frozen=True)
class JobState:
    """What the bucket says about one job now."""

    id: str
    input_key: str
    #: The input version this state is about.
    etag: str
    status: JobStatus
    submitted_at: datetime
    progress: ClaimProgress | None = None
    manifest: Manifest | None = None
    failure: FailureRecord | None = None


@dataclass(frozen=True)
class Delivery:
    """A webhook still to send: the job and where to."""

    job: str
    url: str


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobState]
    #: Pass as ``cursor`` for the next page; None on the last one.
    next_cursor: str | None


def job_id(relpath: str) -> str:
    return base64.urlsafe_b64encode(relpath.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def relpath_of(job: str) -> str:
    """The input's path under ``inputs/`` for a job id; ``UnknownJob`` for anything else."""
    if not job or len(job) > 2048 or not all(c.isalnum() or c in "-_" for c in job):
        raise UnknownJob(job)
    try:
        relpath = base64.urlsafe_b64decode(job + "=" * (-len(job) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise UnknownJob(job) from None
    if not relpath or is_sidecar(relpath) or is_directory_marker(relpath):
        raise UnknownJob(job)
    return relpath


def new_upload_name(now: Callable[[], float] = time.time) -> str:
    """Time-ordered (listings show jobs in submit order) and unguessable."""
    return f"{int(now() * 1000):013d}-{secrets.token_hex(8)}"


class JobQueue:
    """Submit, inspect, list and retry jobs; the only code of ``processor.api`` that touches the store."""

    def __init__(self, store: ObjectStore, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.layout = KeyLayout(settings.prefixes)
        self.clock = clock
        self._idempotency_prefix = settings.prefixes.state + "api/idempotency/"
        self._webhooks = settings.prefixes.state + "api/webhooks/"

    # ------------------------------------------------------------------ writes

    def submit(self, submission: Submission, *, idempotency_key: str | None = None,
               scope: str = "") -> tuple[str, bool]:
        """Write the job; (its id, whether this call created it). With ``idempotency_key`` (per
        ``scope``, the caller's token), a repeat returns the first job and writes nothing."""
        relpath = self.settings.api.submit_prefix + new_upload_name(self.clock) + EXTENSIONS[submission.format]
        new_id = job_id(relpath)
        if idempotency_key is not None:
            record_key = self._idempotency_prefix + hashlib.sha256(f"{scope}\0{idempotency_key}".encode()).hexdigest()
            record = json.dumps({"job": new_id, "fingerprint": submission.fingerprint(),
                                 "created_at": datetime.now(timezone.utc).isoformat()}).encode()
            try:
                self.store.put(record_key, record, content_type="application/json", if_none_match=True)
            except PreconditionFailed:
                existing = json.loads(self.store.get(record_key).body)
                if existing.get("job") != new_id:  # new_id is unique to this call: else our own write
                    if existing.get("fingerprint") != submission.fingerprint():
                        raise IdempotencyConflict(existing["job"]) from None
                    return existing["job"], False
                # Our record landed and only its response was lost (the store retried the create
                # and met it): the job is still to be written, not an earlier request's.
        try:
            self._write(new_id, relpath, submission)
        except BaseException:
            if idempotency_key is not None:  # else a repeat would answer with a job never written
                try:
                    self.store.delete(record_key)
                except (StoreError, StoreAccessError):
                    log.warning("idempotency_record_left", extra={"key": record_key})
            raise
        return new_id, True

    def _write(self, new_id: str, relpath: str, submission: Submission) -> None:
        keys = self.layout.for_input(self.settings.prefixes.inputs + relpath)
        sidecar = dict(submission.sidecar)
        if submission.style_image is not None and submission.style_image_format is not None:
            # Job-scoped (the input's unguessable name) and first: the sidecar naming it comes after.
            look_key = (self.settings.prefixes.styles + relpath.rsplit(".", 1)[0]
                        + EXTENSIONS[submission.style_image_format])
            self._create_unique(look_key, submission.style_image, CONTENT_TYPES[submission.style_image_format])
            sidecar["style_image"] = look_key
        if sidecar:
            self.store.put(keys.sidecar, json.dumps(sidecar).encode(), content_type="application/json")
        if submission.webhook:  # before the input: its job may end before a later write
            self.store.put(self._webhooks + f"pending/{new_id}.json",
                           json.dumps({"url": submission.webhook}).encode(), content_type="application/json")
        self._create_unique(keys.input, submission.image, CONTENT_TYPES[submission.format])
        # An upload may sort before a daemon's high-water mark: make its next scan a full one.
        request_rescan(self.store, self.layout, by="api", count=1)
        log.info("job_submitted", extra={"job": new_id, "key": keys.input, "bytes": len(submission.image)})

    def _create_unique(self, key: str, body: bytes, content_type: str) -> None:
        """Create ``key``, a name unique to this request (``new_upload_name``), only if absent. A 412
        can then only be our own write, landed with its response lost and retried by the store:
        the object of our size there is ours. Anything else there is refused (``PreconditionFailed``)."""
        try:
            self.store.put(key, body, content_type=content_type, if_none_match=True)
        except PreconditionFailed:
            if self.store.head(key).size != len(body):
                raise
            log.info("create_response_lost", extra={"key": key, "bytes": len(body)})

    def retry(self, job: str) -> JobState:
        """Requeue a failed job (``processor retry``'s requeue, for this one input)."""
        state = self.state(job)
        if state.status is not JobStatus.failed or state.failure is None:
            raise NotFailed(state.status)
        keys = self._keys(job)
        found = self.store.get(keys.failure)
        record = FailureRecord.model_validate_json(found.body)
        # marked=False: requeue deletes the done marker of every final record anyway.
        result = requeue(self.store, self.layout, [Failure(keys.failure, found.info.etag, record, marked=False)])
        if result.changed:
            raise NotFailed(JobStatus.running)  # a worker rewrote the record meanwhile
        return self.state(job)

    # ------------------------------------------------------------------ reads

    def state(self, job: str) -> JobState:
        keys = self._keys(job)
        try:
            info = self.store.head(keys.input)
        except (ObjectNotFound, InvalidKey):
            raise UnknownJob(job) from None
        return self._state(job, keys, info)

    def _state(self, job: str, keys: ItemKeys, info: ObjectInfo) -> JobState:
        queued = JobState(id=job, input_key=keys.input, etag=info.etag, status=JobStatus.queued,
                          submitted_at=info.last_modified)
        manifest = self._read(keys.manifest, Manifest)
        if manifest is not None and manifest.source.etag == info.etag:
            return replace(queued, status=JobStatus.done, manifest=manifest)
        failure = self._read(keys.failure, FailureRecord)
        if failure is not None and failure.source.etag == info.etag and failure.final:
            return replace(queued, status=JobStatus.failed, failure=failure)
        progress = self._live_claim(keys, info.etag)
        if progress is not None:
            return replace(queued, status=JobStatus.running, progress=progress)
        return queued

    def _live_claim(self, keys: ItemKeys, etag: str) -> ClaimProgress | None:
        """The progress in a live claim on this input version (``claimed`` when it has none)."""
        try:
            found = self.store.get(keys.claim)
        except ObjectNotFound:
            return None
        try:
            data = json.loads(found.body)
            ttl = float(data.get("ttl_s", self.settings.claims.ttl_s))
        except (ValueError, TypeError, AttributeError):
            return None
        if not isinstance(data, dict) or data.get("etag") != etag:
            return None
        server_now = found.info.server_time or datetime.now(timezone.utc)
        if (server_now - found.info.last_modified).total_seconds() > ttl:
            return None  # expired: its worker is gone; the next one takes it over
        return ClaimProgress.from_json(data.get("progress")) or ClaimProgress("claimed")

    def page(self, cursor: str | None, limit: int) -> JobPage:
        """Jobs in key order after ``cursor`` (a job id), with their status: one LIST of the inputs
        (paginated by the store) plus the reads of each job's status."""
        start_after = ""
        if cursor:
            start_after = self.settings.prefixes.inputs + relpath_of(cursor)
        limit = max(1, min(limit, MAX_PAGE))
        listed: list[ObjectInfo] = []
        more = False
        for obj in self.store.list(self.settings.prefixes.inputs, start_after=start_after):
            if is_sidecar(obj.key) or is_directory_marker(obj.key):
                continue
            if len(listed) == limit:
                more = True
                break
            listed.append(obj)
        jobs = []
        for obj in listed:
            relpath = self.layout.relpath(obj.key)
            jobs.append(self._state(job_id(relpath), self.layout.for_input(obj.key), obj))
        return JobPage(jobs, jobs[-1].id if more and jobs else None)

    def output(self, job: str, name: str) -> StoredObject:
        """One file of a done job (a variant, the contact sheet, the mask), by its name in the
        job's output folder. ``ObjectNotFound`` for anything else."""
        keys = self._keys(job)
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise ObjectNotFound(name)
        return self.store.get(keys.output_prefix + name)

    def output_stream(self, job: str, name: str) -> tuple[ObjectInfo, Iterator[bytes]] | None:
        """``output``'s file as chunks when the store streams (``StreamsObjects``), else None."""
        if not isinstance(self.store, StreamsObjects):
            return None
        keys = self._keys(job)
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise ObjectNotFound(name)
        return self.store.stream(keys.output_prefix + name)

    def output_key(self, job: str, name: str) -> str:
        return self._keys(job).output_prefix + name

    def presigned_url(self, key: str, ttl_s: int, *, attachment: bool = False) -> str | None:
        """A short-lived GET URL for ``key`` when the store can sign one (S3, COS), else None;
        ``attachment``: one that makes a browser save the file rather than show it."""
        sign = getattr(self.store, "presigned_get_url", None)
        return sign(key, ttl_s, attachment=attachment) if sign is not None else None

    def pending(self) -> tuple[int, int]:
        """(inputs without a result, of them claimed by a worker): LIST calls only."""
        backlog = scan(self.store, self.layout)
        pending_claims = {item.keys.claim for item in backlog.pending}
        claimed = sum(1 for obj in self.store.list(self.layout.claims_prefix) if obj.key in pending_claims)
        return len(backlog.pending), claimed

    def ping(self) -> None:
        """One cheap request that fails when the store is unreachable (for /readyz)."""
        try:
            self.store.head(self.layout.rescan_hint)
        except ObjectNotFound:
            pass

    # ------------------------------------------------------------------ webhooks (processor.api.webhooks)

    def pending_webhooks(self) -> list[Delivery]:
        """The deliveries not sent yet: one LIST, one GET each."""
        out = []
        prefix = self._webhooks + "pending/"
        for obj in self.store.list(prefix):
            job = obj.key[len(prefix):].removesuffix(".json")
            try:
                url = json.loads(self.store.get(obj.key).body)["url"]
            except (ObjectNotFound, ValueError, KeyError, TypeError):
                continue
            out.append(Delivery(job, url))
        return out

    def claim_webhook(self, job: str, etag: str, sender: str, ttl_s: float) -> Claim | None:
        """The right to send one job's webhook (a claim, as workers claim inputs: exactly one
        replica holds it; taken over after ``ttl_s`` when its sender died); None: another has it."""
        manager = ClaimManager(self.store, sender, ttl_s=ttl_s)
        return manager.acquire(self._webhooks + f"claims/{job}.json", self._keys(job).input, etag)

    def release_webhook(self, claim: Claim, sender: str) -> None:
        # The TTL plays no part in a release (a delete with If-Match on the claim's ETag).
        ClaimManager(self.store, sender, ttl_s=1).release(claim)

    def finish_webhook(self, job: str, outcome: dict[str, object]) -> None:
        """Record the outcome, then delete the pending record: no replica sends it again."""
        record = outcome | {"job": job, "finished_at": datetime.now(timezone.utc).isoformat()}
        self.store.put(self._webhooks + f"done/{job}.json", json.dumps(record).encode(),
                       content_type="application/json")
        self.store.delete(self._webhooks + f"pending/{job}.json")

    def webhook_outcome(self, job: str) -> dict[str, object] | None:
        try:
            return json.loads(self.store.get(self._webhooks + f"done/{job}.json").body)
        except ObjectNotFound:
            return None

    # ------------------------------------------------------------------ helpers

    def _keys(self, job: str) -> ItemKeys:
        return self.layout.for_input(self.settings.prefixes.inputs + relpath_of(job))


    def _read(self, key: str, model: type[RecordT]) -> RecordT | None:
        try:
            return model.model_validate_json(self.store.get(key).body)
        except ObjectNotFound:
            return None
        except ValidationError:
            return None  # not written by this processor (or a newer schema): no status from it
