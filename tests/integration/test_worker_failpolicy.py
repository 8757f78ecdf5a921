"""The failure policy with a real worker: the retry budget (run.max_attempts), the circuit breaker
(run.max_consecutive_failures) and `processor retry`, on the local store and on SeaweedFS.

The engines are the real toon engine wrapped so that chosen calls raise, as a crashed model does:
render() turns that into StageFailed, exactly as it would for a diffusers bug or a poisoned GPU.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from processor.cli.compose import make_engine
from processor.config import PrefixSettings
from processor.errors import EXIT_UNHEALTHY, CorruptImage, StageFailed, WorkerUnhealthy
from processor.manifest import FailureRecord, Manifest
from processor.pipeline.render import EngineRegistry
from processor.queue.failpolicy import CircuitBreaker
from processor.queue.keys import KeyLayout
from processor.queue.requeue import find_failures, requeue
from processor.queue.scan import scan
from processor.store.local import LocalStore
from processor.worker.daemon import run_daemon
from processor.worker.metrics import PrometheusObserver
from processor.worker.runner import Worker
from testkit.images import bad_inputs, photo_bytes
from testkit.waits import HANG_GUARD_S
from tests.integration.test_s3_integration import cli_env, processor
from tests.unit.test_worker import make_settings

#: What a poisoned CUDA context says on every call after the first fault.
CUDA_FAULT = "CUDA error: an illegal memory access was encountered"
#: Seconds a daemon gets to retry and commit a flaky input in the test below: a hang guard.
DAEMON_DEADLINE_S = HANG_GUARD_S


class FaultyEngine:
    """The real toon engine, except that the calls ``fails(n)`` picks (1-based, counted over
    every engine the factory built) raise like a crashed model."""

    def __init__(self, inner, calls: list[int], fails: Callable[[int], bool]) -> None:
        self.inner, self.calls, self.fails = inner, calls, fails
        self.style_name, self.engine = inner.style_name, inner.engine

    def setup(self) -> None:
        self.inner.setup()

    def __call__(self, image, context=None):
        self.calls.append(len(self.calls) + 1)
        if self.fails(len(self.calls)):
            raise RuntimeError(CUDA_FAULT)
        return self.inner(image, context)

    def describe(self):
        return self.inner.describe()


def faulty_worker(store, settings, fails: Callable[[int], bool], wid: str = "w1", **kw) -> tuple[Worker, list[int]]:
    calls: list[int] = []
    registry = EngineRegistry(settings.styles, lambda name, style: FaultyEngine(make_engine(name, style), calls, fails))
    worker = Worker(store, settings, registry, worker_id=wid, **kw)
    worker.setup()
    return worker, calls


def record_of(store, layout: KeyLayout, key: str) -> FailureRecord:
    return FailureRecord.model_validate_json(store.get(layout.for_input(key).failure).body)


def manifest_of(store, layout: KeyLayout, key: str) -> Manifest:
    return Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body)


def markers(store, layout: KeyLayout, key: str) -> list[str]:
    """The outcomes of the done markers of ``key``'s current version."""
    etag = store.head(key).etag
    keys = layout.for_input(key)
    return sorted(o.key.rsplit(".", 1)[1] for o in store.list(keys.done_prefix) if etag in o.key)


def exists(store, key: str) -> bool:
    return any(o.key == key for o in store.list(key))


@pytest.fixture
def local(tmp_path):
    """``build(**run)``: settings (run.* overrides), a fresh local bucket and its key layout."""
    made = []

    def build(**run: object):
        folder = tmp_path / f"b{len(made)}"
        folder.mkdir()
        made.append(folder)
        settings = make_settings(folder, **run)
        return settings, LocalStore(settings.store.root), KeyLayout(settings.prefixes)
    return build


# --------------------------------------------------------------------------- retry budget


