"""The API's keyed rescan hint: a daemon lists the inputs it names instead of the whole bucket,
and falls back to a full scan whenever it cannot be sure it missed nothing (another writer, a gap
the hint no longer covers, a body it does not know). On the local store and on SeaweedFS, with the
scanner's clock injected so that a scheduled full scan never comes due unless a test moves it.
"""

from __future__ import annotations

import json

import pytest

from processor.config import PrefixSettings
from processor.queue.keys import KeyLayout
from processor.queue.rescan import MAX_HINT_ARRIVALS, ArrivalHints, request_rescan
from processor.queue.scan import IncrementalScanner
from processor.store.base import ObjectStore
from processor.store.local import LocalStore
from tests.integration.test_scan_incremental import FULL_RESCAN_S, FakeClock, pending_keys

#: Done inputs before the mark: a full scan lists them all, a keyed one none of them.
DONE_INPUTS = 30


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue({"local": "local_store", "s3": "s3_store"}[request.param])


def a_scanner_past_done_inputs(store: ObjectStore) -> tuple[IncrementalScanner, KeyLayout, ArrivalHints]:
    """A bucket of done inputs ``inputs/z/<n>.jpg`` (the mark sorts after every API upload), a
    scanner past them, and an API writer whose first hint the scanner has read (a full scan: a
    writer it had not seen)."""
    layout = KeyLayout(PrefixSettings())
    for n in range(DONE_INPUTS):
        key = f"inputs/z/{n:03d}.jpg"
        info = store.put(key, b"x")
        store.put(layout.for_input(key).done_marker(info.etag, "done"), b"")
    scanner = IncrementalScanner(store, layout, FULL_RESCAN_S, clock=FakeClock())
    first = scanner.scan()
    assert first.full and first.done == DONE_INPUTS and first.pending == []
    hints = ArrivalHints(store, layout)
    upload(store, hints, "inputs/api/alice/0001.jpg")
    met = scanner.scan()
    assert met.full and pending_keys(met) == ["inputs/api/alice/0001.jpg"] and scanner.scans["hinted"] == 1
    finish(store, layout, "inputs/api/alice/0001.jpg")
    return scanner, layout, hints


def upload(store: ObjectStore, hints: ArrivalHints, key: str, *, flush: bool = True) -> None:
    """What the API does: the input, then the hint naming it (written on the writer's thread;
    ``flush`` waits for that put)."""
    store.put(key, key.encode())
    hints.announce(key)
    if flush:
        assert hints.flush(timeout_s=30)


def finish(store: ObjectStore, layout: KeyLayout, key: str) -> None:
    store.put(layout.for_input(key).done_marker(store.head(key).etag, "done"), b"")


def test_an_api_upload_before_the_mark_is_listed_by_its_key(store: ObjectStore) -> None:
    scanner, _layout, hints = a_scanner_past_done_inputs(store)
    upload(store, hints, "inputs/api/alice/0002.jpg")
    keyed = scanner.scan()
    assert not keyed.full and pending_keys(keyed) == ["inputs/api/alice/0002.jpg"]
    assert scanner.scans["keyed"] == 1 and scanner.scans["hinted"] == 1
    # HEAD and GET of the hint, the listing after the mark, the input's own prefix and its markers:
    # the same handful whatever the bucket holds.
    assert keyed.requests == 5
    quiet = scanner.scan()
    assert not quiet.full and quiet.requests == 2 and scanner.scans["keyed"] == 1


def test_uploads_between_two_scans_are_all_named(store: ObjectStore) -> None:
    scanner, _layout, hints = a_scanner_past_done_inputs(store)
    keys = [f"inputs/api/{who}/0003.jpg" for who in ("bob", "alice", "carol")]
    for key in keys:
        upload(store, hints, key)
    keyed = scanner.scan()
    assert not keyed.full and sorted(pending_keys(keyed)) == sorted(keys) and scanner.scans["keyed"] == 1


def test_more_uploads_than_the_hint_carries_make_a_full_scan(store: ObjectStore) -> None:
    scanner, layout, hints = a_scanner_past_done_inputs(store)
    hints_before = scanner.scans["hinted"]
    keys = [f"inputs/api/alice/1{n:03d}.jpg" for n in range(MAX_HINT_ARRIVALS + 1)]
    for key in keys:
        upload(store, hints, key)
    full = scanner.scan()
    assert full.full and sorted(pending_keys(full)) == keys and scanner.scans["hinted"] == hints_before + 1
    # The full scan read the writer's latest version: the next upload is keyed again.
    for key in keys:
        finish(store, layout, key)
    upload(store, hints, "inputs/api/alice/2000.jpg")
    assert pending_keys(scanner.scan()) == ["inputs/api/alice/2000.jpg"] and scanner.scans["keyed"] == 1


