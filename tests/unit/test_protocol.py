"""BucketQueue, the bucket protocol, driven directly as the worker and the HTTP API drive it."""

from __future__ import annotations

import pytest

from processor.config import PrefixSettings
from processor.errors import CorruptImage, StageFailed
from processor.manifest import FailureRecord, Manifest, Source, WorkerInfo
from processor.queue.claims import ClaimManager
from processor.queue.keys import KeyLayout
from processor.queue.outcomes import Outcome
from processor.queue.protocol import AlreadyCommitted, BucketQueue
from processor.store.local import LocalStore

TTL_S = 60.0


def queue_for(store: LocalStore, wid: str, max_attempts: int = 1) -> BucketQueue:
    return BucketQueue(store, KeyLayout(PrefixSettings()), claims=ClaimManager(store, wid, TTL_S),
                       worker=WorkerInfo(id=wid, version="test", device="cpu"), max_attempts=max_attempts)


def manifest_for(d, wid: str) -> Manifest:
    return Manifest(source=Source(key=d.key, etag=d.etag, size=d.size), variants=[],
                    worker=WorkerInfo(id=wid, version="test", device="cpu"))


def test_take_commit_release_and_read_back(tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put("inputs/cow.jpg", b"not really a jpeg")
    a, b = queue_for(store, "a"), queue_for(store, "b")
    item = a.scan().pending[0]

    d = a.take(item)
    assert d is not None and b.take(item) is None  # a live claim: the other worker is told "busy"
    assert not a.existing_result(d)
    assert a.read_input(d, max_bytes=1024).body == b"not really a jpeg"
    a.put_output(d, d.item.keys.output_prefix + "toon-00.png", b"png", "image/png")
    assert a.commit(d, manifest_for(d, "a")) is Outcome.DONE
    a.release(d)

    assert isinstance(a.result("inputs/cow.jpg"), Manifest)
    status = b.status()
    assert (status.inputs, status.done, status.pending, status.in_progress) == (1, 1, 0, 0)
    assert a.scan().pending == []  # the done marker: the next scan skips it with LIST calls alone

    # A late second delivery of the same version (at-least-once) publishes nothing.
    late = b.take(item)
    assert late is not None and b.existing_result(late)  # found, not made again


def test_a_refused_commit_and_an_output_that_is_not_ours_to_replace(tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put("inputs/cow.jpg", b"bytes")
    a, b = queue_for(store, "a"), queue_for(store, "b")
    item = a.scan().pending[0]
    da = a.take(item)
    store.delete(item.keys.claim)  # a's claim expired and ...
    db = b.take(item)  # ... b took the input over
    assert da is not None and db is not None
    b.put_output(db, db.item.keys.output_prefix + "toon-00.png", b"b's", "image/png")
    with pytest.raises(AlreadyCommitted) as refused:
        a.put_output(da, da.item.keys.output_prefix + "toon-00.png", b"a's", "image/png")
    assert "claim" in refused.value.reason
    assert a.commit(da, manifest_for(da, "a")) is Outcome.REFUSED
    assert b.commit(db, manifest_for(db, "b")) is Outcome.DONE
    assert store.get(db.item.keys.output_prefix + "toon-00.png").body == b"b's"


def test_fail_is_retryable_until_the_budget_is_spent(tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put("inputs/cow.jpg", b"bytes")
    q = queue_for(store, "a", max_attempts=2)
    item = q.scan().pending[0]
    d = q.take(item)
    assert d is not None and not q.existing_result(d)
    assert q.fail(d, StageFailed("boom"), Source(key=d.key, etag=d.etag, size=d.size)) is Outcome.RETRY
    q.release(d)
    d = q.take(q.scan().pending[0])  # offered again: no done marker for a retryable failure
    assert d is not None and not q.existing_result(d) and d.attempt == 2
    assert q.fail(d, StageFailed("boom"), Source(key=d.key, etag=d.etag, size=d.size)) is Outcome.FAILED
    record = q.result("inputs/cow.jpg")
    assert isinstance(record, FailureRecord) and record.final and record.attempts == 2
    assert q.scan().failed == 1 and q.status().recent_failures[0].record.error == "StageFailed"


def test_a_bad_input_fails_at_once(tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put("inputs/cow.jpg", b"bytes")
    q = queue_for(store, "a", max_attempts=3)
    d = q.take(q.scan().pending[0])
    assert d is not None
    assert q.fail(d, CorruptImage("truncated"), Source(key=d.key, etag=d.etag, size=d.size)) is Outcome.FAILED
    assert q.result("inputs/nothing.jpg") is None
