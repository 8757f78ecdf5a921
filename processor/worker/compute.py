"""The compute stage's call: the jobs it took together (one, or ``run.batch_inputs`` prepared
ones) rendered in one call of the item pipeline, or one job in a compute process, each job with
its own trace span, cancel watch and progress hook, and each with its own outcome."""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from processor.errors import ItemError
from processor.log import bind_item
from processor.pipeline.item import ItemPipeline, Rendered
from processor.queue.claims import Claim, ClaimProgress
from processor.queue.protocol import BucketQueue
from processor.tracing import Tracer
from processor.worker.cpu_pool import ProcessCompute
from processor.worker.handoff import END
from processor.worker.job import Job

log = logging.getLogger("processor.worker")


def take_waiting(ready: queue.Queue, limit: int) -> list[Job]:
    """Up to ``limit`` jobs already on ``ready``; never waits (a batch takes what is there). The
    end marker stays on the queue for the stage's next take."""
    jobs: list[Job] = []
    while len(jobs) < limit:
        try:
            job = ready.get_nowait()
        except queue.Empty:
            break
        if job is END:
            ready.put_nowait(END)  # the slot it held is free
            break
        jobs.append(job)
    return jobs


def render_jobs(jobs: list[Job], *, pipeline: ItemPipeline, pool: ProcessCompute | None, bucket: BucketQueue,
                tracer: Tracer, heartbeat: Callable[[], None], progress_s: float) -> list[Rendered | ItemError]:
    """Each job's ``Rendered``, or its ``ItemError`` (``JobCancelled`` included), in order. With a
    ``pool`` there is one job: a compute process takes one at a time."""
    # Log lines of a batch name no one input: the ``batch`` line lists them.
    if len(jobs) == 1:
        bind_item(jobs[0].key, jobs[0].trace.trace_id)
    else:
        bind_item(None)
        log.info("batch", extra={"inputs": len(jobs), "keys": [job.key for job in jobs]})
    with ExitStack() as stack:
        hooks = []
        for job in jobs:
            job.report("caption")
            stack.enter_context(tracer.span("render", parent=job.trace))
            cancel = stack.enter_context(bucket.watch_cancel(job.delivery, every_s=progress_s))
            hooks.append(progress_hook(job.claim, cancel, heartbeat))
        if pool is None:
            return pipeline.compute_many([job.prepared for job in jobs],  # type: ignore[misc]
                                         [job.timings for job in jobs], hooks)
        (job,) = jobs
        assert job.prepared is not None
        try:
            # A compute process reports no steps: a cancel takes effect before it starts.
            cancel.stop_if_requested({"stage": "render"})
            return [pool.compute(job.prepared, job.timings)]
        except ItemError as exc:
            return [exc]


def progress_hook(claim: Claim | None, cancel: Any, heartbeat: Callable[[], None]) -> Callable[..., None]:
    """An item's progress hook for the engines: a heartbeat, the claim's progress, and the cancel
    check (a flag the watch's own thread sets: no I/O here)."""

    def report(**progress: Any) -> None:
        heartbeat()  # each step is progress: /healthz must outlast a long item
        if claim is not None:
            claim.report(ClaimProgress(**progress))
        cancel.stop_if_requested(progress)

    return report
