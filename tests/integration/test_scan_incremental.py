"""The daemon's incremental scans (StartAfter the last key seen) and its periodic full rescan.

Correctness must not depend on the listing order: SeaweedFS lists folder by folder, S3 and the
local store in byte order. Whatever the order, a new input is found either by the next incremental
scan or, at the latest, by the next full rescan; none is lost and none is offered twice.
"""

from __future__ import annotations

import threading
import time

import pytest

from processor.config import PrefixSettings
from processor.manifest import Manifest
from processor.queue.claims import ClaimManager
from processor.queue.keys import KeyLayout
from processor.queue.scan import IncrementalScanner, scan
from processor.store.base import ObjectStore
from processor.store.local import LocalStore
from processor.worker.daemon import run_daemon
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S
from tests.unit.test_worker import make_settings, make_worker

#: Seconds between full rescans in these tests (the clock is fake: only the tests move it).
FULL_RESCAN_S = 60.0
#: Seconds a daemon test waits for an expected result before failing: a hang guard (testkit.waits).
DAEMON_DEADLINE_S = HANG_GUARD_S


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue({"local": "local_store", "s3": "s3_store"}[request.param])


def pending_keys(backlog) -> list[str]:
    return [item.keys.input for item in backlog.pending]


def test_incremental_scan_lists_only_after_the_mark_and_full_rescan_finds_the_rest(store: ObjectStore) -> None:
    layout = KeyLayout(PrefixSettings())
    clock = FakeClock()
    scanner = IncrementalScanner(store, layout, FULL_RESCAN_S, clock=clock)
    for key in ("inputs/b.jpg", "inputs/d.jpg"):
        store.put(key, b"x")

    first = scanner.scan()
    assert first.full and sorted(pending_keys(first)) == ["inputs/b.jpg", "inputs/d.jpg"]
    assert scanner.high_water == "inputs/d.jpg"

    # Nothing new: one HEAD of the rescan hint and one LIST request, nothing pending.
    idle = scanner.scan()
    assert not idle.full and idle.pending == [] and idle.requests == 2

    store.put("inputs/e.jpg", b"x")  # sorts after the mark: the next incremental scan finds it
    store.put("inputs/a.jpg", b"x")  # sorts before it: only a full rescan can
    inc = scanner.scan()
    assert not inc.full and pending_keys(inc) == ["inputs/e.jpg"] and inc.requests == 2

    clock.advance(FULL_RESCAN_S / 2)
    assert "inputs/a.jpg" not in pending_keys(scanner.scan())
    clock.advance(FULL_RESCAN_S / 2)
    full = scanner.scan()
    assert full.full and "inputs/a.jpg" in pending_keys(full)
    assert scanner.scans == {"full": 2, "incremental": 3, "hinted": 0, "keyed": 0}


def test_no_input_is_lost_or_repeated_whatever_the_listing_order(store: ObjectStore) -> None:
    """SeaweedFS lists ``a/`` before ``a-c``; S3 and the local store list ``a-c`` first. New keys
    placed around the mark in both orders are each found exactly once, by the incremental scan
    or by the next full rescan."""
    layout = KeyLayout(PrefixSettings())
    clock = FakeClock()
    scanner = IncrementalScanner(store, layout, FULL_RESCAN_S, clock=clock)
    for key in ("inputs/a-c.jpg", "inputs/a/b.jpg"):
        store.put(key, b"x")
    scanner.scan()
    new = ["inputs/a/z.jpg", "inputs/a-d.jpg", "inputs/a.jpg", "inputs/a0.jpg", "inputs/0.jpg", "inputs/a/a.jpg"]
    for key in new:
        store.put(key, b"x")
    found_incrementally = pending_keys(scanner.scan())
    assert len(found_incrementally) == len(set(found_incrementally))
    # Whatever the incremental scan missed sorts before the mark in the server's order.
    missed = [k for k in new if k not in found_incrementally]
    assert set(found_incrementally) <= set(new)
    # Carry nothing over: a real daemon would have finished the incremental ones (done markers).
    for key in found_incrementally:
        keys = layout.for_input(key)
        store.put(keys.done_marker(store.head(key).etag, "done"), b"")
    clock.advance(FULL_RESCAN_S)
    full = scanner.scan()
    assert full.full
    assert sorted(pending_keys(full)) == sorted([*missed, "inputs/a-c.jpg", "inputs/a/b.jpg"])