def test_a_flaky_stage_is_retried_and_the_success_records_its_attempt(local):
    settings, store, layout = local()
    store.put("inputs/cow.jpg", photo_bytes(200, 150))
    worker, calls = faulty_worker(store, settings, fails=lambda n: n == 1)

    # First pass: the crash leaves a retryable record and no done marker, so a scan offers it again.
    worker.run_pass(scan(store, layout).pending)
    record = record_of(store, layout, "inputs/cow.jpg")
    assert (record.error, record.attempts, record.permanent, record.final, record.max_attempts) == \
        ("StageFailed", 1, False, False, 3)
    assert CUDA_FAULT in record.message
    assert markers(store, layout, "inputs/cow.jpg") == []
    assert [i.keys.input for i in scan(store, layout).pending] == ["inputs/cow.jpg"]

    assert worker.run_once() == 0
    assert manifest_of(store, layout, "inputs/cow.jpg").attempt == 2
    assert not exists(store, layout.for_input("inputs/cow.jpg").failure)  # the stale record is gone
    assert markers(store, layout, "inputs/cow.jpg") == ["done"]
    assert len(calls) == 2 and worker.totals["retry"] == 1 and worker.totals["done"] == 1


def test_an_always_failing_stage_ends_final_after_max_attempts_and_run_once_terminates(local):
    settings, store, layout = local()  # the defaults: 3 attempts, a breaker at 5 in a row
    store.put("inputs/cow.jpg", photo_bytes(200, 150))
    worker, calls = faulty_worker(store, settings, fails=lambda n: True)

    assert worker.run_once() == 0
    record = record_of(store, layout, "inputs/cow.jpg")
    assert (record.attempts, record.final, record.permanent) == (settings.run.max_attempts, True, False)
    assert markers(store, layout, "inputs/cow.jpg") == ["failed"]
    assert len(calls) == settings.run.max_attempts
    assert worker.totals["retry"] == settings.run.max_attempts - 1 and worker.totals["failed"] == 1

    # Final means final: a new worker's pass finds it failed by listing and computes nothing.
    again, again_calls = faulty_worker(store, settings, fails=lambda n: True, wid="w2")
    assert again.run_once() == 0 and again_calls == []
    assert scan(store, layout).failed == 1


def test_bad_inputs_are_final_at_once_and_never_trip_the_breaker(local):
    settings, store, layout = local(max_consecutive_failures=1)  # any stage crash would trip it
    bad = {f"inputs/bad/{name}.jpg": data for name, data in bad_inputs().items()}
    for key, data in bad.items():
        store.put(key, data)
    store.put("inputs/good.jpg", photo_bytes(200, 150))
    worker, calls = faulty_worker(store, settings, fails=lambda n: False)

    assert worker.run_once() == 0  # no WorkerUnhealthy
    assert len(bad) >= 4
    for key in bad:
        record = record_of(store, layout, key)
        assert (record.attempts, record.permanent, record.final) == (1, True, True), key
        assert markers(store, layout, key) == ["failed"]
    assert manifest_of(store, layout, "inputs/good.jpg").attempt == 1
    assert worker.breaker.consecutive == 0 and len(calls) == 1


def test_an_old_failure_record_reads_as_final(local):
    _settings, _store, _layout = local()
    old = {"schema": "toy-cartoonizer/failure/v1", "status": "failed",
           "source": {"key": "inputs/cow.jpg", "etag": "abc", "size": 3}, "error": "StageFailed",
           "message": "style 'toon' failed", "hint": "report it", "permanent": False, "attempts": 1,
           "worker": {"id": "w0", "version": "0.1.0", "device": "cpu"}, "created_at": "2026-11-01T00:00:00Z"}
    record = FailureRecord.model_validate_json(json.dumps(old))
    assert record.final and record.max_attempts is None and record.requeued_at is None


# --------------------------------------------------------------------------- circuit breaker


