"""The job view of the bucket: what every client of the queue reads, and the writes of its clients.

``BucketJobs`` is the read side of ``BucketQueue`` (``protocol.py`` adds the worker's
transitions): ``processor status`` / ``results`` / ``retry`` and the HTTP API read job state here,
with the same bounded reads (``records``) and the same claim judgement (``claims.judge_claim``) as
the worker, so none of them trusts what the worker would not.

- A job is one input key. Its id is the key's path under ``inputs/`` in URL-safe base64 (no
  padding; ``job_id``), so inputs dropped into the bucket directly are jobs too. An id names a
  job only when that path is a plain path (``processor.names``) and the key fits a store
  (``MAX_KEY_BYTES``): anything else (a NUL, a ``..`` segment, a path too long) is ``UnknownJob``,
  as on the stores, which cannot hold such keys either.
- Its status, for the input's current version (its ETag): ``done`` when the manifest names this
  input and version, ``failed`` when a final failure record names this version, ``running``
  while a live claim names it (its ``progress`` comes with it), else what the version's done
  marker says (a committed result whose manifest was deleted is still ``done``, as
  ``processor status`` counts it, with a ``detail`` saying so; ``cancelled`` with the cancel
  record), else ``queued``. A queued job that was cancelled has no input any more: its cancel
  record alone answers for it (``cancelled``; listings, which list inputs, leave it out).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import NamedTuple

from processor.config import DEFAULT_CLAIM_MAX_TTL_S
from processor.errors import InvalidKey, ObjectNotFound, ObjectUnreadable, PreconditionFailed, StyleUnavailable
from processor.manifest import CancelRecord, FailureRecord, Manifest
from processor.names import is_plain_name, is_plain_path
from processor.queue import requeue as requeue_module
from processor.queue.cancel import read_cancel, remove_queued, request_cancel
from processor.queue.claims import ClaimProgress, read_claim
from processor.queue.idempotency import DEFAULT_TAKEOVER_S, IdempotencyPending, IdempotencyRecords
from processor.queue.keys import ItemKeys, KeyLayout, is_directory_marker, is_sidecar, safe_path, safe_segment
from processor.queue.outcomes import Outcome
from processor.queue.records import RecordT, get_capped, parse_record, read_record
from processor.queue.rescan import ArrivalHints, request_rescan
from processor.queue.scan import Backlog, scan
from processor.queue.submit import (
    EXTENSIONS,
    Submission,
    discard_job,
    filename_from_metadata,
    new_upload_name,
    owner_folder,
    upload_owner,
    write_job,
)
from processor.queue.webhook_records import WebhookRecords
from processor.queue.workers import Roster, read_roster
from processor.store.base import ObjectInfo, ObjectStore, StoredObject, StreamsObjects

log = logging.getLogger("processor.jobs")

#: Bytes: the longest object key a store takes (S3's limit; the local store keeps the same).
MAX_KEY_BYTES = 1024
#: Characters: the longest job id accepted (the base64 of a path that could fit ``MAX_KEY_BYTES``).
MAX_JOB_ID_CHARS = 2048
#: Jobs one page of ``page`` holds at most.
MAX_PAGE = 200
#: The object under the state prefix that ``probe_write`` writes (every replica the same one).
READY_PROBE_KEY = "api/ready.json"
#: The folder under the inputs prefix that ``submit`` writes to unless told (``api.submit_prefix``'s default).
DEFAULT_UPLOAD_FOLDER = "api/"
#: The error of a retryable record that leaves a job queued, waiting for a capable worker.
WAITING_ERROR = StyleUnavailable.__name__


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    #: Cancelled (``DELETE /v1/jobs/{id}``, ``processor.queue.cancel``): no manifest, a cancel record.
    cancelled = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.done, JobStatus.failed, JobStatus.cancelled)


class UnknownJob(LookupError):
    """No input under this id (never submitted, deleted, or not an id)."""


class NotCancellable(RuntimeError):
    """A cancel of a job that already ended done or failed (its result stands)."""

    def __init__(self, status: JobStatus) -> None:
        super().__init__(f"the job is {status.value}; only a queued or running job can be cancelled")
        self.status = status


class NotFailed(RuntimeError):
    """A retry of a job that has no final failure."""

    def __init__(self, status: JobStatus) -> None:
        super().__init__(f"the job is {status.value}, not failed")
        self.status = status


@dataclass(frozen=True)
class JobState:
    """What the bucket says about one job now."""

    id: str
    input_key: str
    #: The input version this state is about.
    etag: str
    status: JobStatus
    submitted_at: datetime
    #: Bytes of that version (0 when only a cancel record answers for it).
    size: int = 0
    progress: ClaimProgress | None = None
    manifest: Manifest | None = None
    failure: FailureRecord | None = None
    #: The cancel record of a ``cancelled`` job.
    cancel: CancelRecord | None = None
    #: Why a ``done`` job has no manifest, or a ``failed`` one no failure record (its done marker
    #: says it ended, its record is gone or unreadable), and what to do; None otherwise.
    detail: str | None = None
    #: A ``queued`` job's retryable ``StyleUnavailable`` record: a worker took it and could not load
    #: a style it asks for; it waits for a worker that can. None otherwise.
    waiting: FailureRecord | None = None
    #: The photo's original file name, when its upload recorded one: from the input's metadata
    #: (a single job's HEAD), else from its result's ``source.filename`` (an ended job in a page).
    filename: str | None = None


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobState]
    #: Pass as ``cursor`` for the next page; None on the last one.
    next_cursor: str | None


class BacklogCount(NamedTuple):
    """What ``backlog`` counts: inputs without a result, how many of them a worker holds, and when
    the oldest of them was uploaded (None: none pending)."""

    pending: int
    claimed: int
    oldest_pending_at: datetime | None = None


@dataclass(frozen=True)
class QueueStatus:
    """Counts of inputs by state (LIST calls only) and the latest failure records."""

    inputs: int
    pending: int
    in_progress: int
    done: int
    failed: int
    recent_failures: list[RecordedFailure]
    #: Inputs whose job was cancelled while running (a queued job's input is removed: not counted).
    cancelled: int = 0


@dataclass(frozen=True)
class RecordedFailure:
    """A failure record ``status`` shows, with the record's object key."""

    key: str
    record: FailureRecord


