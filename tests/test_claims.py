"""Claims over the local store with an injected server clock: create, hold, expire, take over, lose."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from processor.queue.claims import ClaimManager, probe_conditional_create
from processor.store.local import LocalStore


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def test_second_worker_cannot_claim_a_live_claim(tmp_path):
    store = LocalStore(tmp_path)
    a, b = ClaimManager(store, "a", ttl_s=60), ClaimManager(store, "b", ttl_s=60)
    assert a.acquire("c/1.json", "inputs/x.jpg", "e1") is not None
    assert b.acquire("c/1.json", "inputs/x.jpg", "e1") is None
    assert b.conflicts == 1


def test_expired_claim_is_taken_over_and_the_old_owner_loses_it(tmp_path):
    clock = Clock()
    store = LocalStore(tmp_path, clock=clock)
    a, b = ClaimManager(store, "a", ttl_s=60), ClaimManager(store, "b", ttl_s=60)
    held = a.acquire("c/1.json", "inputs/x.jpg", "e1")
    clock.now += timedelta(seconds=61)  # the server's clock, not the worker's
    taken = b.acquire("c/1.json", "inputs/x.jpg", "e1")
    assert taken is not None and taken.took_over_from == "a" and taken.takeover_age_s >= 60
    assert b.takeovers == 1
    assert a.renew(held) is False and held.lost.is_set()
    assert b.renew(taken) is True


def test_renewal_keeps_a_claim_alive(tmp_path):
    clock = Clock()
    store = LocalStore(tmp_path, clock=clock)
    a, b = ClaimManager(store, "a", ttl_s=60), ClaimManager(store, "b", ttl_s=60)
    held = a.acquire("c/1.json", "inputs/x.jpg", "e1")
    assert a.renew(held)
    # Renewal rewrote the object, so its Last-Modified is the file's new mtime: still live.
    assert b.acquire("c/1.json", "inputs/x.jpg", "e1") is None


def test_release_lets_the_next_worker_in(tmp_path):
    store = LocalStore(tmp_path)
    a, b = ClaimManager(store, "a", ttl_s=60), ClaimManager(store, "b", ttl_s=60)
    a.release(a.acquire("c/1.json", "inputs/x.jpg", "e1"))
    assert b.acquire("c/1.json", "inputs/x.jpg", "e1") is not None


def test_racing_workers_get_exactly_one_claim(tmp_path):
    store = LocalStore(tmp_path)
    managers = [ClaimManager(store, f"w{i}", ttl_s=60) for i in range(8)]
    results = [None] * 8
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        results[i] = managers[i].acquire("c/race.json", "inputs/x.jpg", "e1")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_probe_reports_atomic_create_on_the_local_store(tmp_path):
    store = LocalStore(tmp_path)
    atomic, detail = probe_conditional_create(store, ".processor/")
    assert atomic, detail
    assert list(store.list(".processor/")) == []