def test_the_breaker_stops_a_broken_worker_and_a_healthy_one_redoes_its_items(local):
    settings, store, layout = local(max_consecutive_failures=3, prefetch=2)
    keys = [f"inputs/toy{i}.jpg" for i in range(8)]
    for i, key in enumerate(keys):
        store.put(key, photo_bytes(160, 120, seed=i))
    observer = PrometheusObserver(stall_s=60)
    broken, calls = faulty_worker(store, settings, fails=lambda n: True, observer=observer)

    with pytest.raises(WorkerUnhealthy) as raised:
        broken.run_once()
    assert raised.value.exit_code == EXIT_UNHEALTHY == 7
    assert CUDA_FAULT in str(raised.value)
    assert len(calls) == 3
    failed = [k for k in keys if exists(store, layout.for_input(k).failure)]
    assert failed == keys[:3]
    for key in failed:
        record = record_of(store, layout, key)
        assert (record.attempts, record.final) == (1, False)  # retryable: a healthy worker redoes it
        assert markers(store, layout, key) == []
    for key in keys[3:]:  # untouched: no record, no output, no marker
        assert not any(store.list(layout.for_input(key).output_prefix))
        assert not exists(store, layout.for_input(key).failure) and markers(store, layout, key) == []
    assert list(store.list(layout.claims_prefix)) == []  # prefetched items' claims were given back
    assert broken.totals["released"] >= 1 and broken.totals["retry"] == 3
    assert observer.registry.get_sample_value("processor_breaker_trips_total") == 1
    assert not observer.ready()[0]  # it takes no more work

    healthy, healthy_calls = faulty_worker(store, settings, fails=lambda n: False, wid="w2")
    assert healthy.run_once() == 0
    assert len(healthy_calls) == 8
    for key in keys:
        assert manifest_of(store, layout, key).attempt == (2 if key in failed else 1)
        assert not exists(store, layout.for_input(key).failure)
    assert scan(store, layout).done == 8


def test_one_success_between_failures_resets_the_breaker(local):
    settings, store, layout = local(max_consecutive_failures=3, prefetch=0)
    for i in range(6):
        store.put(f"inputs/toy{i}.jpg", photo_bytes(160, 120, seed=i))
    # Two crashes, one success, over and over: never three crashes in a row, but many in all.
    worker, calls = faulty_worker(store, settings, fails=lambda n: n % 3 != 0)
    assert worker.run_once() == 0
    backlog = scan(store, layout)
    assert backlog.done + backlog.failed == 6 and backlog.done >= 4
    assert len([n for n in calls if n % 3]) > 2 * settings.run.max_consecutive_failures

    # The same crash pattern with a breaker at 2 trips: the reset, not luck, kept the one above going.
    settings2, store2, _ = local(max_consecutive_failures=2, prefetch=0)
    for i in range(6):
        store2.put(f"inputs/toy{i}.jpg", photo_bytes(160, 120, seed=i))
    worker2, _ = faulty_worker(store2, settings2, fails=lambda n: n % 3 != 0)
    with pytest.raises(WorkerUnhealthy):
        worker2.run_once()


def test_a_late_failure_never_lands_beside_another_workers_commit(local):
    """At-least-once: a worker whose attempt crashed resumes after another worker committed the
    same version. Its failure record and `failed` marker would make scans and `processor status`
    call a done input failed (and `processor retry` requeue it): it writes neither."""
    from processor.worker.runner import PassResult

    settings, store, layout = local()
    store.put("inputs/cow.jpg", photo_bytes(200, 150))
    item = scan(store, layout).pending[0]
    late, _ = faulty_worker(store, settings, fails=lambda n: True, wid="late", use_claims=False)
    job = late._fetch(item, None, PassResult())
    late._compute([job])
    assert isinstance(job.error, StageFailed)

    healthy, _ = faulty_worker(store, settings, fails=lambda n: False, wid="healthy")
    assert healthy.run_once() == 0
    assert late.publisher.failure(job) == "already"
    assert not exists(store, layout.for_input("inputs/cow.jpg").failure)
    assert markers(store, layout, "inputs/cow.jpg") == ["done"]
    assert scan(store, layout).done == 1


def test_a_failure_after_the_claim_was_taken_over_is_not_written(local):
    """A worker paused past its claim's TTL must not write over the record (or the requeue) of
    the worker that took the input over."""
    from processor.worker.runner import PassResult

    settings, store, layout = local(max_attempts=1)
    store.put("inputs/cow.jpg", photo_bytes(200, 150))
    paused, _ = faulty_worker(store, settings, fails=lambda n: True, wid="paused")
    item = scan(store, layout).pending[0]
    from processor.queue.claims import ClaimKeeper

    job = paused._fetch(item, ClaimKeeper(paused.claims, renew_s=3600), PassResult())  # never renewed
    paused._compute([job])
    assert job.claim is not None and isinstance(job.error, StageFailed)
    # The claim expires and another worker takes it over (as after a pause past the TTL).
    keys = layout.for_input("inputs/cow.jpg")
    store.delete(keys.claim)
    taker = paused.claims.__class__(store, "taker", settings.claims.ttl_s)
    assert taker.acquire(keys.claim, keys.input, job.etag) is not None

    assert paused.publisher.failure(job) == "refused"
    assert not exists(store, keys.failure)
    assert markers(store, layout, "inputs/cow.jpg") == []


