"""The rescan hint: `processor retry` and `processor submit` make a running daemon's next scan a full
one, so a requeued input (or a re-upload under a key the daemon has passed) need not wait for
run.full_rescan_s. On the local store and on SeaweedFS, with the scanner's clock injected so that a
scheduled full scan never comes due unless a test moves it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest

from processor.config import PrefixSettings
from processor.errors import TransientStoreError
from processor.manifest import FailureRecord, Manifest, Source, WorkerInfo
from processor.queue.keys import KeyLayout
from processor.queue.requeue import find_failures, requeue
from processor.queue.scan import IncrementalScanner
from processor.store.base import ObjectStore
from processor.store.local import LocalStore
from processor.worker.daemon import run_daemon
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S
from tests.integration.test_scan_incremental import DAEMON_DEADLINE_S, FULL_RESCAN_S, FakeClock, pending_keys, wait_for
from tests.unit.test_worker import make_settings, make_worker

#: The attempts a crashed input had spent when its record became final (run.max_attempts' default).
SPENT_ATTEMPTS = 3


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue({"local": "local_store", "s3": "s3_store"}[request.param])


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command, in its own process (as an operator runs it beside a daemon)."""
    return subprocess.run([sys.executable, "-m", "processor", *args], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


def fail_finally(store: ObjectStore, layout: KeyLayout, key: str) -> None:
    """``key`` as a worker leaves an input whose stage crashed on every attempt: a final failure
    record for its current version, then its ``failed`` done marker."""
    info = store.head(key)
    keys = layout.for_input(key)
    record = FailureRecord(
        source=Source(key=key, etag=info.etag, size=info.size), error="StageFailed",
        message="CUDA error: an illegal memory access was encountered", hint="fix the deploy, then retry",
        permanent=False, attempts=SPENT_ATTEMPTS, max_attempts=SPENT_ATTEMPTS, final=True,
        worker=WorkerInfo(id="crashed", version="0", device="cuda:0"))
    store.put(keys.failure, record.to_json_bytes(), content_type="application/json")
    store.put(keys.done_marker(info.etag, "failed"), b"")


def a_scanner_past_a_failed_input(store: ObjectStore) -> tuple[IncrementalScanner, KeyLayout, FakeClock]:
    """``inputs/a.jpg`` failed finally; the scanner's full scan has passed it (mark: ``m.jpg``)."""
    layout = KeyLayout(PrefixSettings())
    for key in ("inputs/a.jpg", "inputs/m.jpg"):
        store.put(key, b"x")
    fail_finally(store, layout, "inputs/a.jpg")
    clock = FakeClock()
    scanner = IncrementalScanner(store, layout, FULL_RESCAN_S, clock=clock)
    first = scanner.scan()
    assert first.full and first.failed == 1 and pending_keys(first) == ["inputs/m.jpg"]
    assert scanner.high_water == "inputs/m.jpg"
    store.put(layout.for_input("inputs/m.jpg").done_marker(store.head("inputs/m.jpg").etag, "done"), b"")
    return scanner, layout, clock


def test_a_requeue_reaches_the_scanner_at_its_next_scan(store: ObjectStore) -> None:
    scanner, layout, _clock = a_scanner_past_a_failed_input(store)
    before = scanner.scan()
    assert not before.full and before.pending == [] and before.requests == 2  # HEAD hint + LIST

    result = requeue(store, layout, find_failures(store, layout).failures)
    assert [f.input for f in result.requeued] == ["inputs/a.jpg"] and result.rescan_requested

    hinted = scanner.scan()  # the fake clock has not moved: only the hint makes this scan full
    assert hinted.full and pending_keys(hinted) == ["inputs/a.jpg"]
    assert scanner.scans["hinted"] == 1
    # One full scan per hint version: the next scans are incremental again.
    after = scanner.scan()
    assert not after.full and after.requests == 2 and scanner.scans["hinted"] == 1


def test_without_the_hint_a_requeued_input_waits_for_the_scheduled_full_scan(store: ObjectStore) -> None:
    scanner, layout, clock = a_scanner_past_a_failed_input(store)
    requeue(store, layout, find_failures(store, layout).failures)
    store.delete(layout.rescan_hint)  # as an older `processor retry` left it: no hint
    clock.advance(FULL_RESCAN_S / 2)
    missed = scanner.scan()
    assert not missed.full and missed.pending == []
    clock.advance(FULL_RESCAN_S / 2)
    due = scanner.scan()
    assert due.full and pending_keys(due) == ["inputs/a.jpg"] and scanner.scans["hinted"] == 0


class HintFaults:
    """A real store whose HEADs of the rescan hint fail while ``failing`` is set (a 503 after the
    adapter's own retries ran out); every other request goes through."""

    def __init__(self, inner: ObjectStore, hint_key: str) -> None:
        self.inner, self.hint_key, self.failing = inner, hint_key, False

    def head(self, key: str):
        if self.failing and key == self.hint_key:
            raise TransientStoreError("503 Slow Down", key=key)
        return self.inner.head(key)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_a_store_error_on_the_hint_falls_back_to_the_schedule(local_store: LocalStore, caplog) -> None:
    layout = KeyLayout(PrefixSettings())
    faulty = HintFaults(local_store, layout.rescan_hint)
    scanner, _layout, clock = a_scanner_past_a_failed_input(faulty)
    requeue(local_store, layout, find_failures(local_store, layout).failures)

    faulty.failing = True
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="processor.rescan"):
        fallback = scanner.scan()
    assert not fallback.full and fallback.pending == []  # the scan itself went on, incrementally
    assert [r.getMessage() for r in caplog.records
            if r.name == "processor.rescan" and r.levelno >= logging.WARNING] == ["rescan_hint_unreadable"]

    # A full scan the schedule makes while the hint is unreadable keeps the old version, so the
    # request is honoured once the hint reads again (one extra full scan at most, never a lost one).
    clock.advance(FULL_RESCAN_S)
    assert scanner.scan().full
    faulty.failing = False
    assert scanner.scan().full and scanner.scans["hinted"] == 1
    assert not scanner.scan().full