def test_items_a_pass_left_are_offered_again_before_the_full_rescan(local_store: LocalStore) -> None:
    layout = KeyLayout(PrefixSettings())
    clock = FakeClock()
    scanner = IncrementalScanner(local_store, layout, FULL_RESCAN_S, clock=clock)
    local_store.put("inputs/a.jpg", b"x")
    first = scanner.scan()
    scanner.retry_later(first.pending)  # e.g. the GET failed with a store error
    again = scanner.scan()
    assert not again.full and pending_keys(again) == ["inputs/a.jpg"]
    assert scanner.scan().pending == []  # offered once per retry_later


def test_incremental_scan_keeps_output_folder_ownership(local_store: LocalStore) -> None:
    """``a.jpg`` (known) and ``a.png`` (new) share ``outputs/a/``: the first in byte order owns it,
    as in a full scan, even though the incremental listing only returns ``a.png``."""
    layout = KeyLayout(PrefixSettings())
    scanner = IncrementalScanner(local_store, layout, FULL_RESCAN_S, clock=FakeClock())
    local_store.put("inputs/a.jpg", b"x")
    scanner.scan()
    local_store.put("inputs/a.png", b"x")
    (item,) = scanner.scan().pending
    assert item.keys.input == "inputs/a.png" and item.collides_with == "inputs/a.jpg"
    full = scan(local_store, layout)
    assert {i.keys.input: i.collides_with for i in full.pending}["inputs/a.png"] == "inputs/a.jpg"


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + DAEMON_DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_daemon_finds_an_input_sorting_before_the_mark_at_the_full_rescan(tmp_path) -> None:
    settings = make_settings(tmp_path, full_rescan_s=FULL_RESCAN_S, idle_backoff_max_s=0.1)
    store = LocalStore(settings.store.root)
    layout = KeyLayout(settings.prefixes)
    clock = FakeClock()
    worker = make_worker(store, settings, clock=clock)

    def has_manifest(key: str) -> bool:
        try:
            return Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body).source.key == key
        except Exception:  # noqa: BLE001 - not there yet
            return False

    store.put("inputs/m.jpg", photo_bytes(160, 120, seed=1))
    daemon = threading.Thread(target=run_daemon, args=(worker,), daemon=True)
    daemon.start()
    try:
        wait_for(lambda: has_manifest("inputs/m.jpg"), "the first input")
        store.put("inputs/a.jpg", photo_bytes(160, 120, seed=2))  # before the mark "inputs/m.jpg"
        store.put("inputs/z.jpg", photo_bytes(160, 120, seed=3))  # after it
        wait_for(lambda: has_manifest("inputs/z.jpg"), "the input after the mark (incremental scan)")
        # The fake clock has not moved: no full rescan ran, so "a" cannot have been found.
        assert not has_manifest("inputs/a.jpg")
        clock.advance(FULL_RESCAN_S)
        wait_for(lambda: has_manifest("inputs/a.jpg"), "the input before the mark (full rescan)")
    finally:
        worker.request_stop()
        daemon.join(DAEMON_DEADLINE_S)
    assert not daemon.is_alive()



#: Seconds the test below waits for the takeover: a hang guard only. What it checks is that no full
#: rescan was needed, and the fake clock never makes one due, however long the wait.
TAKEOVER_DEADLINE_S = HANG_GUARD_S


def test_daemon_takes_over_a_dead_workers_claim_without_waiting_for_the_full_rescan(tmp_path) -> None:
    # A crashed worker's claim must be taken over once its TTL runs out (the README's promise),
    # not at the next full rescan: the daemon offers busy items again at its incremental scans.
    settings = make_settings(tmp_path, full_rescan_s=FULL_RESCAN_S, idle_backoff_max_s=0.2)
    settings = settings.model_copy(update={"claims": settings.claims.model_copy(update={"ttl_s": 2.0, "renew_s": 0.5})})
    store = LocalStore(settings.store.root)
    keys = KeyLayout(settings.prefixes).for_input("inputs/held.jpg")
    store.put(keys.input, photo_bytes(160, 120, seed=4))
    dead = ClaimManager(store, "dead-worker", settings.claims.ttl_s)
    assert dead.acquire(keys.claim, keys.input, store.head(keys.input).etag) is not None  # never renewed
    worker = make_worker(store, settings, clock=FakeClock())  # the fake clock never makes a full rescan due
    daemon = threading.Thread(target=run_daemon, args=(worker,), daemon=True)
    daemon.start()
    try:
        deadline = time.monotonic() + TAKEOVER_DEADLINE_S
        while not any(True for _ in store.list(keys.manifest)):
            assert time.monotonic() < deadline, "the daemon did not take over the dead worker's claim"
            time.sleep(0.05)
    finally:
        worker.request_stop()
        daemon.join(DAEMON_DEADLINE_S)
    assert not daemon.is_alive()