def test_circuit_breaker_counts_stage_crashes_only():
    breaker = CircuitBreaker(2)
    assert not breaker.failed("a", StageFailed("x"))
    assert not breaker.failed("b", CorruptImage("bad bytes"))  # neither counts nor resets
    assert breaker.failed("c", StageFailed("y"))
    assert breaker.describe() == ["a: StageFailed: x", "c: StageFailed: y"]
    breaker.succeeded()
    assert breaker.consecutive == 0 and not breaker.tripped
    off = CircuitBreaker(0)
    assert not any(off.failed(str(i), StageFailed("z")) for i in range(100))


def test_the_daemon_retries_a_flaky_input(local):
    settings, store, layout = local(idle_backoff_max_s=0.2)
    store.put("inputs/cow.jpg", photo_bytes(200, 150))
    worker, calls = faulty_worker(store, settings, fails=lambda n: n == 1)
    daemon = threading.Thread(target=run_daemon, args=(worker,), daemon=True)
    daemon.start()
    try:
        deadline = time.monotonic() + DAEMON_DEADLINE_S
        while not exists(store, layout.for_input("inputs/cow.jpg").manifest):
            assert time.monotonic() < deadline, "the daemon did not retry the flaky input"
            time.sleep(0.05)
    finally:
        worker.request_stop()
        daemon.join(DAEMON_DEADLINE_S)
    assert not daemon.is_alive()
    assert manifest_of(store, layout, "inputs/cow.jpg").attempt == 2 and len(calls) == 2


# --------------------------------------------------------------------------- requeue


def test_requeue_leaves_a_record_a_worker_just_rewrote(local):
    settings, store, layout = local(max_attempts=1)
    store.put("inputs/cow.jpg", photo_bytes(200, 150))
    worker, _ = faulty_worker(store, settings, fails=lambda n: True)
    worker.run_once()
    selection = find_failures(store, layout)
    assert [f.input for f in selection.failures] == ["inputs/cow.jpg"] and selection.failures[0].marked
    # A worker rewrites the record between our read and our rewrite: ours must not clobber it.
    keys = layout.for_input("inputs/cow.jpg")
    store.put(keys.failure, store.get(keys.failure).body.replace(b'"attempts": 1', b'"attempts": 1 '))
    result = requeue(store, layout, selection.failures)
    assert result.requeued == [] and len(result.changed) == 1
    assert markers(store, layout, "inputs/cow.jpg") == ["failed"]


