"""CancelWatch: one read per item per period after its last read (its claim's, or at once), whatever else computes."""

from __future__ import annotations

import threading
from pathlib import Path

from processor.config import Settings
from processor.manifest import utcnow
from processor.queue.cancel import CancelWatch, request_cancel
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore


class CountingStore(LocalStore):
    """A local store that counts the reads of cancel records and says when one happened."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.cancel_reads: list[str] = []
        self.read = threading.Condition()

    def get(self, key, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().get(key, **kwargs)
        finally:
            if "/cancel/" in key:
                with self.read:
                    self.cancel_reads.append(key)
                    self.read.notify_all()

    def wait_reads(self, count: int) -> None:
        with self.read:
            assert self.read.wait_for(lambda: len(self.cancel_reads) >= count, timeout=30), self.cancel_reads


def _keys(name: str):  # type: ignore[no-untyped-def]
    return KeyLayout(Settings().prefixes).for_input(f"inputs/{name}.jpg")


def test_an_item_that_starts_does_not_make_the_others_be_read_again(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    watch = CancelWatch(store, every_s=3600)  # no second period within the test
    try:
        with watch.watching(_keys("a"), "etag-a"):
            store.wait_reads(1)
            with watch.watching(_keys("b"), "etag-b"), watch.watching(_keys("c"), "etag-c"):
                store.wait_reads(3)
        assert sorted(k.rsplit("/", 1)[-1] for k in store.cancel_reads) == ["a.jpg.json", "b.jpg.json", "c.jpg.json"]
    finally:
        watch.close()
    assert len(store.cancel_reads) == 3


def test_a_request_is_read_within_a_period_and_close_stops_the_thread(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    keys = _keys("toy")
    watch = CancelWatch(store, every_s=0.05)
    with watch.watching(keys, "etag-1") as watched:
        store.wait_reads(2)  # the first read at once, a second one period later
        assert not watched.requested
        request_cancel(store, keys, etag="etag-1", size=3, submitted_at=utcnow(), by="tester")
        assert watched._seen.wait(timeout=30)
        assert watched.request is not None and watched.request.requested_by == "tester"
    thread = watch._thread
    watch.close()
    assert thread is not None and not thread.is_alive()


def test_an_item_read_at_its_claim_is_read_a_period_after_that_read(tmp_path: Path) -> None:
    """The claim reads the request; the watch's first read of that item is one period after it,
    not a second read when it starts (a request made meanwhile is still read within a period)."""
    import time

    store = CountingStore(tmp_path)
    recent, stale = _keys("recent"), _keys("stale")
    watch = CancelWatch(store, every_s=30)
    try:
        # Read at its claim just now: nothing is read while the item starts.
        with watch.watching(recent, "etag-r", last_read=time.monotonic()):
            # Read at its claim more than a period ago (it waited in the prefetch queue): at once.
            with watch.watching(stale, "etag-s", last_read=time.monotonic() - 60):
                store.wait_reads(1)
        assert [k.rsplit("/", 1)[-1] for k in store.cancel_reads] == ["stale.jpg.json"]
    finally:
        watch.close()
