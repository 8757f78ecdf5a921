"""The worker's lifecycle: scan, claim, prefetch, compute, upload, commit, release, shut down.

Three stages run at once with bounded queues between them, so the compute stage (the GPU) never
waits for the network and memory stays flat however many inputs there are::

    fetch thread   claim → check for an existing result → GET input (+ sidecar) → decode
         │  queue of run.prefetch items (their claims are renewed while they wait)
    main thread    render every style
         │  queue of run.upload_queue items
    upload thread  encode → put variants → commit manifest (conditional) → done marker → release

The commit: ``manifest.json`` is written last with ``If-None-Match: *`` (or ``If-Match`` on the
manifest of the input's previous version). A worker that was paused past its claim's TTL loses
that race and publishes nothing (``commit_refused``). Variants are written with the same care: a
variant that already exists is only replaced when no manifest for this input version exists and
the claim object still carries this worker's token; the commit checks the token too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from processor import __version__
from processor.claims import Claim, ClaimKeeper, ClaimManager
from processor.config import Settings
from processor.errors import (
    FatalError,
    ImageTooLarge,
    InvalidInput,
    InvalidKey,
    ItemError,
    ObjectNotFound,
    ObjectTooLarge,
    PreconditionFailed,
    StoreError,
    WorkerUnhealthy,
)
from processor.failpolicy import CircuitBreaker, is_final
from processor.keys import KeyLayout
from processor.log import bind_item
from processor.manifest import FailureRecord, Manifest, Source, WorkerInfo
from processor.metrics import WorkerObserver
from processor.outputs import encode_outputs
from processor.pipeline.base import DecodedImage, VariantImage
from processor.pipeline.caption import Caption, caption_item, caption_used, metadata_prompt
from processor.pipeline.decode import decode_image
from processor.pipeline.render import EngineRegistry, render
from processor.pipeline.sidecar import Sidecar, parse_sidecar
from processor.scan import IncrementalScanner, WorkItem, scan, shard_of
from processor.store.base import ObjectStore

log = logging.getLogger("processor.worker")

#: Passes in a row that made no progress because of store errors before ``--once`` gives up.
MAX_STALLED_PASSES = 5
#: Seconds ``--once`` waits before rescanning inputs that other workers hold.
BUSY_RESCAN_S = 5.0
#: Seconds a stage waits on a full queue before checking whether the pass was aborted.
QUEUE_POLL_S = 0.2
#: Claim TTLs after which a pass takes no new items and the worker rescans. Items skipped as
#: busy are only tried again by a rescan: without this bound, the claim of a crashed worker
#: waited for every other worker to get through its whole backlog (bench/chaos.py measured
#: takeovers 75 s after the last renewal with a 4 s TTL).
PASS_MAX_TTLS = 1.0
#: Outcomes after which the daemon offers an item again at its next (incremental) scan; ``None``
#: is an item the pass never reached (stopped). Busy and lost items are among them: another
#: worker holds them, and if it died its claim must be taken over once the TTL runs out (the
#: promise in README), not at the next full rescan minutes later (bench/chaos.py caught that).
#: The cost is one claim read per held item per scan, as before incremental scans.
RETRY_OUTCOMES = frozenset({"transient", "released", "busy", "lost", "retry", None})

_END = object()


class AlreadyCommitted(Exception):
    """Another worker committed this input version first; ours must not publish."""

    def __init__(self, key: str, reason: str = "already committed by another worker") -> None:
        super().__init__(key)
        self.reason = reason


@dataclass
class Job:
    """One input on its way through the stages."""

    item: WorkItem
    claim: Claim | None
    etag: str
    size: int
    old_manifest_etag: str | None = None
    stale_failure: bool = False
    #: 1, or n + 1 when a retryable failure record says n attempts at this version failed.
    attempt: int = 1
    decoded: DecodedImage | None = None
    sidecar: Sidecar | None = None
    variants: list[VariantImage] = field(default_factory=list)
    #: ``x-amz-meta-prompt`` of the input: replaces its caption.
    metadata_prompt: str | None = None
    caption: Caption | None = None
    error: ItemError | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.item.keys.input


@dataclass
class PassResult:
    outcomes: Counter = field(default_factory=Counter)
    #: Inputs still without a result after this pass (store errors, held by other workers).
    left: int = 0
    #: The pass stopped taking items after PASS_MAX_TTLS claim TTLs; the rest wait for a rescan.
    cut_short: bool = False
    #: Input key -> its outcome in this pass.
    outcome_of: dict[str, str] = field(default_factory=dict)

    @property
    def progress(self) -> int:
        # "retry" spent an attempt: ``--once`` rescans at once, bounded by run.max_attempts.
        return self.outcomes["done"] + self.outcomes["failed"] + self.outcomes["already"] + self.outcomes["retry"]


class Worker:
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
    ) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        #: The caption stage (``processor.pipeline.caption.Captioner``), None when captions are off.
        self.captioner = captioner
        self.layout = KeyLayout(settings.prefixes)
        self.styles = styles or list(settings.run.styles)
        self.info = WorkerInfo(id=worker_id, version=__version__, device=device)
        self.claims = ClaimManager(store, worker_id, settings.claims.ttl_s) if use_claims else None
        self.stop_event = threading.Event()
        self.totals: Counter = Counter()
        self._fatal: BaseException | None = None
        #: Set when any stage dies: the others stop waiting on queues nobody drains.
        self._abort = threading.Event()
        #: All three stage threads count outcomes; ``Counter[k] += 1`` is not atomic.
        self._count_lock = threading.Lock()
        #: Metrics and health hooks (processor.metrics); the default does nothing.
        self.observer = observer or WorkerObserver()
        #: Drives the daemon's full-rescan schedule (injectable for tests).
        self.clock = clock
        #: Non-permanent failures in a row (processor.failpolicy); fed by the compute stage only.
        self.breaker = CircuitBreaker(settings.run.max_consecutive_failures)
        #: Set when the breaker tripped: the pass ends and raises it (exit EXIT_UNHEALTHY).
        self._unhealthy: WorkerUnhealthy | None = None

    # ----------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Finish the item computing now and the uploads queued behind it; take no new work."""
        self.stop_event.set()
        self.observer.stopping()

    def setup(self) -> None:
        self.registry.setup(self.styles)
        # Load the captioner now only when a configured style uses it; a sidecar that picks such
        # a style for one input loads it on first use.
        if self.captioner is not None and caption_used(self.settings.caption, self.settings.styles, self.styles):
            self.captioner.setup()
        self.observer.setup_done()

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
            if result.outcomes["transient"] and not result.progress:
                stalled += 1
                if stalled >= MAX_STALLED_PASSES:
                    log.error("gave_up", extra={"left": result.left, "passes": stalled})
                    return 2
            else:
                stalled = 0
            wait = BUSY_RESCAN_S if not result.outcomes["transient"] else backoff
            backoff = min(backoff * 2, self.settings.run.idle_backoff_max_s)
            self.observer.heartbeat(quiet_s=min(wait, self.settings.claims.ttl_s))
            self.stop_event.wait(min(wait, self.settings.claims.ttl_s))
        return 0

    def run_forever(self) -> int:
        """The daemon: scan, work, and back off while idle (doubling up to idle_backoff_max_s)."""
        interval = self.settings.run.poll_interval_s
        scanner = IncrementalScanner(self.store, self.layout, self.settings.run.full_rescan_s, clock=self.clock)
        while not self.stop_event.is_set():
            try:
                items = self._my_items(scanner)
                result = self.run_pass(items) if items else PassResult()
                scanner.retry_later(i for i in items if result.outcome_of.get(i.keys.input) in RETRY_OUTCOMES)
            except FatalError:
                raise
            except StoreError as exc:
                log.warning("scan_failed", extra={"error": type(exc).__name__, "detail": str(exc)})
                self.observer.scan_failed(f"{type(exc).__name__}: {exc}")
                result = PassResult()
            if result.progress:
                interval = self.settings.run.poll_interval_s
            else:
                interval = min(interval * 2, self.settings.run.idle_backoff_max_s)
                # Never sleep past a due full rescan: it is what finds inputs sorting before the mark.
                wait = max(min(interval, scanner.seconds_to_full()), self.settings.run.poll_interval_s)
                log.debug("idle", extra={"next_scan_s": wait})
                self.observer.heartbeat(quiet_s=wait)
                self.stop_event.wait(wait)
        return 0

    def _my_items(self, scanner: IncrementalScanner | None = None) -> list[WorkItem]:
        scan_started = time.perf_counter()
        backlog = scanner.scan() if scanner else scan(self.store, self.layout)
        items = backlog.pending
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
        return items

    def run_pass(self, items: list[WorkItem]) -> PassResult:
        """One pass over ``items`` through the three stages."""
        result = PassResult()
        ready: queue.Queue = queue.Queue(maxsize=max(1, self.settings.run.prefetch))
        finished: queue.Queue = queue.Queue(maxsize=self.settings.run.upload_queue)
        keeper = ClaimKeeper(self.claims, self.settings.claims.renew_s) if self.claims else None
        if keeper:
            keeper.start()
        self._fatal = None
        self._abort.clear()
        fetcher = threading.Thread(target=self._guard, args=(self._fetch_all, items, ready, keeper, result),
                                   name="fetch", daemon=True)
        uploader = threading.Thread(target=self._guard, args=(self._upload_all, finished, keeper, result),
                                    name="upload", daemon=True)
        fetcher.start()
        uploader.start()
        try:
            while True:
                job = ready.get()
                if job is _END:
                    break
                if self.stop_event.is_set() or self._fatal:
                    self._finish(job, "released", keeper, result)
                    continue
                self._compute(job)
                if not self._offer(finished, job):
                    self._finish(job, "released", keeper, result)
        except BaseException:
            self._abort.set()
            raise
        finally:
            self._offer(finished, _END)
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
        result.left = len(items) - result.progress
        self.totals.update(result.outcomes)
        log.info("pass_done", extra=dict(result.outcomes) | {"left": result.left})
        if self._unhealthy:
            raise self._unhealthy
        return result

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
            if job is not _END:
                self._finish(job, "released", keeper, result)

    def _offer(self, q: queue.Queue, item: object) -> bool:
        """Put ``item`` on a bounded queue unless the pass was aborted (its reader may be gone)."""
        while True:
            try:
                q.put(item, timeout=QUEUE_POLL_S)
                return True
            except queue.Full:
                if self._abort.is_set():
                    return False

    # ----------------------------------------------------------------- stage 1: fetch

    def _fetch_all(self, items: list[WorkItem], ready: queue.Queue, keeper: ClaimKeeper | None,
                   result: PassResult) -> None:
        deadline = time.monotonic() + PASS_MAX_TTLS * self.settings.claims.ttl_s if self.claims else None
        try:
            for item in items:
                if self.stop_event.is_set():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    result.cut_short = True
                    log.info("pass_cut_short", extra={"after_s": round(PASS_MAX_TTLS * self.settings.claims.ttl_s, 1)})
                    break
                job = self._fetch(item, keeper, result)
                if job is not None and not self._offer(ready, job):
                    self._finish(job, "released", keeper, result)
        finally:
            self._offer(ready, _END)

    def _fetch(self, item: WorkItem, keeper: ClaimKeeper | None, result: PassResult) -> Job | None:
        keys = item.keys
        bind_item(keys.input)
        claim = None
        if self.claims:
            try:
                claim = self.claims.acquire(keys.claim, keys.input, item.info.etag)
            except FatalError:
                raise
            except StoreError as exc:
                # Out of retries (an outage): this item waits for the next pass. Raised from this
                # thread it would end the pass and set stop_event, and the daemon would exit.
                log.warning("claim_failed", extra={"key": keys.input, "error": type(exc).__name__, "detail": str(exc)})
                with self._count_lock:
                    result.outcomes["transient"] += 1
                return None
            if claim is None:
                with self._count_lock:
                    result.outcomes["busy"] += 1
                    result.outcome_of[keys.input] = "busy"
                self.observer.item("busy")
                return None
            assert keeper is not None  # run_once starts a keeper whenever claims are on
            keeper.hold(claim)
        job = Job(item=item, claim=claim, etag=item.info.etag, size=item.info.size)
        try:
            if self._existing_result(job):
                self._finish(job, "already", keeper, result)
                return None
            started = time.perf_counter()
            body = self._download(job)
            job.timings["download"] = round(time.perf_counter() - started, 4)
            started = time.perf_counter()
            job.decoded = decode_image(body, self.settings.pipeline.decode, name=keys.input)
            job.timings["decode"] = round(time.perf_counter() - started, 4)
        except ItemError as exc:
            job.error = exc
        except InvalidKey as exc:
            # Listed but unreadable under its name (a file dropped into a local bucket with a "\\"
            # in it, say): retrying cannot help, so it gets a failure record like a bad photo.
            job.error = InvalidInput(str(exc), hint="Rename the input to a plain path: '/' between folders, "
                                                    "no '\\', '..' or empty folder names.")
        except ObjectNotFound:
            self._finish(job, "vanished", keeper, result)  # deleted since the scan
            return None
        except FatalError:
            raise
        except StoreError as exc:
            log.warning("fetch_failed", extra={"key": keys.input, "error": type(exc).__name__, "detail": str(exc)})
            self._finish(job, "transient", keeper, result)
            return None
        return job

    def _existing_result(self, job: Job) -> bool:
        """True when a manifest or failure record for this input version already exists (a crash
        after the commit but before the done marker); notes what the commit must replace."""
        keys = job.item.keys
        try:
            found = self.store.get(keys.manifest)
            job.old_manifest_etag = found.info.etag
            try:
                if Manifest.model_validate_json(found.body).source.etag == job.etag:
                    self._mark(job, "done")
                    return True
            except ValidationError:
                pass  # unreadable: replaced by our commit (If-Match on its ETag)
        except ObjectNotFound:
            pass
        try:
            found = self.store.get(keys.failure)
            try:
                record = FailureRecord.model_validate_json(found.body)
                if record.source.etag == job.etag:
                    if record.final:
                        self._mark(job, "failed")
                        return True
                    # Retryable (run.max_attempts, or requeued by `processor retry`): this is
                    # the next attempt; a success deletes the record (stale_failure below).
                    job.attempt = record.attempts + 1
            except ValidationError:
                pass
            job.stale_failure = True
        except ObjectNotFound:
            pass
        return False

    def _download(self, job: Job) -> bytes:
        """The input's bytes (and its sidecar, parsed); the version read is the one recorded."""
        keys = job.item.keys
        if job.item.collides_with:
            raise InvalidInput(
                f"{keys.input} and {job.item.collides_with} both write to {keys.output_prefix}",
                hint="Rename one of them: inputs that differ only by extension share an output folder.",
            )
        limit = self.settings.pipeline.decode.max_bytes
        try:
            obj = self.store.get(keys.input, max_bytes=limit)
        except ObjectTooLarge as exc:
            raise ImageTooLarge(
                f"{keys.input} is {exc.size:,} bytes; limit is {limit:,} (pipeline.decode.max_bytes)"
            ) from exc
        # The input may have been replaced since the scan: the bytes we read define the version.
        if obj.info.etag != job.etag:
            job.attempt = 1  # the failure record counted attempts at the version listed
        job.etag, job.size = obj.info.etag, obj.info.size
        job.metadata_prompt = metadata_prompt(obj.metadata)
        if job.item.sidecar:
            try:
                job.sidecar = parse_sidecar(self.store.get(job.item.sidecar).body, job.item.sidecar)
            except ObjectNotFound:
                job.sidecar = None
        return obj.body

    # ----------------------------------------------------------------- stage 2: compute

    def _compute(self, job: Job) -> None:
        bind_item(job.key)
        self.observer.heartbeat()
        if job.error or (job.claim and job.claim.lost.is_set()):
            return
        assert job.decoded is not None  # set by the fetch stage, which sets job.error instead on failure
        styles = (job.sidecar.styles if job.sidecar and job.sidecar.styles else self.styles)
        overrides = job.sidecar.style_overrides() if job.sidecar else None
        try:
            context, job.caption = caption_item(
                self.captioner, job.decoded.image, settings=self.settings.caption, styles=self.settings.styles,
                style_names=styles, sidecar_prompt=job.sidecar.prompt if job.sidecar else None,
                metadata_prompt=job.metadata_prompt,
            )
            if job.caption is not None and job.caption.seconds:
                job.timings["caption"] = job.caption.seconds
            job.variants, timings = render(job.decoded.image, styles, self.registry, overrides, context)
            job.timings.update(timings)
        except ItemError as exc:
            job.error = exc
            if self.breaker.failed(job.key, exc) and not self._unhealthy:
                self._trip()
        else:
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

    def _upload_all(self, finished: queue.Queue, keeper: ClaimKeeper | None, result: PassResult) -> None:
        while True:
            job = finished.get()
            if job is _END:
                return
            bind_item(job.key)
            if job.claim and job.claim.lost.is_set():
                log.warning("claim_lost_skip", extra={"key": job.key})
                self._finish(job, "lost", keeper, result)
                continue
            try:
                outcome = self._publish_failure(job) if job.error else self._publish(job)
            except FatalError:
                self._finish(job, "released", keeper, result)
                raise
            except InvalidKey as exc:
                outcome = self._unstorable(job, exc)
            except StoreError as exc:
                log.warning("upload_failed", extra={"key": job.key, "error": type(exc).__name__, "detail": str(exc)})
                outcome = "transient"
            self._finish(job, outcome, keeper, result)

    def _unstorable(self, job: Job, exc: InvalidKey) -> str:
        """The store refused one of this input's result keys (on a file system: a file where another
        input's outputs need a folder). No retry can help: record it as a failure of the input."""
        if job.error is None:
            job.error = InvalidInput(
                f"{job.key}: its results cannot be stored: {exc}",
                hint="Rename the input so that its name does not clash with another input's results folder.",
            )
            try:
                return self._publish_failure(job)
            except InvalidKey as again:
                exc = again
            except StoreError as again:
                log.warning("upload_failed",
                            extra={"key": job.key, "error": type(again).__name__, "detail": str(again)})
                return "transient"
        log.error("unrecordable", extra={"key": job.key, "error": type(exc).__name__, "detail": str(exc)})
        return "transient"

    def _publish(self, job: Job) -> str:
        assert job.decoded is not None  # only items that computed are published
        keys = job.item.keys
        started = time.perf_counter()
        sheet = self.settings.pipeline.contact_sheet_height if self.settings.pipeline.contact_sheet else None
        files, entries, sheet_name = encode_outputs(
            job.decoded.image, job.variants, output_prefix=keys.output_prefix, sheet_height=sheet,
            png_compress_level=self.settings.pipeline.png_compress_level,
        )
        job.timings["encode"] = round(time.perf_counter() - started, 4)
        started = time.perf_counter()
        try:
            for f in files:
                self._put_output(job, keys.output_prefix + f.name, f.body, f.content_type)
        except AlreadyCommitted as exc:
            log.warning("commit_refused", extra={"key": job.key, "reason": exc.reason})
            return "refused"
        job.timings["upload"] = round(time.perf_counter() - started, 4)
        manifest = Manifest(
            source=self._source(job),
            variants=entries,
            contact_sheet=keys.output_prefix + sheet_name if sheet_name else None,
            timings=job.timings,
            worker=self.info,
            caption=self.captioner.record(job.caption)
            if job.caption is not None and self.captioner is not None else None,
            attempt=job.attempt,
        )
        started = time.perf_counter()
        if not self._still_ours(job):
            log.warning("commit_refused", extra={"key": job.key, "reason": "claim taken over by another worker"})
            return "refused"
        try:
            if job.old_manifest_etag:
                self.store.put(keys.manifest, manifest.to_json_bytes(), content_type="application/json",
                               if_match=job.old_manifest_etag)
            else:
                self.store.put(keys.manifest, manifest.to_json_bytes(), content_type="application/json",
                               if_none_match=True)
        except PreconditionFailed:
            log.warning("commit_refused", extra={"key": job.key, "reason": "manifest changed since we read it"})
            return "refused"
        self.observer.stage("commit", time.perf_counter() - started)
        log.info("committed", extra={"key": job.key, "etag": job.etag, "variants": len(entries),
                                     "seconds": round(sum(job.timings.values()), 3)})
        self._mark(job, "done")
        if job.stale_failure:
            self._delete_quietly(keys.failure)
        return "done"

    def _put_output(self, job: Job, key: str, body: bytes, content_type: str) -> None:
        """Write one output without ever replacing a committed one.

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
        if self._committed(job):
            raise AlreadyCommitted(key)
        if not self._still_ours(job):
            # The object may be the variant of the worker that took our claim over, which it
            # may commit any moment: only the claim holder replaces outputs.
            raise AlreadyCommitted(key, "claim taken over by another worker")
        try:
            self.store.put(key, body, content_type=content_type, if_match=current.etag)
        except PreconditionFailed as exc:
            raise AlreadyCommitted(key) from exc

    def _still_ours(self, job: Job) -> bool:
        """False when another worker has taken this job's claim over (read from the store now).

        Checked after the HEAD before an overwrite and before the commit, so a worker that was
        paused past its TTL neither replaces the variants of the worker that took over (which it
        could otherwise do between ``_committed`` and its If-Match put, after that worker's
        commit) nor commits over that worker's overwrites. What is left: a worker paused past
        the TTL exactly between this read and its put (see docs/reliability.md)."""
        if not (self.claims and job.claim):
            return True  # shards: no claims; the conditional commit alone decides
        return self.claims.holds(job.claim)

    def _committed(self, job: Job) -> bool:
        try:
            found = self.store.get(job.item.keys.manifest)
        except ObjectNotFound:
            return False
        if found.info.etag == job.old_manifest_etag:
            return False  # the previous version's manifest, which our commit replaces
        try:
            return Manifest.model_validate_json(found.body).source.etag == job.etag
        except ValidationError:
            return False

    def _publish_failure(self, job: Job) -> str:
        """The failure record; final (plus the ``failed`` done marker) for a bad input or a spent
        retry budget, else retryable: no marker, so the next scan offers the input again."""
        exc = job.error
        assert exc is not None  # only items that failed are published as failures
        # Same rule as the commit: only the claim holder writes, and never beside a committed
        # result. A paused worker's late record would otherwise overwrite the record of the
        # worker that took over (or a `processor retry` requeue), or leave a failure record, and
        # a `failed` marker that the scan prefers, next to another worker's good manifest.
        if not self._still_ours(job):
            log.warning("failure_refused", extra={"key": job.key, "reason": "claim taken over by another worker"})
            return "refused"
        if self._committed(job):
            log.warning("failure_refused", extra={"key": job.key, "reason": "already committed by another worker"})
            return "already"
        max_attempts = self.settings.run.max_attempts
        final = is_final(exc, job.attempt, max_attempts)
        record = FailureRecord(
            source=self._source(job),
            error=type(exc).__name__,
            message=str(exc),
            hint=exc.hint,
            permanent=isinstance(exc, InvalidInput),
            attempts=job.attempt,
            final=final,
            max_attempts=max_attempts,
            worker=self.info,
        )
        self.store.put(job.item.keys.failure, record.to_json_bytes(), content_type="application/json")
        log.warning("input_failed", extra={"key": job.key, "error": record.error, "detail": record.message,
                                           "attempt": job.attempt, "final": final})
        if not final:
            return "retry"
        self._mark(job, "failed")
        return "failed"

    def _source(self, job: Job) -> Source:
        decoded = job.decoded
        return Source(
            key=job.key,
            etag=job.etag,
            size=job.size,
            width=decoded.image.width if decoded else None,
            height=decoded.image.height if decoded else None,
            format=decoded.format if decoded else None,
            notes=decoded.notes if decoded else [],
        )

    # ----------------------------------------------------------------- bookkeeping

    def _mark(self, job: Job, outcome: str) -> None:
        """The done marker: lets the next scan skip this version with LIST calls alone."""
        self.store.put(job.item.keys.done_marker(job.etag, outcome), b"", content_type="text/plain")

    def _delete_quietly(self, key: str) -> None:
        try:
            self.store.delete(key)
        except StoreError as exc:
            log.warning("delete_failed", extra={"key": key, "error": type(exc).__name__})

    def _finish(self, job: Job, outcome: str, keeper: ClaimKeeper | None, result: PassResult) -> None:
        bind_item(job.key)
        with self._count_lock:
            result.outcomes[outcome] += 1
            result.outcome_of[job.key] = outcome
        self.observer.item(outcome, job.timings)
        if job.claim and self.claims is not None and keeper is not None:  # a keeper runs exactly when claims are on
            keeper.drop(job.claim)
            self.claims.release(job.claim)
