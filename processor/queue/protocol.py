"""The bucket as a job queue: ``BucketQueue``, the one face every reader and writer of job state uses.

The worker takes an input (``take``: claim it), checks whether its version already has a result
(``existing_result``), reads it (``read_input``), writes its outputs (``put_output``) and then
acknowledges it (``commit``: the manifest, written last and conditionally) or rejects it
(``fail``: a failure record, final or retryable), and finally gives the claim back (``release``)
(dramatiq's ``Consumer.ack / nack / requeue``, with the bucket as the broker). ``processor
status`` / ``results`` / ``retry`` and the HTTP API read and write the same state through the
methods ``BucketQueue`` inherits from ``processor.queue.jobs.BucketJobs`` (``state``, ``page``,
``status``, ``result``, ``submit``, ``retry``, ``find_failures`` / ``requeue``), with the same
bounded reads (``records``) and the same claim judgement (``claims.judge_claim``).

The rules it keeps (DESIGN.md, "The object protocol"):

- A job is an input key plus its ETag; done means ``manifest.json`` with that ``source.etag``.
- The commit puts ``manifest.json`` LAST with ``If-None-Match: *`` (or ``If-Match`` on the
  manifest of the input's previous version). A worker paused past its claim's TTL loses that race
  and publishes nothing (``Outcome.REFUSED``).
- An output that already exists is only replaced when no manifest for this version exists and
  the claim still carries this worker's token; the commit checks the token too. In ``shards``
  coordination there is no token to check, so an existing output is never replaced
  (``OutputTaken``): that attempt writes its outputs under names of its own
  (``pipeline.outputs.attempt_scoped``), created only if absent, and its manifest names them.
- An output folder belongs to the input its manifest names: another input whose name maps to the
  same folder (``a.png`` and ``a.jpg``) gets a failure record while that owner exists, and never
  replaces its result.
- Manifests, failure records and sidecars are read with a byte cap (``records``): bucket state is
  untrusted.
- A failure record follows the commit's rule: only the claim holder writes one, never beside a
  committed manifest.
- After a commit or a final failure, a done marker lets the next scan skip this version with LIST
  calls alone.
- A cancelled job (``processor.queue.cancel``) gets a cancel record and a ``cancelled`` done
  marker from the claim holder, on the same terms as a failure record: never beside a commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from processor.config import DEFAULT_CLAIM_MAX_TTL_S, Settings
from processor.errors import (
    ImageTooLarge,
    InputUnreadable,
    InvalidInput,
    InvalidKey,
    InvalidSidecar,
    ItemError,
    ObjectNotFound,
    ObjectTooLarge,
    ObjectUnreadable,
    PreconditionFailed,
    StoreError,
    StyleUnavailable,
)
from processor.manifest import CancelRecord, FailureRecord, Manifest, Source, WorkerInfo
from processor.queue.cancel import CancelWatch, Watched, read_cancel, stopped_record
from processor.queue.claims import Claim, ClaimManager
from processor.queue.failpolicy import is_final
from processor.queue.idempotency import DEFAULT_TAKEOVER_S
from processor.queue.jobs import DEFAULT_UPLOAD_FOLDER, BucketJobs
from processor.queue.keys import MAX_SIDECAR_BYTES, KeyLayout
from processor.queue.outcomes import Outcome
from processor.queue.records import get_capped
from processor.queue.scan import WorkItem
from processor.queue.workers import WorkerRecord, prune_stale, record_key, remove_record, write_record
from processor.store.base import ObjectStore

log = logging.getLogger("processor.protocol")


class OutputTaken(Exception):
    """``shards`` coordination found an output name taken and may not replace it."""


class AlreadyCommitted(Exception):
    """Another worker committed this input version first (or holds its claim now): ours must not
    publish."""

    def __init__(self, key: str, reason: str = "already committed by another worker") -> None:
        super().__init__(key)
        self.reason = reason


@dataclass
class Delivery:
    """One input version taken from the queue, and what the protocol learnt about it on the way
    (the worker's pipeline state lives elsewhere)."""

    item: WorkItem
    #: Our claim on it; None when workers coordinate by static shards.
    claim: Claim | None
    #: The version being worked on: the listed one until ``read_input`` reads the bytes.
    etag: str
    size: int
    #: The manifest of the input's previous version, which our commit replaces (If-Match).
    old_manifest_etag: str | None = None
    #: The output folder's manifest is this input's own (an earlier version): the folder is ours.
    owns_folder: bool = False
    #: A retryable failure record of this version exists: a success deletes it.
    stale_failure: bool = False
    #: 1, or n + 1 when a retryable failure record says n attempts at this version failed.
    attempt: int = 1
    #: The trace of the worker's work on it (``processor.tracing``), for the records it writes.
    trace_id: str | None = None
    #: Monotonic time of the last read of its cancel request (``take`` reads it once).
    cancel_read_at: float | None = None

    @property
    def key(self) -> str:
        return self.item.keys.input


@dataclass(frozen=True)
class InputObject:
    """The bytes of one input version and what came with it."""

    body: bytes
    #: The object's user metadata (``x-amz-meta-*``).
    metadata: dict[str, str] = field(default_factory=dict)
    #: The sidecar's raw bytes (``inputs/<path>.json``), None when there is none.
    sidecar: bytes | None = None


class BucketQueue(BucketJobs):
    """The bucket protocol for one worker, one operator command or one API replica.

    ``claims`` is None when workers coordinate by static shards: then the conditional commit alone
    decides who publishes. ``worker`` (who writes records) is needed by ``fail`` only; the readers
    (``BucketJobs``: ``state``, ``status``, ``result``, ``submit``, ``retry``, ...) need neither.
    ``max_claim_ttl_s`` (``claims.max_ttl_s``, default: the claim manager's) caps the TTL of every
    claim the readers judge. Every method may raise ``StoreError`` (retries spent) and
    ``FatalError``; the outcomes of ``commit`` and ``fail`` are ``Outcome`` members.
    """

    def __init__(
        self,
        store: ObjectStore,
        layout: KeyLayout,
        *,
        claims: ClaimManager | None = None,
        worker: WorkerInfo | None = None,
        max_attempts: int = 1,
        max_claim_ttl_s: float | None = None,
        upload_folder: str = DEFAULT_UPLOAD_FOLDER,
        clock: Callable[[], float] = time.time,
        idempotency_takeover_s: float = DEFAULT_TAKEOVER_S,
    ) -> None:
        if max_claim_ttl_s is None:
            max_claim_ttl_s = claims.max_ttl_s if claims is not None else DEFAULT_CLAIM_MAX_TTL_S
        super().__init__(store, layout, max_claim_ttl_s=max_claim_ttl_s, upload_folder=upload_folder, clock=clock,
                         idempotency_takeover_s=idempotency_takeover_s)
        self.claims = claims
        self.worker = worker
        self.max_attempts = max_attempts
        #: Reads the cancel requests of the items being computed (made on first use).
        self._cancels: CancelWatch | None = None

    @classmethod
    def for_settings(cls, store: ObjectStore, settings: Settings, **kwargs: Any) -> BucketQueue:
        """A queue over ``store`` with ``settings``' prefixes, claim TTL cap (``claims.max_ttl_s``)
        upload folder (``api.submit_prefix``) and idempotency takeover (``api.idempotency_takeover_s``):
        what the API and the operator commands use."""
        kwargs.setdefault("max_claim_ttl_s", settings.claims.max_ttl_s)
        kwargs.setdefault("idempotency_takeover_s", settings.api.idempotency_takeover_s)
        return cls(store, KeyLayout(settings.prefixes), upload_folder=settings.api.submit_prefix, **kwargs)

    # ----------------------------------------------------------------- consumer: take

    def take(self, item: WorkItem) -> Delivery | None:
        """Claim ``item``: its delivery, or None when another worker holds a live claim."""
        claim = None
        if self.claims:
            claim = self.claims.acquire(item.keys.claim, item.keys.input, item.info.etag)
            if claim is None:
                return None
        return Delivery(item=item, claim=claim, etag=item.info.etag, size=item.info.size)

    def existing_result(self, d: Delivery) -> Outcome | None:
        """``ALREADY`` when a manifest or final failure record for this version already exists (a
        crash after the commit but before the done marker): the marker is written now.
        ``CANCELLED`` when a cancel of this version was requested (or recorded): its record and
        marker are written now, and nothing is computed. Otherwise None, having noted on ``d`` what
        the commit must replace and which attempt this is."""
        keys = d.item.keys
        try:
            found = get_capped(self.store, keys.manifest)
            d.old_manifest_etag = found.info.etag
            try:
                existing: Manifest | None = Manifest.model_validate_json(found.body)
            except ValidationError:
                existing = None  # unreadable: replaced by our commit (If-Match on its ETag)
            if existing is not None and existing.source.key != d.key:
                self._check_folder_owner(d, existing.source.key)
            elif existing is not None:
                d.owns_folder = True
                if existing.source.etag == d.etag:
                    self._mark(d, Outcome.DONE)
                    return Outcome.ALREADY
        except ObjectNotFound:
            pass
        try:
            found = get_capped(self.store, keys.failure)
            try:
                record = FailureRecord.model_validate_json(found.body)
                if record.source.etag == d.etag:
                    if record.final:
                        self._mark(d, Outcome.FAILED)
                        return Outcome.ALREADY
                    # Retryable (run.max_attempts, or requeued by `processor retry`): this is
                    # the next attempt; a success deletes the record (stale_failure).
                    d.attempt = record.attempts + 1
            except ValidationError:
                pass
            d.stale_failure = True
        except ObjectNotFound:
            pass
        request = read_cancel(self.store, keys, d.etag)
        d.cancel_read_at = time.monotonic()
        if request is not None:
            return self.finish_cancelled(d, {"stage": "claimed"}, request=request)
        return None

    def _check_folder_owner(self, d: Delivery, owner: str) -> None:
        """The output folder holds the result of ``owner``, another input whose name maps to the
        same folder (``a.png`` and ``a.jpg``). Its committed result is never replaced: while
        ``owner`` exists this input fails with a record saying so. Once ``owner`` is deleted
        its result is stale and this input's commit replaces it (If-Match on its ETag)."""
        try:
            self.store.head(owner)
        except ObjectNotFound:
            return
        except ObjectUnreadable:
            pass  # it exists (we may not read it): its folder is still its own
        raise InvalidInput(
            f"{d.key} and {owner} both write to {d.item.keys.output_prefix}, which holds the result of {owner}",
            hint="Rename this input: inputs whose names differ only by extension share an output folder.",
        )

    def read_input(self, d: Delivery, *, max_bytes: int) -> InputObject:
        """The input's bytes, metadata and sidecar. The version read is the one recorded: when the
        input was replaced since the scan, ``d`` moves to the new version."""
        keys = d.item.keys
        if d.item.collides_with and not d.owns_folder:
            raise InvalidInput(
                f"{keys.input} and {d.item.collides_with} both write to {keys.output_prefix}",
                hint="Rename one of them: inputs that differ only by extension share an output folder.",
            )
        try:
            obj = self.store.get(keys.input, max_bytes=max_bytes)
        except ObjectTooLarge as exc:
            raise ImageTooLarge(
                f"{keys.input} is {exc.size:,} bytes; limit is {max_bytes:,} (pipeline.decode.max_bytes)"
            ) from exc
        if obj.info.etag != d.etag:
            d.attempt = 1  # the failure record counted attempts at the version listed
        d.etag, d.size = obj.info.etag, obj.info.size
        sidecar = None
        if d.item.sidecar:
            try:
                sidecar = self.store.get(d.item.sidecar, max_bytes=MAX_SIDECAR_BYTES).body
            except ObjectNotFound:
                sidecar = None
            except ObjectTooLarge as exc:
                # Refused from its length, before the body is downloaded.
                raise InvalidSidecar(f"sidecar {d.item.sidecar} is {exc.size:,} bytes; "
                                     f"limit is {MAX_SIDECAR_BYTES:,}") from exc
        return InputObject(body=obj.body, metadata=dict(obj.metadata or {}), sidecar=sidecar)

    def read_style_image(self, key: str, *, max_bytes: int) -> tuple[bytes, str | None]:
        """An input's own style picture (a key ``pipeline.look`` checked), read with the input's
        byte cap: its bytes and ETag. Missing, too large or unnamable is that input's
        ``InvalidSidecar``; an object we may not read is its ``InputUnreadable``."""
        hint = ("Upload the style picture under that key and requeue the photo (processor retry --all "
                "--error InvalidSidecar), or fix or drop style_image and upload the photo again.")
        try:
            obj = self.store.get(key, max_bytes=max_bytes)
        except ObjectNotFound:
            raise InvalidSidecar(f"style_image {key} does not exist in the bucket", hint=hint) from None
        except ObjectTooLarge as exc:
            raise InvalidSidecar(f"style_image {key} is {exc.size:,} bytes; limit is {max_bytes:,} "
                                 f"(pipeline.decode.max_bytes)", hint="Upload a smaller picture of the look.") from exc
        except InvalidKey as exc:
            raise InvalidSidecar(f"style_image {key} cannot be read under that name: {exc}", hint=hint) from None
        except ObjectUnreadable as exc:
            raise InputUnreadable(f"style_image {key}: {exc}") from exc
        return obj.body, obj.info.etag

    # ----------------------------------------------------------------- consumer: publish

    def put_output(self, d: Delivery, key: str, body: bytes, content_type: str) -> None:
        """Write one output without ever replacing a committed one; raises ``AlreadyCommitted``.

        Create-if-absent first. If the key exists, it is either a committed output (another worker
        won: stop) or a leftover of an attempt that died before its commit (replace it, with
        If-Match so a concurrent writer's newer bytes are not clobbered blindly).
        """
        try:
            self.store.put(key, body, content_type=content_type, if_none_match=True)
            return
        except PreconditionFailed:
            pass
        current = self.store.head(key)
        if self._committed(d, or_other_input=True):
            raise AlreadyCommitted(key)
        if self.claims is None:
            # Shards (no claims): this may be the variant of a twin pod on the same index (a
            # Kubernetes Job runs at least once), which it may commit any moment: never replace it.
            raise OutputTaken(key)
        if not self.still_ours(d):
            # The object may be the variant of the worker that took our claim over, which it
            # may commit any moment: only the claim holder replaces outputs.
            raise AlreadyCommitted(key, "claim taken over by another worker")
        try:
            self.store.put(key, body, content_type=content_type, if_match=current.etag)
        except PreconditionFailed as exc:
            raise AlreadyCommitted(key) from exc

    def put_new_output(self, key: str, body: bytes, content_type: str) -> None:
        """Create ``key`` only if absent (an attempt-scoped name); ``AlreadyCommitted`` if taken."""
        try:
            self.store.put(key, body, content_type=content_type, if_none_match=True)
        except PreconditionFailed as exc:
            if self._landed(key, body):  # the name is this attempt's own: a 412 is our lost write
                return
            raise AlreadyCommitted(key, "attempt-scoped name taken") from exc

    def commit(self, d: Delivery, manifest: Manifest) -> Outcome:
        """Acknowledge: write ``manifest.json`` last and conditionally, then the done marker.
        ``DONE``, or ``REFUSED`` when another worker took the claim or committed first."""
        keys = d.item.keys
        if not self.still_ours(d):
            log.warning("commit_refused", extra={"key": d.key, "reason": "claim taken over by another worker"})
            return Outcome.REFUSED
        condition = {"if_match": d.old_manifest_etag} if d.old_manifest_etag else {"if_none_match": True}
        body = manifest.to_json_bytes()
        try:
            self.store.put(keys.manifest, body, content_type="application/json", **condition)
        except PreconditionFailed:
            if not self._landed(keys.manifest, body):
                log.warning("commit_refused", extra={"key": d.key, "reason": "manifest changed since we read it"})
                return Outcome.REFUSED
        log.info("committed", extra={"key": d.key, "etag": d.etag, "variants": len(manifest.variants),
                                     "seconds": round(sum(manifest.timings.values()), 3)})
        self._mark(d, Outcome.DONE)
        if d.stale_failure:
            self._delete_quietly(keys.failure)
        return Outcome.DONE

    def _landed(self, key: str, body: bytes) -> bool:
        """Whether ``key`` holds exactly ``body``: a conditional write answered 412 because our own
        first try landed and its response was lost (the store retried it). A manifest names its
        worker, attempt and timings, and an attempt-scoped output its token: no other writer's
        bytes are these."""
        try:
            current = self.store.get(key, max_bytes=len(body))
        except (ObjectNotFound, ObjectTooLarge):
            return False
        if current.body != body:
            return False
        log.info("write_response_lost", extra={"key": key, "bytes": len(body)})
        return True

    def fail(self, d: Delivery, error: ItemError, source: Source) -> Outcome:
        """Reject: the failure record. Final (plus the ``failed`` done marker) for a bad input or a
        spent retry budget: ``FAILED``; else retryable, with no marker, so the next scan offers the
        input again: ``RETRY``. ``REFUSED`` / ``ALREADY`` when another worker holds the claim or
        has committed this version."""
        # Same rule as the commit: only the claim holder writes, and never beside a committed
        # result. A paused worker's late record would otherwise overwrite the record of the
        # worker that took over (or a `processor retry` requeue), or leave a failure record, and
        # a `failed` marker that the scan prefers, next to another worker's good manifest.
        if not self.still_ours(d):
            log.warning("failure_refused", extra={"key": d.key, "reason": "claim taken over by another worker"})
            return Outcome.REFUSED
        if self._committed(d):
            log.warning("failure_refused", extra={"key": d.key, "reason": "already committed by another worker"})
            return Outcome.ALREADY
        if self.worker is None:
            raise TypeError("BucketQueue.fail writes a failure record: construct the queue with worker=")
        final = is_final(error, d.attempt, self.max_attempts)
        # A style this worker cannot load says nothing about the input: no attempt is spent on it.
        attempts = d.attempt - 1 if isinstance(error, StyleUnavailable) else d.attempt
        record = FailureRecord(
            source=source,
            error=type(error).__name__,
            message=str(error),
            hint=error.hint,
            permanent=isinstance(error, InvalidInput),
            attempts=attempts,
            final=final,
            max_attempts=self.max_attempts,
            worker=self.worker,
            trace_id=d.trace_id,
        )
        self.store.put(d.item.keys.failure, record.to_json_bytes(), content_type="application/json")
        log.warning("input_failed", extra={"key": d.key, "error": record.error, "detail": record.message,
                                           "attempt": d.attempt, "final": final})
        if not final:
            return Outcome.RETRY
        self._mark(d, Outcome.FAILED)
        return Outcome.FAILED

    def mark_failed(self, d: Delivery) -> Outcome:
        """The ``failed`` done marker without a record, for an input whose record key the store
        refuses (``InvalidKey``: an object outside our layout made it a folder): ``FAILED``."""
        self._mark(d, Outcome.FAILED)
        return Outcome.FAILED

    def close(self) -> None:
        """Stop the queue's own threads (the cancel watch, the keyed hint's writer), if it started
        them; announced uploads are written first."""
        if self._cancels is not None:
            self._cancels.close()
        self.arrivals.close()

    def watch_cancel(self, d: Delivery, *, every_s: float) -> AbstractContextManager[Watched]:
        """While in the context, ``d``'s cancel request is read every ``every_s`` on a thread of the
        queue's own (``processor.queue.cancel.CancelWatch``); the engines' progress hook calls the
        ``Watched``'s ``stop_if_requested``, which does no I/O."""
        if self._cancels is None:
            self._cancels = CancelWatch(self.store, every_s)
        return self._cancels.watching(d.item.keys, d.etag, last_read=d.cancel_read_at)

    def finish_cancelled(self, d: Delivery, progress: Mapping[str, object], *,
                         request: CancelRecord | None = None) -> Outcome:
        """Record the cancel of ``d`` where its work stopped (``progress``: the engine's last report):
        the cancel record, then the ``cancelled`` done marker: ``CANCELLED``. ``REFUSED`` /
        ``ALREADY`` when another worker holds the claim or has committed this version (as ``fail``)."""
        if not self.still_ours(d):
            log.warning("cancel_refused", extra={"key": d.key, "reason": "claim taken over by another worker"})
            return Outcome.REFUSED
        if self._committed(d):
            log.warning("cancel_refused", extra={"key": d.key, "reason": "already committed"})
            return Outcome.ALREADY
        keys = d.item.keys
        request = request or read_cancel(self.store, keys, d.etag)
        record = stopped_record(request, Source(key=d.key, etag=d.etag, size=d.size), progress,
                                worker=self.worker, trace_id=d.trace_id)
        self.store.put(keys.cancel, record.to_json_bytes(), content_type="application/json")
        self._mark(d, Outcome.CANCELLED)
        log.info("cancelled", extra={"key": d.key, "etag": d.etag, "stage": record.stage, "step": record.step})
        return Outcome.CANCELLED

    # ----------------------------------------------------------------- the worker's own record

    def announce_worker(self, record: WorkerRecord, *, prune: bool = False) -> None:
        """Write this worker's capabilities record (``processor.queue.workers``); with ``prune``
        (at start), also delete the records of workers dead for long, judged on the store's clock."""
        written = write_record(self.store, self.layout, record)
        if prune:
            prune_stale(self.store, self.layout, written.last_modified,
                        keep=record_key(self.layout, record.worker.id))

    def withdraw_worker(self, worker_id: str) -> None:
        """Delete this worker's capabilities record (a clean exit)."""
        remove_record(self.store, self.layout, worker_id)

    def release(self, d: Delivery) -> None:
        """Give the claim back (best effort: an expired claim is taken over anyway)."""
        if d.claim and self.claims:
            self.claims.release(d.claim)

    def still_ours(self, d: Delivery) -> bool:
        """False when another worker has taken this delivery's claim over (read from the store now).

        Checked after the HEAD before an overwrite and before the commit, so a worker that was
        paused past its TTL neither replaces the variants of the worker that took over (which it
        could otherwise do between ``_committed`` and its If-Match put, after that worker's
        commit) nor commits over that worker's overwrites. What is left: a worker paused past
        the TTL exactly between this read and its put (see docs/reliability.md)."""
        if not (self.claims and d.claim):
            return True  # shards: no claims; the conditional commit alone decides
        return self.claims.holds(d.claim)

    def _committed(self, d: Delivery, *, or_other_input: bool = False) -> bool:
        """Whether this input version's manifest is committed; with ``or_other_input``, also
        whether another input's is (a name mapping to the same folder): its outputs are not ours
        to replace either."""
        try:
            found = get_capped(self.store, d.item.keys.manifest)
        except ObjectNotFound:
            return False
        if found.info.etag == d.old_manifest_etag:
            return False  # the previous version's manifest, which our commit replaces
        try:
            source = Manifest.model_validate_json(found.body).source
        except ValidationError:
            return False
        if source.key != d.key:
            return or_other_input
        return source.etag == d.etag

    def _mark(self, d: Delivery, outcome: Outcome) -> None:
        """The done marker: lets the next scan skip this version with LIST calls alone."""
        self.store.put(d.item.keys.done_marker(d.etag, outcome), b"", content_type="text/plain")

    def _delete_quietly(self, key: str) -> None:
        try:
            self.store.delete(key)
        except StoreError as exc:
            log.warning("delete_failed", extra={"key": key, "error": type(exc).__name__})