def job_id(relpath: str) -> str:
    """The id of the input ``inputs/<relpath>`` (the wire format of ids in URLs and records)."""
    return base64.urlsafe_b64encode(relpath.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def relpath_of(job: str) -> str:
    """The input's path under ``inputs/`` for a job id; ``UnknownJob`` for anything else."""
    if not job or len(job) > MAX_JOB_ID_CHARS or not all(c.isalnum() or c in "-_" for c in job):
        raise UnknownJob(job)
    try:
        relpath = base64.urlsafe_b64decode(job + "=" * (-len(job) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise UnknownJob(job) from None
    if not addressable(relpath):
        raise UnknownJob(job)
    return relpath


def addressable(relpath: str) -> bool:
    """Whether an input path can be a job: a plain path (``processor.names``; no NUL, ``\\``,
    empty, ``.`` or ``..`` segment, which the stores cannot hold) that is not a sidecar."""
    return is_plain_path(relpath) and not is_sidecar(relpath) and not is_directory_marker(relpath)


class BucketJobs:
    """Jobs in the bucket: each input's state, pages of them, their files, submit and retry, the
    counts ``processor status`` shows. Every method may raise ``StoreError`` (retries spent) and
    ``StoreAccessError``; reads of records and claims are capped (module docstring).

    ``max_claim_ttl_s`` is ``claims.max_ttl_s``: the longest TTL any claim is believed to have.
    ``upload_folder`` (``api.submit_prefix``) is where ``submit`` writes under the inputs prefix;
    ``clock`` names those uploads (``submit.new_upload_name``); ``idempotency_takeover_s`` is
    ``api.idempotency_takeover_s`` (``processor.queue.idempotency``)."""

    def __init__(self, store: ObjectStore, layout: KeyLayout, *, max_claim_ttl_s: float = DEFAULT_CLAIM_MAX_TTL_S,
                 upload_folder: str = DEFAULT_UPLOAD_FOLDER, clock: Callable[[], float] = time.time,
                 idempotency_takeover_s: float = DEFAULT_TAKEOVER_S) -> None:
        self.store = store
        self.layout = layout
        self.max_claim_ttl_s = max_claim_ttl_s
        self.upload_folder = upload_folder
        self.clock = clock
        self.webhooks = WebhookRecords(store, layout)
        #: This process's keyed rescan hint: each submit names its input there.
        self.arrivals = ArrivalHints(store, layout)
        self.idempotency = IdempotencyRecords(store, layout, takeover_s=idempotency_takeover_s)

    # ----------------------------------------------------------------- one job

    def state(self, job: str) -> JobState:
        """The job's state now; ``UnknownJob`` when its input does not exist (or ``job`` is no id)."""
        keys = self.keys_of(job)
        try:
            info: ObjectInfo | None = self.store.head(keys.input)
        except ObjectNotFound:
            removed = self._removed(job, keys)
            if removed is None:
                raise UnknownJob(job) from None
            return removed
        except InvalidKey:
            raise UnknownJob(job) from None
        except ObjectUnreadable:
            # A HEAD refused for this one object (SSE-C, a policy): the worker fails such an input
            # with a record of that version, which the listing still names.
            info = next((o for o in self.store.list(keys.input) if o.key == keys.input), None)
        if info is None:
            raise UnknownJob(job)
        return self._state(job, keys, info)

    def _removed(self, job: str, keys: ItemKeys) -> JobState | None:
        """The state of a queued job that was cancelled (its input removed), from its cancel record."""
        try:
            record = read_cancel(self.store, keys)
        except InvalidKey:
            return None
        if record is None or record.status != "cancelled":
            return None
        return JobState(id=job, input_key=keys.input, etag=record.source.etag, status=JobStatus.cancelled,
                        submitted_at=record.submitted_at or record.requested_at, cancel=record)

    def keys_of(self, job: str) -> ItemKeys:
        """The keys of the job's input; ``UnknownJob`` when the id names no key a store can hold."""
        return self.layout.for_input(self.input_key_of(job))

    def owner_of(self, job: str) -> str | None:
        """The client whose upload the job is (``submit.upload_owner``); None for an input with
        no owner. ``UnknownJob`` when the id names no key a store can hold. No store request."""
        self.input_key_of(job)
        return upload_owner(self.upload_folder, relpath_of(job))

    def input_key_of(self, job: str) -> str:
        """The job's input key; ``UnknownJob`` when the id names no key a store can hold."""
        key = self.layout.prefixes.inputs + relpath_of(job)
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise UnknownJob(job)
        return key

    def _state(self, job: str, keys: ItemKeys, info: ObjectInfo) -> JobState:
        queued = JobState(id=job, input_key=keys.input, etag=info.etag, status=JobStatus.queued,
                          submitted_at=info.last_modified, size=info.size,
                          filename=filename_from_metadata(info.metadata))
        manifest = self._record(keys.manifest, Manifest)
        # The manifest of another input sharing the folder (a.png, a.jpg) is not this job's result.
        if manifest is not None and manifest.source.key == keys.input and manifest.source.etag == info.etag:
            return replace(queued, status=JobStatus.done, manifest=manifest,
                           filename=queued.filename or manifest.source.filename)
        failure = self._record(keys.failure, FailureRecord)
        if failure is not None and failure.source.etag == info.etag and failure.final:
            return replace(queued, status=JobStatus.failed, failure=failure,
                           filename=queued.filename or failure.source.filename)
        if failure is not None and failure.source.etag == info.etag and failure.error == WAITING_ERROR:
            queued = replace(queued, waiting=failure, filename=queued.filename or failure.source.filename)
        claim = read_claim(self.store, keys.claim, max_ttl_s=self.max_claim_ttl_s)
        if claim is not None and claim.live and claim.input_etag == info.etag:
            return replace(queued, status=JobStatus.running, progress=claim.progress or ClaimProgress("claimed"),
                           waiting=None)
        ended = self._marker(keys, info.etag)
        # A record is written before its marker: one that landed between the reads above and the
        # marker's is read again here, rather than taken for a deleted record.
        if ended is Outcome.DONE:
            manifest = self._record(keys.manifest, Manifest)
            if manifest is not None and manifest.source.key == keys.input and manifest.source.etag == info.etag:
                return replace(queued, status=JobStatus.done, manifest=manifest,
                               filename=queued.filename or manifest.source.filename)
            return replace(queued, status=JobStatus.done, detail=(
                f"this version was committed, but its manifest ({keys.manifest}) is gone or not readable; "
                "upload the photo again to make a new result"))
        if ended is Outcome.FAILED:
            failure = self._record(keys.failure, FailureRecord)
            if failure is not None and failure.source.etag == info.etag and failure.final:
                return replace(queued, status=JobStatus.failed, failure=failure,
                               filename=queued.filename or failure.source.filename)
            return replace(queued, status=JobStatus.failed, detail=(
                f"this version failed, but its failure record ({keys.failure}) is gone or not readable; "
                "retry the job to process it again"))
        if ended is Outcome.CANCELLED:
            record = read_cancel(self.store, keys, info.etag)
            return replace(queued, status=JobStatus.cancelled, cancel=record, detail=None if record else (
                f"this version was cancelled, but its cancel record ({keys.cancel}) is gone or not readable"))
        return queued

    def _record(self, key: str, model: type[RecordT]) -> RecordT | None:
        try:
            return read_record(self.store, key, model)
        except ObjectUnreadable:
            return None  # the worker fails such an input with its own record; until then: not a result

    def _marker(self, keys: ItemKeys, etag: str) -> Outcome | None:
        """The done marker of this input version, from one LIST of the input's markers."""
        own, version = safe_path(keys.relpath), safe_segment(etag)
        for obj in self.store.list(keys.done_prefix):
            parsed = self.layout.parse_done_marker(obj.key)
            if parsed is not None and parsed[0] == own and parsed[1] == version:
                return Outcome(parsed[2])
        return None

    def output(self, job: str, name: str) -> StoredObject:
        """One file of a job (a variant, the contact sheet, the mask), by its plain name in the
        job's output folder. ``ObjectNotFound`` for anything else."""
        return self.store.get(self._output_key(job, name))

    def output_stream(self, job: str, name: str) -> tuple[ObjectInfo, Iterator[bytes]] | None:
        """``output``'s file as chunks when the store streams (``StreamsObjects``), else None."""
        if not isinstance(self.store, StreamsObjects):
            return None
        return self.store.stream(self._output_key(job, name))

    def _output_key(self, job: str, name: str) -> str:
        if not is_plain_name(name):
            raise ObjectNotFound(name)
        return self.keys_of(job).output_prefix + name

    def presigned_url(self, key: str, ttl_s: int, *, attachment: bool = False) -> str | None:
        """A short-lived GET URL for ``key`` when the store can sign one (S3, COS), else None;
        ``attachment``: one that makes a browser save the file rather than show it."""
        sign = getattr(self.store, "presigned_get_url", None)
        return sign(key, ttl_s, attachment=attachment) if sign is not None else None

    # ----------------------------------------------------------------- many jobs

    def page(self, cursor: str | None, limit: int, *, owner: str | None = None) -> JobPage:
        """Jobs in key order after ``cursor`` (a job id; ``UnknownJob`` for anything else), with
        their status: one LIST of the inputs (paginated by the store) plus the reads of each job's
        status. Inputs no id can name (``addressable``) are left out. With ``owner``: that client's
        jobs only, one LIST of its folder (a cursor outside it is ``UnknownJob``)."""
        prefix = self.layout.prefixes.inputs + (owner_folder(self.upload_folder, owner) if owner else "")
        start_after = self.input_key_of(cursor) if cursor else ""
        if start_after and not start_after.startswith(prefix):
            raise UnknownJob(cursor or "")
        limit = max(1, min(limit, MAX_PAGE))
        listed: list[ObjectInfo] = []
        more = False
        for obj in self.store.list(prefix, start_after=start_after):
            if not addressable(self.layout.relpath(obj.key)):
                continue
            if len(listed) == limit:
                more = True
                break
            listed.append(obj)
        jobs = [self._state(job_id(self.layout.relpath(obj.key)), self.layout.for_input(obj.key), obj)
                for obj in listed]
        return JobPage(jobs, jobs[-1].id if more and jobs else None)

    def scan(self) -> Backlog:
        """A full scan: every input version without a result (LIST calls only)."""
        return scan(self.store, self.layout)

    def backlog(self) -> BacklogCount:
        """Inputs without a result, of them claimed by a worker, and the oldest one's upload time:
        LIST calls only."""
        backlog = self.scan()
        pending_claims = {item.keys.claim for item in backlog.pending}
        claimed = sum(1 for obj in self.store.list(self.layout.claims_prefix) if obj.key in pending_claims)
        oldest = min((item.info.last_modified for item in backlog.pending), default=None)
        return BacklogCount(len(backlog.pending), claimed, oldest)

    def status(self, recent: int = 5) -> QueueStatus:
        """Inputs by state (pending excludes those under a claim) and the ``recent`` latest
        failure records (unreadable ones are skipped)."""
        backlog = self.scan()
        pending_claims = {item.keys.claim for item in backlog.pending}
        in_progress = sum(1 for obj in self.store.list(self.layout.claims_prefix) if obj.key in pending_claims)
        failures = sorted(self.store.list(self.layout.prefixes.failed), key=lambda o: o.last_modified, reverse=True)
        records = []
        for obj in failures[:recent]:
            try:
                record = read_record(self.store, obj.key, FailureRecord)
            except ObjectUnreadable:
                continue
            if record is not None:  # else gone, or not a record of ours: status reports what it can read
                records.append(RecordedFailure(obj.key, record))
        return QueueStatus(inputs=backlog.inputs, pending=len(backlog.pending) - in_progress,
                           in_progress=in_progress, done=backlog.done, failed=backlog.failed,
                           recent_failures=records, cancelled=backlog.cancelled)

    def workers(self) -> Roster:
        """The live workers and what each can run (``processor.queue.workers``: capped reads)."""
        return read_roster(self.store, self.layout)

    def ping(self) -> None:
        """One cheap request that fails when the store is unreachable (for readiness probes)."""
        try:
            self.store.head(self.layout.rescan_hint)
        except ObjectNotFound:
            pass

    def probe_write(self, replica: str) -> None:
        """Write one small object under the state prefix (for readiness probes): raises what the
        store raises when it takes no writes (a full disk, a read-only policy)."""
        body = json.dumps({"replica": replica, "at": self.clock()}).encode()
        self.store.put(self.layout.prefixes.state + READY_PROBE_KEY, body, content_type="application/json")

    # ----------------------------------------------------------------- results of one input key

    def result(self, input_key: str) -> Manifest | FailureRecord | None:
        """The input's manifest, else its failure record, else None (no result yet). Reads the
        latest of each, whichever input version it is about, with a byte cap. A manifest that
        names another input (``a.png`` holding the folder ``a.jpg`` maps to) is never answered."""
        keys = self.layout.for_input(input_key)
        manifest = read_record(self.store, keys.manifest, Manifest)
        if manifest is not None and manifest.source.key == input_key:
            return manifest
        return read_record(self.store, keys.failure, FailureRecord)

    def cancelled(self, input_key: str) -> CancelRecord | None:
        """The record of the input's cancel, once it took effect (whichever version it names)."""
        record = read_cancel(self.store, self.layout.for_input(input_key))
        return record if record is not None and record.status == "cancelled" else None

    def folder_owner(self, input_key: str) -> str | None:
        """The input whose manifest holds this input's output folder, when it is another one."""
        owner = read_record(self.store, self.layout.for_input(input_key).manifest, Manifest)
        return owner.source.key if owner is not None and owner.source.key != input_key else None

    # ----------------------------------------------------------------- writes

    def submit(self, submission: Submission, *, idempotency_key: str | None = None,
               scope: str = "", owner: str | None = None) -> tuple[str, bool]:
        """Write a new job under ``inputs/<upload_folder>[<owner>/]`` (``submit.write_job``): (its id,
        whether this call created it). With ``idempotency_key`` (per ``scope``, the caller's client),
        a repeat returns the first job and writes nothing; ``IdempotencyConflict`` when it differs,
        ``IdempotencyPending`` while the first is still being written (``processor.queue.idempotency``)."""
        relpath = owner_folder(self.upload_folder, owner) + new_upload_name(self.clock) + EXTENSIONS[submission.format]
        new_id = job_id(relpath)
        record_key = None
        if idempotency_key is not None:
            record_key = self.idempotency.key_for(scope, idempotency_key)
            earlier = self.idempotency.reserve(record_key, new_id, submission.fingerprint(), exists=self._exists)
            if earlier is not None:
                return earlier, False
        try:
            write_job(self.store, self.layout, relpath, submission, job=new_id, webhooks=self.webhooks,
                      hints=self.arrivals)
        except BaseException:
            if record_key is not None:
                self.idempotency.drop(record_key)
            raise
        if record_key is not None:
            other = self.idempotency.confirm(record_key, new_id)
            if other is not None:  # we stalled past the takeover and a repeat wrote its job: that one stands
                discard_job(self.store, self.layout, relpath, job=new_id)
                if not self._exists(other):
                    raise IdempotencyPending(other)
                return other, False
        return new_id, True

    def _exists(self, job: str) -> bool:
        """Whether the job exists: its input (a HEAD), or the record of its cancel (a queued job
        that was cancelled has no input, and a repeat of its Idempotency-Key still answers it)."""
        try:
            self.store.head(self.input_key_of(job))
        except ObjectNotFound:
            return self._removed(job, self.keys_of(job)) is not None
        except (InvalidKey, UnknownJob):
            return False
        except ObjectUnreadable:
            return True
        return True

    def cancel(self, job: str, *, by: str | None = None) -> JobState:
        """Cancel a queued or running job (``processor.queue.cancel``): the job afterwards, which is
        ``cancelled`` for a queued one (removed) and still ``running`` until its worker stops at its
        next step. A repeat answers the cancelled job. ``NotCancellable`` for a job that ended done
        or failed (its result stands); ``UnknownJob`` when there is no such job."""
        state = self.state(job)
        if state.status is JobStatus.cancelled:
            return state
        if state.status in (JobStatus.done, JobStatus.failed):
            raise NotCancellable(state.status)
        keys = self.keys_of(job)
        request = request_cancel(self.store, keys, etag=state.etag, size=state.size, submitted_at=state.submitted_at,
                                 by=by)
        if state.status is JobStatus.queued:
            try:
                remove_queued(self.store, self.layout, keys, request)
            except PreconditionFailed:
                log.info("cancel_replaced", extra={"key": keys.input, "etag": state.etag})
        return self.state(job)

    def retry(self, job: str) -> JobState:
        """Requeue a failed job, or one waiting for a worker that can load its styles (``processor
        retry``'s requeue, for this one input: running workers rescan at once); ``NotFailed`` when
        it is neither, or a worker rewrote its record meanwhile."""
        state = self.state(job)
        if state.status is not JobStatus.failed and state.waiting is None:
            raise NotFailed(state.status)
        keys = self.keys_of(job)
        if state.failure is None and state.waiting is None:
            # Its done marker says failed but its record is gone: the marker alone holds it back.
            self.store.delete(keys.done_marker(state.etag, Outcome.FAILED))
            request_rescan(self.store, self.layout, by="retry", count=1)
            return self.state(job)
        found = get_capped(self.store, keys.failure)
        record = parse_record(found, FailureRecord)
        if record is None or record.source.etag != state.etag or not (record.final or record.error == WAITING_ERROR):
            raise NotFailed(JobStatus.running)  # a worker rewrote the record meanwhile
        # marked=False: requeue deletes the done marker of every final record anyway.
        result = self.requeue([requeue_module.Failure(keys.failure, found.info.etag, record, marked=False)])
        if result.changed:
            raise NotFailed(JobStatus.running)
        return self.state(job)

    def find_failures(self, *, include_permanent: bool, prefix: str = "",
                      errors: frozenset[str] | None = None) -> requeue_module.Selection:
        """The failure records ``requeue`` would act on (``processor.queue.requeue.find_failures``)."""
        return requeue_module.find_failures(self.store, self.layout, include_permanent=include_permanent,
                                            prefix=prefix, errors=errors)

    def requeue(self, failures: Iterable[requeue_module.Failure]) -> requeue_module.RequeueResult:
        """Make failed inputs pending again (``processor.queue.requeue.requeue``)."""
        return requeue_module.requeue(self.store, self.layout, failures)
