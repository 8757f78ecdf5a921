"""The upload stage's writes for one job, through the bucket protocol: its outputs and then the
manifest (the commit), or its failure record, or its cancel record. ``Worker`` decides when; this
decides what."""

from __future__ import annotations

import logging
import time
import uuid

from processor.errors import InputVanished, InvalidInput, InvalidKey, StoreError, StyleUnavailable
from processor.manifest import Manifest, Source, WorkerInfo
from processor.pipeline.item import Encoded, ItemPipeline
from processor.pipeline.outputs import attempt_scoped
from processor.queue.claims import ClaimProgress
from processor.queue.outcomes import Outcome
from processor.queue.protocol import AlreadyCommitted, BucketQueue, OutputTaken
from processor.queue.submit import filename_from_metadata
from processor.tracing import Tracer
from processor.worker.job import Job
from processor.worker.metrics import WorkerObserver

log = logging.getLogger("processor.worker")


class Publisher:
    """Publishes what the compute stage made of a job; every method returns the job's ``Outcome``
    and may raise ``StoreError``, ``InvalidKey`` (``unstorable`` handles it) or ``FatalError``."""

    def __init__(self, queue: BucketQueue, pipeline: ItemPipeline, info: WorkerInfo, observer: WorkerObserver,
                 tracer: Tracer) -> None:
        self.queue = queue
        self.pipeline = pipeline
        self.info = info
        self.observer = observer
        self.tracer = tracer

    def publish(self, job: Job) -> Outcome:
        """The cancel record of a cancelled job, the failure record of a failed one, else its
        outputs and manifest."""
        if job.cancelled is not None:
            return self.queue.finish_cancelled(job.delivery, job.cancelled.progress)
        return self.failure(job) if job.error else self.outputs_and_commit(job)

    def unstorable(self, job: Job, exc: InvalidKey) -> Outcome:
        """The store refused one of this input's result keys (on a file system: a file where another
        input's outputs need a folder). No retry can help: record it as a failure of the input."""
        if job.error is None:
            job.error = InvalidInput(
                f"{job.key}: its results cannot be stored: {exc}",
                hint="Rename the input so that its name does not clash with another input's results folder.",
            )
            try:
                return self.failure(job)
            except InvalidKey as again:
                exc = again
            except StoreError as again:
                log.warning("upload_failed",
                            extra={"key": job.key, "error": type(again).__name__, "detail": str(again)})
                return Outcome.TRANSIENT
        # The record's own key is blocked (on a file system: another object's folder is there, so
        # the bucket holds objects no input of ours derives). The `failed` done marker alone keeps
        # scans off this version, so the worker does not retry it every pass, forever.
        log.error("unrecordable", extra={"key": job.key, "error": type(exc).__name__, "detail": str(exc)})
        try:
            return self.queue.mark_failed(job.delivery)
        except InvalidKey:
            return Outcome.TRANSIENT

    def outputs_and_commit(self, job: Job) -> Outcome:
        """Encode, put every output, then commit the manifest."""
        if job.claim is not None:
            job.claim.report(ClaimProgress("upload"))
        assert job.prepared is not None and job.rendered is not None  # no error: both stages ran
        delivery, prefix = job.delivery, job.item.keys.output_prefix
        encoded = self.pipeline.encode(job.prepared, job.rendered, output_prefix=prefix, timings=job.timings)
        started = time.perf_counter()
        try:
            with self.tracer.span("upload", parent=job.trace, files=len(encoded.files)):
                try:
                    for f in encoded.files:
                        self.queue.put_output(delivery, prefix + f.name, f.body, f.content_type)
                except OutputTaken as exc:
                    # Shards: a twin pod (or a dead attempt) wrote these names; ours go beside them
                    # under names of our own, created only if absent, and the manifest names ours.
                    files, entries, sheet = attempt_scoped(encoded.files, encoded.variants, encoded.contact_sheet,
                                                           output_prefix=prefix, token=uuid.uuid4().hex[:12])
                    encoded = Encoded(files=files, variants=entries, contact_sheet=sheet)
                    log.info("outputs_attempt_scoped", extra={"key": job.key, "taken": str(exc)})
                    for f in encoded.files:
                        self.queue.put_new_output(prefix + f.name, f.body, f.content_type)
        except AlreadyCommitted as exc:
            log.warning("commit_refused", extra={"key": job.key, "reason": exc.reason})
            return Outcome.REFUSED
        job.timings["upload"] = round(time.perf_counter() - started, 4)
        manifest = Manifest(
            source=self._source(job),
            variants=encoded.variants,
            contact_sheet=prefix + encoded.contact_sheet if encoded.contact_sheet else None,
            timings=job.timings,
            worker=self.info,
            caption=job.rendered.caption,
            attempt=delivery.attempt,
            trace_id=job.trace.trace_id,
        )
        started = time.perf_counter()
        with self.tracer.span("commit", parent=job.trace):
            outcome = self.queue.commit(delivery, manifest)
        if outcome is Outcome.DONE:
            self.observer.stage("commit", time.perf_counter() - started)
        return outcome

    def failure(self, job: Job) -> Outcome:
        """The failure record (``BucketQueue.fail``). A vanished input's record is retryable (no
        done marker), yet the input waits for no one: its outcome is ``VANISHED``. An unavailable
        style's is retryable too, by another worker: ``STYLE_UNAVAILABLE``."""
        assert job.error is not None
        outcome = self.queue.fail(job.delivery, job.error, self._source(job))
        if isinstance(job.error, InputVanished) and outcome is Outcome.RETRY:
            return Outcome.VANISHED
        if isinstance(job.error, StyleUnavailable) and outcome is Outcome.RETRY:
            return Outcome.STYLE_UNAVAILABLE
        return outcome

    def _source(self, job: Job) -> Source:
        decoded = job.decoded
        return Source(
            key=job.key,
            etag=job.etag,
            size=job.delivery.size,
            width=decoded.image.width if decoded else None,
            height=decoded.image.height if decoded else None,
            format=decoded.format if decoded else None,
            notes=decoded.notes if decoded else [],
            color_profile=decoded.color_profile if decoded else None,
            filename=filename_from_metadata(job.input.metadata) if job.input is not None else None,
        )