def test_a_submit_under_an_old_key_reaches_the_scanner_at_its_next_scan(tmp_path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    layout = KeyLayout(settings.prefixes)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(photo_bytes(64, 48, seed=1))
    store.put("inputs/a.jpg", photo_bytes(64, 48, seed=0))
    store.put(layout.for_input("inputs/a.jpg").done_marker(store.head("inputs/a.jpg").etag, "done"), b"")
    store.put("inputs/m.jpg", b"x")
    scanner = IncrementalScanner(store, layout, FULL_RESCAN_S, clock=FakeClock())
    assert pending_keys(scanner.scan()) == ["inputs/m.jpg"] and not scanner.scan().full

    # A new photo under the old key: a new version of a done input, sorting before the mark.
    submitted = cli("submit", str(photos / "a.jpg"), "-q", "--config", str(tmp_path / "config.yaml"))
    assert submitted.returncode == 0, submitted.stderr
    hinted = scanner.scan()
    assert hinted.full and pending_keys(hinted) == ["inputs/a.jpg", "inputs/m.jpg"]


def test_the_daemon_commits_a_retried_input_within_a_few_polls(tmp_path) -> None:
    """End to end: a daemon whose full scan never comes due (fake clock) has passed a failed
    input; `processor retry` (the real command, another process) requeues it; the daemon commits it."""
    settings = make_settings(tmp_path, full_rescan_s=FULL_RESCAN_S, idle_backoff_max_s=0.2)
    store = LocalStore(settings.store.root)
    layout = KeyLayout(settings.prefixes)
    store.put("inputs/a.jpg", photo_bytes(160, 120, seed=1))
    fail_finally(store, layout, "inputs/a.jpg")
    store.put("inputs/m.jpg", photo_bytes(160, 120, seed=2))
    worker = make_worker(store, settings, clock=FakeClock())

    def committed(key: str) -> bool:
        return any(o.key == layout.for_input(key).manifest for o in store.list(layout.for_input(key).manifest))

    daemon = threading.Thread(target=run_daemon, args=(worker,), daemon=True)
    daemon.start()
    try:
        wait_for(lambda: committed("inputs/m.jpg"), "the daemon's first input")
        retried = cli("retry", "-q", "--config", str(tmp_path / "config.yaml"))
        assert retried.returncode == 0 and "requeued 1 failed input(s)" in retried.stdout, retried.stderr
        wait_for(lambda: committed("inputs/a.jpg"), "the retried input")
    finally:
        worker.request_stop()
        daemon.join(DAEMON_DEADLINE_S)
    assert not daemon.is_alive()
    manifest = Manifest.model_validate_json(store.get(layout.for_input("inputs/a.jpg").manifest).body)
    assert manifest.attempt == 1  # the requeue gave it a fresh budget