def test_processor_retry_on_seaweedfs(s3_server, tmp_path, monkeypatch):
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    from processor.store.s3 import S3Store

    store = S3Store.from_settings(s3_server.settings(bucket))
    (tmp_path / "w").mkdir()
    settings = make_settings(tmp_path / "w", max_attempts=1)  # final at once: the bad deploy's aftermath
    settings = settings.model_copy(update={"store": s3_server.settings(bucket)})
    layout = KeyLayout(settings.prefixes)
    crashed = ["inputs/toys/a.jpg", "inputs/toys/b.jpg", "inputs/other/c.jpg"]
    for i, key in enumerate(crashed):
        store.put(key, photo_bytes(160, 120, seed=i))
    store.put("inputs/toys/corrupt.jpg", bad_inputs()["truncated-jpeg"])
    # The crashes of a bad deploy, as a worker of that deploy records them.
    worker, _ = faulty_worker(store, settings, fails=lambda n: True)
    assert worker.run_once() == 0
    assert scan(store, layout).failed == 4
    # A record written before records said whether they are final (and its marker).
    store.put("inputs/legacy.jpg", photo_bytes(160, 120, seed=9))
    legacy = layout.for_input("inputs/legacy.jpg")
    etag = store.head("inputs/legacy.jpg").etag
    store.put(legacy.failure, json.dumps({
        "schema": "toy-cartoonizer/failure/v1", "source": {"key": "inputs/legacy.jpg", "etag": etag, "size": 1},
        "error": "StageFailed", "message": "old crash", "hint": "report it", "permanent": False, "attempts": 1,
        "worker": {"id": "old", "version": "0.0.1", "device": "cuda:0"}}).encode())
    store.put(legacy.done_marker(etag, "failed"), b"")

    env = cli_env(s3_server, bucket, tmp_path)
    dry = processor("retry", "--dry-run", env=env, timeout=HANG_GUARD_S)
    assert dry.returncode == 0, dry.stderr
    assert "would requeue 4 failed input(s)" in dry.stdout and "1 permanent failure(s) left out" in dry.stdout
    for key in [*crashed, "inputs/legacy.jpg"]:
        assert key in dry.stdout
    assert "corrupt" not in dry.stdout
    assert scan(store, layout).failed == 5  # a dry run changes nothing

    by_prefix = processor("retry", "--prefix", "toys/", env=env, timeout=HANG_GUARD_S)
    assert by_prefix.returncode == 0, by_prefix.stderr
    assert "requeued 2 failed input(s)" in by_prefix.stdout
    pending = {i.keys.input for i in scan(store, layout).pending}
    assert pending == {"inputs/toys/a.jpg", "inputs/toys/b.jpg"}
    record = record_of(store, layout, "inputs/toys/a.jpg")
    assert (record.final, record.attempts, record.error) == (False, 0, "StageFailed") and record.requeued_at

    by_error = processor("retry", "--all", "--error", "CorruptImage", env=env, timeout=HANG_GUARD_S)
    assert by_error.returncode == 0, by_error.stderr
    assert "requeued 1 failed input(s)" in by_error.stdout and "inputs/toys/corrupt.jpg" in by_error.stdout
    unknown = processor("retry", "--error", "NoSuchError", env=env, timeout=HANG_GUARD_S)
    assert unknown.returncode == 3 and "StageFailed" in unknown.stderr  # names the known classes

    # The next run --once (a fixed deploy) processes what was requeued, and only that.
    run = processor("run", "--once", env=env, timeout=HANG_GUARD_S)
    assert run.returncode == 0, run.stderr
    for key in ("inputs/toys/a.jpg", "inputs/toys/b.jpg"):
        assert manifest_of(store, layout, key).attempt == 1  # the budget started over
        assert not exists(store, layout.for_input(key).failure)
    again = record_of(store, layout, "inputs/toys/corrupt.jpg")  # still corrupt: final again at once
    assert (again.final, again.attempts, again.permanent) == (True, 1, True) and again.requeued_at is None
    assert not exists(store, layout.for_input("inputs/other/c.jpg").manifest)  # not requeued
    assert not exists(store, legacy.manifest)

    rest = processor("retry", env=env, timeout=HANG_GUARD_S)  # the default: every non-permanent failure left
    assert "requeued 2 failed input(s)" in rest.stdout, rest.stdout + rest.stderr
    assert processor("run", "--once", env=env, timeout=HANG_GUARD_S).returncode == 0
    backlog = scan(store, layout)
    assert (backlog.done, backlog.failed, len(backlog.pending)) == (4, 1, 0)


def test_processor_run_exits_7_when_the_breaker_trips(tmp_path, monkeypatch, capsys):
    import processor.cli.main as cli
    import processor.cli.run as run_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROCESSOR_CONFIG", raising=False)
    (tmp_path / "config.yaml").write_text(
        "store: {kind: local, root: bucket}\n"
        "styles: {toon: {engine: toon, variants: 1, max_side: 128}}\n"
        # One compute slot: the faulty registry below replaces this process's, not a compute process's.
        "run: {max_consecutive_failures: 2, cpu_workers: 1}\n"
        "metrics: {port: 0}\n"
    )
    store = LocalStore(tmp_path / "bucket")
    for i in range(4):
        store.put(f"inputs/toy{i}.jpg", photo_bytes(160, 120, seed=i))
    # The deploy's engines crash on every call; everything else is the real composition root.
    monkeypatch.setattr(run_command, "build_registry", lambda settings: EngineRegistry(
        settings.styles, lambda name, style: FaultyEngine(make_engine(name, style), [], lambda n: True)))
    assert cli.main(["run", "--once"]) == EXIT_UNHEALTHY
    assert "run.max_consecutive_failures: 2" in capsys.readouterr().err
    layout = KeyLayout(PrefixSettings())
    assert len(list(store.list(layout.prefixes.failed))) == 2 and list(store.list(layout.claims_prefix)) == []