def test_another_writer_makes_a_full_scan(store: ObjectStore) -> None:
    """Two API replicas overwrite one hint object: the second's version may have replaced the
    first's unread, so a switch of writer is never trusted to name everything."""
    scanner, _layout, hints = a_scanner_past_done_inputs(store)
    upload(store, hints, "inputs/api/alice/0004.jpg")  # replaced before the scanner reads it
    upload(store, ArrivalHints(store, _layout), "inputs/api/bob/0004.jpg")
    full = scanner.scan()
    assert full.full and sorted(pending_keys(full)) == ["inputs/api/alice/0004.jpg", "inputs/api/bob/0004.jpg"]


def test_a_full_scan_request_after_keyed_hints_is_honoured(store: ObjectStore) -> None:
    scanner, layout, hints = a_scanner_past_done_inputs(store)
    upload(store, hints, "inputs/api/alice/0005.jpg")
    assert scanner.scan().full is False
    assert request_rescan(store, layout, by="retry", count=1)  # no arrivals: a full scan
    assert scanner.scan().full and scanner.scans["hinted"] == 2


def test_an_older_version_landing_late_announces_nothing_new(store: ObjectStore) -> None:
    """Two puts of one writer may land out of order; the older carries nothing the newer did not."""
    scanner, layout, hints = a_scanner_past_done_inputs(store)
    upload(store, hints, "inputs/api/alice/0006.jpg")
    older = store.get(layout.rescan_hint).body
    upload(store, hints, "inputs/api/alice/0007.jpg")
    keyed = scanner.scan()
    assert sorted(pending_keys(keyed)) == ["inputs/api/alice/0006.jpg", "inputs/api/alice/0007.jpg"]
    store.put(layout.rescan_hint, older, content_type="application/json")
    late = scanner.scan()
    assert not late.full and late.pending == [] and scanner.scans["keyed"] == 1
    # The writer's next upload counts from the newer version: keyed, and only the new key listed.
    for key in ("inputs/api/alice/0006.jpg", "inputs/api/alice/0007.jpg"):
        finish(store, layout, key)
    upload(store, hints, "inputs/api/alice/0009.jpg")
    after = scanner.scan()
    assert not after.full and pending_keys(after) == ["inputs/api/alice/0009.jpg"] and scanner.scans["keyed"] == 2


@pytest.mark.parametrize("body", [b'{"requested_at": "2026-01-01T00:00:00+00:00", "by": "api", "count": 1}',
                                  b"not json", b'{"writer": "w", "seq": 3, "arrivals": [[2, "inputs/x.jpg"]]}'])
def test_a_hint_it_cannot_read_as_keyed_makes_a_full_scan(store: ObjectStore, body: bytes) -> None:
    scanner, layout, _hints = a_scanner_past_done_inputs(store)
    store.put("inputs/api/alice/0008.jpg", b"x")
    store.put(layout.rescan_hint, body, content_type="application/json")
    full = scanner.scan()
    assert full.full and pending_keys(full) == ["inputs/api/alice/0008.jpg"]


def test_concurrent_uploads_are_all_found_by_a_scanner_scanning_meanwhile(store: ObjectStore) -> None:
    """Eight API threads share one writer while the scanner scans: every upload is found (by a
    keyed scan or a full one) and none is lost."""
    import threading

    scanner, _layout, hints = a_scanner_past_done_inputs(store)
    keys = [f"inputs/api/c{t}/{n:03d}.jpg" for t in range(8) for n in range(6)]
    found: set[str] = set()

    def client(t: int) -> None:
        for key in keys[t * 6:(t + 1) * 6]:
            upload(store, hints, key, flush=False)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            found.update(pending_keys(scanner.scan()))
    finally:
        for thread in threads:
            thread.join()
    assert hints.flush(timeout_s=30)
    found.update(pending_keys(scanner.scan()))  # the last hint, written after the last scan began
    assert found == set(keys)
    hints.close()


def test_announcements_during_a_put_go_out_together_in_order(local_store: LocalStore) -> None:
    """The writer's puts never overlap, so the object's last version is the newest: what is
    announced while one put is in flight goes out in the next, all of it."""
    import threading

    layout = KeyLayout(PrefixSettings())
    entered, release = threading.Event(), threading.Event()

    class SlowHintPuts:
        def __init__(self, inner: LocalStore) -> None:
            self.inner = inner

        def put(self, key: str, body: bytes, **kwargs):  # type: ignore[no-untyped-def]
            if key == layout.rescan_hint:
                entered.set()
                assert release.wait(timeout=30)
            return self.inner.put(key, body, **kwargs)

    hints = ArrivalHints(SlowHintPuts(local_store), layout)  # type: ignore[arg-type]
    hints.announce("inputs/api/a/1.jpg")  # its put waits for the release
    assert entered.wait(timeout=30)
    for n in range(2, 6):
        hints.announce(f"inputs/api/a/{n}.jpg")
    release.set()
    assert hints.flush(timeout_s=30)
    body = json.loads(local_store.get(layout.rescan_hint).body)
    assert hints.puts == 2 and body["seq"] == 5
    assert [key for _seq, key in body["arrivals"]] == [f"inputs/api/a/{n}.jpg" for n in range(1, 6)]
    hints.close()
