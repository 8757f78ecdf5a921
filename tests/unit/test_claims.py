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


class LostResponses:
    """A store whose conditional writes land but whose responses are lost: each such ``put`` is
    sent twice, as a client retries a write whose response timed out, and the caller sees the
    second answer (412: the first write's object is there, or its ETag changed)."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.lose = True

    def put(self, key, body, **kw):
        if self.lose and (kw.get("if_none_match") or kw.get("if_match")):
            self.inner.put(key, body, **kw)  # lands; its response never reaches us
        return self.inner.put(key, body, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_create_whose_response_was_lost_is_still_our_claim(tmp_path):
    """The retried create meets the claim it wrote (412): the worker holds it, not waits a TTL out."""
    store = LostResponses(LocalStore(tmp_path))
    a, b = ClaimManager(store, "a", ttl_s=60), ClaimManager(LocalStore(tmp_path), "b", ttl_s=60)
    held = a.acquire("c/1.json", "inputs/x.jpg", "e1")
    assert held is not None and a.conflicts == 0
    assert a.holds(held) and a.renew(held) and not held.lost.is_set()  # renewal also had its response lost
    assert b.acquire("c/1.json", "inputs/x.jpg", "e1") is None  # and it is still a live claim to others
    store.lose = False
    a.release(held)
    assert b.acquire("c/1.json", "inputs/x.jpg", "e1") is not None


def test_a_takeover_whose_response_was_lost_is_still_ours(tmp_path):
    clock = Clock()
    local = LocalStore(tmp_path, clock=clock)
    old = ClaimManager(local, "old", ttl_s=60)
    stale = old.acquire("c/1.json", "inputs/x.jpg", "e1")
    clock.now += timedelta(seconds=61)
    new = ClaimManager(LostResponses(LocalStore(tmp_path, clock=clock)), "new", ttl_s=60)
    taken = new.acquire("c/1.json", "inputs/x.jpg", "e1")
    assert taken is not None and taken.took_over_from == "old" and new.takeovers == 1
    assert old.renew(stale) is False  # the old owner's token is gone: lost, as before


def test_another_workers_claim_is_never_mistaken_for_ours(tmp_path):
    store = LostResponses(LocalStore(tmp_path))
    first = ClaimManager(LocalStore(tmp_path), "first", ttl_s=60)
    assert first.acquire("c/1.json", "inputs/x.jpg", "e1") is not None
    assert ClaimManager(store, "first", ttl_s=60).acquire("c/1.json", "inputs/x.jpg", "e1") is None  # same name
