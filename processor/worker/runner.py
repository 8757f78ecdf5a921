"""The worker's lifecycle: scan, claim, prefetch, compute, upload, commit, release, shut down.

Three stages run at once with bounded queues between them, so the compute stage (the GPU) never
waits for the network and memory stays flat however many inputs there are::

    fetch thread   claim → check for an existing result → GET input (+ sidecar) → decode
         │  queue of run.prefetch items (their claims are renewed while they wait)
    main thread    render every style (with run.cpu_workers compute processes: one thread per process)
         │  queue of run.upload_queue items
    upload thread  encode → put variants → commit manifest (conditional) → done marker → release

The daemon's loop and its waits are ``processor.worker.daemon``'s: hints end an idle wait, and
while a pass computes the fetch stage scans what a hint announces, so new work joins the pass.

With tracing on (``processor.tracing``) each item is one trace: an ``item`` span from its claim to
its outcome, with ``claim``, ``download``, ``decode``, ``render``, ``upload`` and ``commit`` under it.

The worker only moves jobs between stages. What an input's state in the bucket is, and how it
changes (claim, existing result, put output, commit, failure record, done marker, release), is
``processor.queue.protocol.BucketQueue``'s; what happens to the pixels is
``processor.pipeline.item.ItemPipeline``'s. Every job leaves through ``_finish``, with one
``Outcome``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from processor import __version__
from processor.config import Settings
from processor.errors import (
    EXIT_INCOMPLETE,
    EXIT_STOPPED,
    FatalError,
    InputUnreadable,
    InputVanished,
    InvalidInput,
    InvalidKey,
    ItemError,
    JobCancelled,
    ObjectNotFound,
    ObjectUnreadable,
    StageFailed,
    StoreError,
    StyleUnavailable,
    WorkerUnhealthy,
)
from processor.log import bind_item
from processor.manifest import WorkerInfo
from processor.pipeline.item import ItemPipeline
from processor.pipeline.render import EngineRegistry
from processor.queue.claims import ClaimKeeper, ClaimManager
from processor.queue.failpolicy import CircuitBreaker
from processor.queue.hints.base import Hint, HintSource, Wakeup
from processor.queue.keys import KeyLayout
from processor.queue.outcomes import Outcome
from processor.queue.protocol import BucketQueue, Delivery
from processor.queue.scan import IncrementalScanner, WorkItem, scan, shard_of
from processor.store.base import ObjectStore
from processor.tracing import NO_SPAN, NO_TRACING, Span, Tracer
from processor.worker.capabilities import WorkerCapabilities
from processor.worker.compute import render_jobs, take_waiting
from processor.worker.cpu_pool import ProcessCompute
from processor.worker.handoff import END, QUEUE_POLL_S, offer, take
from processor.worker.job import Job, PassResult
from processor.worker.metrics import GuardedObserver, WorkerObserver
from processor.worker.presence import WorkerPresence
from processor.worker.publish import Publisher

log = logging.getLogger("processor.worker")

#: Passes in a row that made no progress because of store errors before ``--once`` gives up.
MAX_STALLED_PASSES = 5
#: Seconds ``--once`` waits before rescanning inputs that other workers hold.
BUSY_RESCAN_S = 5.0
#: Claim TTLs after which a pass takes no new items and the worker rescans. Items skipped as
#: busy are only tried again by a rescan: without this bound, the claim of a crashed worker
#: waited for every other worker to get through its whole backlog (bench/chaos.py measured
#: takeovers 75 s after the last renewal with a 4 s TTL).
PASS_MAX_TTLS = 1.0
#: Input versions this worker remembers leaving to other workers (a style they ask for cannot load
#: here); past this many the oldest is forgotten, and offered to this worker again.
MAX_LEFT_FOR_OTHERS = 100_000
__all__ = ["Job", "PassResult", "Worker"]


class Worker:
    """Moves jobs between the fetch, compute and upload stages; a pass at a time (``run_pass``),
    drained once (``run_once``) or as a daemon (``processor.worker.daemon.run_daemon``, which
    drives it from above: this class knows nothing of the daemon's loop)."""

    def __init__(
        self,
        store: ObjectStore,
        settings: Settings,
        registry: EngineRegistry,
        *,
        worker_id: str,
        styles: list[str] | None = None,
        device: str = "cpu",
        use_claims: bool = True,
        observer: WorkerObserver | None = None,
        captioner: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
        hints: Sequence[HintSource] = (),
        compute_pool: ProcessCompute | None = None,
        tracer: Tracer = NO_TRACING,
        announce: bool = False,
    ) -> None:
        self.store = store
        self.settings = settings
        self.layout = KeyLayout(settings.prefixes)
        self.styles = styles or list(settings.run.styles)
        self.info = WorkerInfo(id=worker_id, version=__version__, device=device)
        self.claims = (ClaimManager(store, worker_id, settings.claims.ttl_s, settings.claims.max_ttl_s)
                       if use_claims else None)
        self.queue = BucketQueue(store, self.layout, claims=self.claims, worker=self.info,
                                 max_attempts=settings.run.max_attempts)
        #: The stages; ``captioner`` (``processor.pipeline.caption.Captioner``) is None when captions are off.
        self.pipeline = ItemPipeline(settings, registry, styles=self.styles, captioner=captioner)
        self.stop_event = threading.Event()
        self.totals: Counter[Outcome] = Counter()
        self._fatal: BaseException | None = None
        #: Set when any stage dies: the others stop waiting on queues nobody drains.
        self._abort = threading.Event()
        #: All three stage threads count outcomes; ``Counter[k] += 1`` is not atomic.
        self._count_lock = threading.Lock()
        #: With ``announce``, this worker's capabilities record in the bucket (processor.worker.presence):
        #: kept while it runs, from the same hooks as the metrics.
        self.capabilities = WorkerCapabilities(settings, self.styles, self.info, self.pipeline)
        self.presence = (WorkerPresence(self.queue, self.capabilities.record, stall_s=settings.metrics.stall_s)
                         if announce else None)
        #: Metrics and health hooks (processor.worker.metrics), guarded: a raising hook is logged and
        #: swallowed. The default does nothing.
        self.observer = GuardedObserver(observer or WorkerObserver(), *([self.presence] if self.presence else []))
        #: Drives the daemon's full-rescan schedule (injectable for tests).
        self.clock = clock
        #: Non-permanent failures in a row (processor.queue.failpolicy); fed by the compute stage only.
        self.breaker = CircuitBreaker(settings.run.max_consecutive_failures)
        #: Set when the breaker tripped: the pass ends and raises it (exit EXIT_UNHEALTHY).
        self._unhealthy: WorkerUnhealthy | None = None
        #: Where hint sources tell the daemon that work may have arrived (processor.queue.hints);
        #: the sources run while the daemon does (processor.worker.daemon).
        self.wakeup = Wakeup()
        self.hint_sources = list(hints)
        #: Processes that compute CPU-only styles (processor.worker.cpu_pool); None: this process,
        #: one item at a time. With a pool, that many compute threads each wait on one process.
        self.compute_pool = compute_pool
        self.compute_slots = compute_pool.size if compute_pool is not None else 1
        #: Items taken by the compute stage and not yet handed on (the fetch stage waits for work
        #: to join the pass while this is non-zero).
        self._computing = 0
        #: Guards the breaker and ``_computing`` (several compute threads with a pool).
        self._compute_lock = threading.Lock()
        #: Spans of scans and items (``processor.tracing``); the default records nothing.
        self.tracer = tracer
        #: What the upload stage writes for each job (``processor.worker.publish``).
        self.publisher = Publisher(self.queue, self.pipeline, self.info, self.observer, tracer)
        #: Input key -> ETag of the versions that asked for a style this worker cannot load: their
        #: StyleUnavailable records are written, and scans leave them to workers that can.
        self._left_for_others: OrderedDict[str, str] = OrderedDict()
        self._left_lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Finish the items computing now and the uploads queued behind them; take no new work."""
        self.stop_event.set()
        self.observer.stopping()

    def setup(self) -> None:
        if self.presence is not None:
            self.presence.start()  # "starting": the API knows a worker is coming while models load
        self.pipeline.setup()
        if self.compute_pool is not None:
            self.compute_pool.start()
        self.capabilities.loaded = True
        self.observer.setup_done()

    def close(self) -> None:
        """Stop the compute processes and the queue's cancel watch (the hint sources stop with
        the daemon), and delete the capabilities record."""
        if self.compute_pool is not None:
            self.compute_pool.close()
        self.queue.close()
        if self.presence is not None:
            self.presence.close()

    def run_once(self) -> int:
        """Drain the inputs: pass after pass until every input has a result. Returns an exit code."""
        stalled = 0
        backoff = self.settings.run.poll_interval_s
        while not self.stop_event.is_set():
            items = self._my_items()
            if not items:
                return 0
            result = self.run_pass(items)
            if result.left == 0 or (result.cut_short and result.progress):
                continue  # rescan: inputs may have arrived meanwhile, claims may have expired
            if result.outcomes[Outcome.TRANSIENT] and not result.progress:
                stalled += 1
                if stalled >= MAX_STALLED_PASSES:
                    log.error("gave_up", extra={"left": result.left, "passes": stalled})
                    return EXIT_INCOMPLETE
            else:
                stalled = 0
            wait = BUSY_RESCAN_S if not result.outcomes[Outcome.TRANSIENT] else backoff
            backoff = min(backoff * 2, self.settings.run.idle_backoff_max_s)
            self.observer.heartbeat(quiet_s=min(wait, self.settings.claims.ttl_s))
            self.stop_event.wait(min(wait, self.settings.claims.ttl_s))
        # Stopped (SIGTERM): non-zero while inputs remain, so an Indexed Job retries the index.
        left = len(self._my_items())
        log.info("stopped_early" if left else "stopped_drained", extra={"left": left})
        return EXIT_STOPPED if left else 0

    def scan_for_work(self, scanner: IncrementalScanner, hint: Hint | None = None) -> list[WorkItem]:
        """The daemon's scan: what it should take now (the prefixes a hint named are listed too)."""
        return self._my_items(scanner, hint.prefixes if hint is not None else ())

    def _my_items(self, scanner: IncrementalScanner | None = None, prefixes: Sequence[str] | frozenset[str] = (),
                  ) -> list[WorkItem]:
        scan_started = time.perf_counter()
        with self.tracer.span("scan", full=scanner is None) as span:
            backlog = scanner.scan(prefixes) if scanner else scan(self.store, self.layout)
            span.set(inputs=backlog.inputs, pending=len(backlog.pending), requests=backlog.requests)
        items = self._not_left_for_others(backlog.pending)
        run = self.settings.run
        if not self.claims:
            index = run.shard_index or 0
            items = [i for i in items if shard_of(i.keys.input, run.shard_count) == index]
        log.info(
            "scanned",
            extra={"inputs": backlog.inputs, "done": backlog.done, "failed": backlog.failed,
                   "pending": len(backlog.pending), "mine": len(items), "requests": backlog.requests,
                   "full": backlog.full},
        )
        # An incremental scan sees only the inputs after the high-water mark: it adds what it
        # found to the backlog gauge instead of replacing the full scan's count.
        self.observer.scanned(len(backlog.pending) - backlog.carried, time.perf_counter() - scan_started,
                              full=backlog.full)
        self.observer.oldest_pending(min((i.info.last_modified.timestamp() for i in backlog.pending), default=None))
        return items

    def _not_left_for_others(self, items: list[WorkItem]) -> list[WorkItem]:
        """``items`` but the versions this worker left to others (a style they ask for cannot load here)."""
        with self._left_lock:
            if not self._left_for_others:
                return items
            left = [i for i in items if self._left_for_others.get(i.keys.input) == i.info.etag]
        if left:
            log.info("left_for_other_workers", extra={"inputs": len(left)})
        return [i for i in items if self._left_for_others.get(i.keys.input) != i.info.etag]

    def run_pass(self, items: list[WorkItem], refill: Callable[[Hint], list[WorkItem]] | None = None) -> PassResult:
        """One pass over ``items`` through the three stages. With ``refill`` (the daemon's scan), hints
        that arrive while the pass computes are scanned on the fetch thread and what they find joins
        this pass."""
        result = PassResult(items=list(items))
        # Enough prepared items for every compute slot or a whole batch (run.batch_inputs), and
        # run.prefetch beyond the one computing.
        batch = self.settings.run.batch_inputs if self.compute_pool is None else 1
        ready: queue.Queue = queue.Queue(maxsize=max(1, self.settings.run.prefetch, self.compute_slots, batch))
        finished: queue.Queue = queue.Queue(maxsize=self.settings.run.upload_queue)
        keeper = (ClaimKeeper(self.claims, self.settings.claims.renew_s, progress_s=self.settings.claims.progress_s)
                  if self.claims else None)
        if keeper:
            keeper.start()
        self._fatal = None
        self._abort.clear()
        #: Set when the compute threads offer no more jobs to the upload stage.
        computed = threading.Event()
        fetcher = threading.Thread(target=self._guard, args=(self._fetch_all, result, ready, keeper, refill),
                                   name="fetch", daemon=True)
        uploader = threading.Thread(target=self._guard, args=(self._upload_all, finished, keeper, result, computed),
                                    name="upload", daemon=True)
        helpers = [threading.Thread(target=self._guard, name=f"compute-{n}", daemon=True,
                                    args=(self._compute_all, ready, finished, keeper, result, fetcher))
                   for n in range(1, self.compute_slots)]
        for thread in (fetcher, uploader, *helpers):
            thread.start()
        try:
            self._compute_all(ready, finished, keeper, result, fetcher)
        except BaseException:
            self._abort.set()
            raise
        finally:
            for helper in helpers:
                helper.join()
            computed.set()
            self._offer(finished, END)
            uploader.join()
            fetcher.join()
            # After an abort, jobs may still sit in the queues: give their claims back now
            # rather than leaving them to expire.
            for q in (ready, finished):
                self._release_queued(q, keeper, result)
            if keeper:
                keeper.stop()
            bind_item(None)  # the lines after the pass are about no input
        if self._fatal:
            raise self._fatal
        result.left = len(result.items) - result.progress
        self.totals.update(result.outcomes)
        log.info("pass_done", extra=result.counts() | {"left": result.left})
        if self._unhealthy:
            raise self._unhealthy
        return result

    def _compute_all(self, ready: queue.Queue, finished: queue.Queue, keeper: ClaimKeeper | None,
                     result: PassResult, fetcher: threading.Thread) -> None:
        """One compute slot: take prepared jobs (with those already waiting, up to
        ``run.batch_inputs``, where this process computes), compute them, hand them to the upload
        stage."""
        while True:
            job = take(ready, lambda: not fetcher.is_alive())
            if job is END:
                return
            # Where this process computes, the prepared jobs already waiting join it (run.batch_inputs).
            jobs = [job, *take_waiting(ready, self.settings.run.batch_inputs - 1 if self.compute_pool is None else 0)]
            with self._compute_lock:
                self._computing += len(jobs)
            try:
                if self.stop_event.is_set() or self._fatal:
                    for job in jobs:
                        self._finish(job, Outcome.RELEASED, keeper, result)
                    continue
                self._compute(jobs)
                for job in jobs:
                    if not self._offer(finished, job):
                        self._finish(job, Outcome.RELEASED, keeper, result)
            finally:
                with self._compute_lock:
                    self._computing -= len(jobs)

    def _guard(self, target: Any, *args: Any) -> None:
        """Run a stage thread; a fatal error stops the whole pass instead of dying silently."""
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            self._fatal = exc
            self._abort.set()
            self.stop_event.set()

    def _release_queued(self, q: queue.Queue, keeper: ClaimKeeper | None, result: PassResult) -> None:
        while True:
            try:
                job = q.get_nowait()
            except queue.Empty:
                return
            if job is not END:
                self._finish(job, Outcome.RELEASED, keeper, result)

    def _offer(self, q: queue.Queue, item: object) -> bool:
        return offer(q, item, self._abort)

    # ----------------------------------------------------------------- stage 1: fetch

    def _fetch_all(self, result: PassResult, ready: queue.Queue, keeper: ClaimKeeper | None,
                   refill: Callable[[Hint], list[WorkItem]] | None) -> None:
        deadline = time.monotonic() + PASS_MAX_TTLS * self.settings.claims.ttl_s if self.claims else None
        todo = deque(result.items)
        try:
            while not self.stop_event.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    result.cut_short = True
                    log.info("pass_cut_short", extra={"after_s": round(PASS_MAX_TTLS * self.settings.claims.ttl_s, 1)})
                    break
                if not todo:
                    if refill is None or not self._join_arrivals(result, ready, refill, todo):
                        break
                    continue
                job = self._fetch(todo.popleft(), keeper, result)
                if job is None:
                    continue
                # Upload to claimed and read, as the worker sees it (the store's clock against its own).
                log.info("fetched", extra={"key": job.key, "since_upload_s": round(
                    time.time() - job.item.info.last_modified.timestamp(), 3)})
                if not self._offer(ready, job):
                    self._finish(job, Outcome.RELEASED, keeper, result)
        finally:
            self._offer(ready, END)

    def _join_arrivals(self, result: PassResult, ready: queue.Queue, refill: Callable[[Hint], list[WorkItem]],
                       todo: deque[WorkItem]) -> bool:
        """The fetch stage ran out of items: while the compute stage still works, wait a moment for a
        hint and scan for what it announces. False once the pass has nothing left to wait for."""
        hint = self.wakeup.wait(QUEUE_POLL_S, stop=self.stop_event)
        if hint is not None:
            arrived = result.join(refill(hint))
            if arrived:
                log.info("joined_pass", extra={"items": len(arrived), "sources": sorted(hint.sources)})
                todo.extend(arrived)
            return True
        with self._compute_lock:
            return self._computing > 0 or not ready.empty()

    def _fetch(self, item: WorkItem, keeper: ClaimKeeper | None, result: PassResult) -> Job | None:
        """Claim, check for an existing result, read and prepare one input; None when it needs no
        compute (it has left through ``_finish``)."""
        trace = self.tracer.start("item", key=item.keys.input, etag=item.info.etag)
        bind_item(item.keys.input, trace.trace_id)
        try:
            with self.tracer.span("claim", parent=trace):
                delivery = self.queue.take(item)
        except FatalError:
            raise
        except Exception as exc:  # a store error, or a bug on this item: never the worker's death
            # Out of retries (an outage), or a fault on this item's claim: it waits for the next
            # pass. Raised from this thread it would end the pass and set stop_event, and the
            # daemon would exit.
            log.warning("claim_failed", extra={"key": item.keys.input, "error": type(exc).__name__,
                                               "detail": str(exc)}, exc_info=not isinstance(exc, StoreError))
            self._finish(self._unclaimed(item, trace), Outcome.TRANSIENT, keeper, result)
            return None
        if delivery is None:
            self._finish(self._unclaimed(item, trace), Outcome.BUSY, keeper, result)
            return None
        if delivery.claim and keeper:
            keeper.hold(delivery.claim)
        delivery.trace_id = trace.trace_id
        job = Job(delivery, trace=trace)
        try:
            ended = self.queue.existing_result(delivery)  # already done or failed, or cancelled
            if ended is not None:
                self._finish(job, ended, keeper, result)
                return None
            job.report("download")
            started = time.perf_counter()
            with self.tracer.span("download", parent=trace):
                job.input = self.queue.read_input(delivery, max_bytes=self.settings.pipeline.decode.max_bytes)
            job.timings["download"] = round(time.perf_counter() - started, 4)
            with self.tracer.span("decode", parent=trace):
                job.prepared = self.pipeline.prepare(job.input.body, name=job.key, sidecar=job.input.sidecar,
                                                     sidecar_name=item.sidecar or "", metadata=job.input.metadata,
                                                     timings=job.timings, read_object=self._read_style_image)
        except ItemError as exc:
            job.error = exc
        except InvalidKey as exc:
            # Listed but unreadable under its name (a file dropped into a local bucket with a "\\"
            # in it, say): retrying cannot help, so it gets a failure record like a bad photo.
            job.error = InvalidInput(str(exc), hint="Rename the input to a plain path: '/' between folders, "
                                                    "no '\\', '..' or empty folder names.")
        except ObjectUnreadable as exc:
            # One object we may not read (a policy, a KMS key, SSE-C): this input's failure record.
            job.error = InputUnreadable(str(exc))
        except ObjectNotFound:
            # Deleted since the scan: its record says so (never final; see InputVanished).
            job.error = InputVanished(f"{job.key} was deleted after the worker listed it, before it was read")
        except FatalError:
            raise
        except StoreError as exc:
            log.warning("fetch_failed", extra={"key": job.key, "error": type(exc).__name__, "detail": str(exc)})
            self._finish(job, Outcome.TRANSIENT, keeper, result)
            return None
        except Exception as exc:  # whatever this input makes crash is its failure record
            log.error("prepare_crashed", extra={"key": job.key, "error": type(exc).__name__, "detail": str(exc)},
                      exc_info=True)
            job.error = StageFailed(f"{job.key}: preparing the input failed: {type(exc).__name__}: {exc}")
        return job

    def _read_style_image(self, key: str) -> tuple[bytes, str | None]:
        """An input's own style picture, read on this (fetch) thread with the input's byte cap."""
        return self.queue.read_style_image(key, max_bytes=self.settings.pipeline.decode.max_bytes)

    @staticmethod
    def _unclaimed(item: WorkItem, trace: Span = NO_SPAN) -> Job:
        """A job for an item we hold no claim on (busy, or the claim failed): for ``_finish``."""
        return Job(Delivery(item=item, claim=None, etag=item.info.etag, size=item.info.size), trace=trace)

    # ----------------------------------------------------------------- stage 2: compute

    def _compute(self, jobs: list[Job]) -> None:
        """Render ``jobs`` (several when ``run.batch_inputs`` took them together); each keeps its own
        outcome: ``rendered``, ``error`` or ``cancelled``."""
        self.observer.heartbeat()
        runnable = [job for job in jobs
                    if not (job.error or (job.claim and job.claim.lost.is_set()) or job.prepared is None)]
        if not runnable:
            return
        self.observer.computed_together(len(runnable))
        outcomes = render_jobs(runnable, pipeline=self.pipeline, pool=self.compute_pool, bucket=self.queue,
                               tracer=self.tracer, heartbeat=self.observer.heartbeat,
                               progress_s=self.settings.claims.progress_s)
        for job, outcome in zip(runnable, outcomes, strict=True):
            if isinstance(outcome, JobCancelled):  # not a failure: never counted by the breaker
                job.cancelled = outcome
            elif isinstance(outcome, ItemError):
                job.error = outcome
                with self._compute_lock:
                    if self.breaker.failed(job.key, outcome) and not self._unhealthy:
                        self._trip()
            else:
                job.rendered = outcome
                with self._compute_lock:
                    self.breaker.succeeded()

    def _trip(self) -> None:
        """The breaker tripped: take no more work. The item that tripped it and those computed
        before it are still uploaded (their records stay retryable); prefetched items are released
        (run_pass sees stop_event); the pass then raises ``WorkerUnhealthy``."""
        errors = self.breaker.describe()
        log.error("worker_unhealthy", extra={"consecutive_failures": self.breaker.consecutive,
                                             "max_consecutive_failures": self.breaker.threshold,
                                             "last_errors": errors})
        self._unhealthy = WorkerUnhealthy(
            f"{self.breaker.consecutive} items in a row failed in a pipeline stage "
            f"(run.max_consecutive_failures: {self.breaker.threshold}); this worker is likely broken "
            f"(bad deploy, poisoned GPU), not its inputs. Last: {errors[-1] if errors else '?'}. "
            "The items keep retryable failure records; a restarted worker redoes them."
        )
        self.observer.breaker_tripped(errors)
        self.stop_event.set()

    # ----------------------------------------------------------------- stage 3: upload + commit

    def _upload_all(self, finished: queue.Queue, keeper: ClaimKeeper | None, result: PassResult,
                    computed: threading.Event) -> None:
        while True:
            job = take(finished, computed.is_set)
            if job is END:
                return
            bind_item(job.key, job.trace.trace_id)
            if job.claim and job.claim.lost.is_set():
                log.warning("claim_lost_skip", extra={"key": job.key})
                self._finish(job, Outcome.LOST, keeper, result)
                continue
            try:
                outcome = self.publisher.publish(job)
            except FatalError:
                self._finish(job, Outcome.RELEASED, keeper, result)
                raise
            except InvalidKey as exc:
                outcome = self.publisher.unstorable(job, exc)
            except StoreError as exc:
                log.warning("upload_failed", extra={"key": job.key, "error": type(exc).__name__, "detail": str(exc)})
                outcome = Outcome.TRANSIENT
            self._finish(job, outcome, keeper, result)

    # ----------------------------------------------------------------- bookkeeping

    def _finish(self, job: Job, outcome: Outcome, keeper: ClaimKeeper | None, result: PassResult) -> None:
        """Every job leaves the worker here, once: count its outcome, tell the observer, give its
        claim back."""
        bind_item(job.key, job.trace.trace_id)
        job.trace.end(outcome=outcome.value)
        with self._count_lock:
            result.outcomes[outcome] += 1
            result.outcome_of[job.key] = outcome
        self.observer.item(outcome, job.timings)
        if outcome is Outcome.STYLE_UNAVAILABLE:
            with self._left_lock:
                self._left_for_others[job.key] = job.etag
                self._left_for_others.move_to_end(job.key)
                if len(self._left_for_others) > MAX_LEFT_FOR_OTHERS:
                    self._left_for_others.popitem(last=False)
            if isinstance(job.error, StyleUnavailable):
                self.capabilities.note_unavailable(job.error.styles, str(job.error))
            if self.presence is not None:
                self.presence.changed()  # the record says so now, not at the next refresh
        if job.claim and keeper:
            keeper.drop(job.claim)
        self.queue.release(job.delivery)
