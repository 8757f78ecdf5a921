"""Hint sources (``processor.queue.hints``): they only ever end a wait early; what they say is
merged, may be lost or repeated, and the targeted scan they lead to lists only what they named."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from processor.config import PrefixSettings, Settings
from processor.errors import ConfigError
from processor.queue.hints import build_hint_sources, chosen_hints
from processor.queue.hints.base import MAX_HINT_PREFIXES, Wakeup, listing_prefix
from processor.queue.hints.bucket import RescanHintPoller
from processor.queue.hints.local import LocalFolderWatcher
from processor.queue.hints.seaweedfs import FilerMetaTail
from processor.queue.keys import KeyLayout
from processor.queue.outcomes import Outcome
from processor.queue.rescan import request_rescan
from processor.queue.scan import IncrementalScanner
from processor.store.local import LocalStore

#: Seconds a test waits for a hint that must come (real time, generous for a loaded machine).
HINT_DEADLINE_S = 20.0
LAYOUT = KeyLayout(PrefixSettings())


# --------------------------------------------------------------------------- the mailbox


def test_signals_before_a_look_merge_into_one_hint_and_taking_it_empties_the_mailbox() -> None:
    wakeup = Wakeup()
    assert wakeup.take() is None
    wakeup.notify("local", ["inputs/a."])
    wakeup.notify("local", ["inputs/b/"])
    wakeup.notify("bucket", ["inputs/a."])
    hint = wakeup.take()
    assert hint is not None and hint.sources == {"local", "bucket"}
    assert hint.prefixes == {"inputs/a.", "inputs/b/"} and not hint.anywhere
    assert wakeup.take() is None


def test_a_signal_without_prefixes_or_with_too_many_asks_for_an_ordinary_scan() -> None:
    wakeup = Wakeup()
    wakeup.notify("local", ["inputs/a."])
    wakeup.notify("bucket")
    hint = wakeup.take()
    assert hint is not None and hint.anywhere and hint.prefixes == frozenset()
    wakeup.notify("local", [f"inputs/{n}." for n in range(MAX_HINT_PREFIXES + 1)])
    hint = wakeup.take()
    assert hint is not None and hint.anywhere


def test_wait_returns_the_hint_another_thread_leaves_and_none_on_stop_or_timeout() -> None:
    wakeup, stop = Wakeup(), threading.Event()
    timer = threading.Timer(0.05, wakeup.notify, args=("local", ["inputs/x."]))
    timer.start()
    hint = wakeup.wait(HINT_DEADLINE_S, stop=stop)
    assert hint is not None and hint.prefixes == {"inputs/x."}
    assert wakeup.wait(0.05) is None
    stop.set()
    started = time.monotonic()
    assert wakeup.wait(HINT_DEADLINE_S, stop=stop) is None
    assert time.monotonic() - started < HINT_DEADLINE_S / 2


@pytest.mark.parametrize(("key", "folder", "prefix"), [
    ("inputs/a.jpg", False, "inputs/a."),
    ("inputs/a.json", False, "inputs/a."),
    ("inputs/toys/b.c.png", False, "inputs/toys/b.c."),
    ("inputs/noext", False, "inputs/noext"),
    ("inputs/.hidden", False, "inputs/.hidden"),
    ("inputs/album", True, "inputs/album/"),
])
def test_a_hint_names_what_to_list_to_find_the_input_and_its_sidecar(key: str, folder: bool, prefix: str) -> None:
    assert listing_prefix(key, folder=folder) == prefix


# --------------------------------------------------------------------------- targeted scans


def test_a_targeted_scan_finds_an_upload_before_the_mark_without_a_full_scan(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    for key in ("inputs/b.jpg", "inputs/d.jpg"):
        store.put(key, b"x")
    scanner = IncrementalScanner(store, LAYOUT, full_rescan_s=3600)
    assert scanner.scan().full and scanner.high_water == "inputs/d.jpg"

    store.put("inputs/a.jpg", b"new")  # sorts before the mark: an incremental scan misses it
    store.put("inputs/a.json", b"{}")
    found = scanner.scan(["inputs/a."])
    assert not found.full and [i.keys.input for i in found.pending] == ["inputs/a.jpg"]
    assert found.pending[0].sidecar == "inputs/a.json"
    # The rescan hint's HEAD, the incremental LIST, the prefix's LIST and its done markers' LIST.
    assert found.requests == 4 and scanner.targeted_scans == 1

    # A prefix after the mark needs no listing of its own: the incremental one has it.
    store.put("inputs/e.jpg", b"x")
    after = scanner.scan(["inputs/e."])
    assert [i.keys.input for i in after.pending] == ["inputs/e.jpg"] and after.requests == 2


def test_a_targeted_scan_keeps_done_and_failed_inputs_out(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put("inputs/z.jpg", b"x")
    scanner = IncrementalScanner(store, LAYOUT, full_rescan_s=3600)
    scanner.scan()
    for name, outcome in (("a.jpg", Outcome.DONE), ("b.jpg", Outcome.FAILED)):
        info = store.put(f"inputs/{name}", b"x" + name.encode())
        store.put(LAYOUT.for_input(f"inputs/{name}").done_marker(info.etag, outcome), b"")
    store.put("inputs/c.jpg", b"c")
    backlog = scanner.scan(["inputs/a.", "inputs/b.", "inputs/c."])
    assert [i.keys.input for i in backlog.pending] == ["inputs/c.jpg"]
    assert (backlog.done, backlog.failed) == (1, 1)


# --------------------------------------------------------------------------- sources


def test_the_bucket_source_wakes_on_a_new_rescan_hint_and_only_then(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    wakeup = Wakeup()
    with RescanHintPoller(store, LAYOUT, interval_s=0.02) as poller:
        poller.start(wakeup)
        deadline = time.monotonic() + HINT_DEADLINE_S
        while poller.polls < 3:  # it has read the version there is (none)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert wakeup.take() is None  # no change, no hint
        request_rescan(store, LAYOUT, by="api", count=1)
        hint = wakeup.wait(HINT_DEADLINE_S)
    assert hint is not None and hint.sources == {"bucket"} and hint.anywhere
    # One HEAD a poll, nothing else: the idle cost is 3600 / run.hint_poll_s requests an hour.
    assert store.request_count() == poller.polls + 1  # + the hint's own PUT


def test_the_local_watcher_names_dropped_and_stored_photos_but_not_deletions_or_other_folders(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    wakeup = Wakeup()
    with LocalFolderWatcher(store.root, "inputs/") as watcher:
        watcher.start(wakeup)
        (store.root / "inputs" / "dropped.jpg").write_bytes(b"a photo")  # a user's copy: closed after writing
        assert _next_prefixes(wakeup) == {"inputs/dropped."}
        store.put("inputs/album/stored.png", b"png")  # the store's own write: a link, settled
        assert _next_prefixes(wakeup) == {"inputs/album/stored."}
        store.put("outputs/dropped/manifest.json", b"{}")
        (store.root / "inputs" / "dropped.jpg").unlink()
        assert wakeup.wait(3 * watcher.settle_s) is None


def test_the_local_watcher_waits_for_a_file_still_being_written(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    wakeup = Wakeup()
    with LocalFolderWatcher(root, "inputs/", settle_s=5.0) as watcher:
        watcher.start(wakeup)
        with (root / "inputs" / "slow.jpg").open("wb") as fh:
            for _ in range(5):
                fh.write(b"chunk")
                fh.flush()
                time.sleep(0.05)
            assert wakeup.take() is None  # created and growing: not a hint yet
        assert _next_prefixes(wakeup) == {"inputs/slow."}  # closed after writing: at once


def _next_prefixes(wakeup: Wakeup) -> frozenset[str]:
    hint = wakeup.wait(HINT_DEADLINE_S)
    assert hint is not None, "no hint arrived"
    return hint.prefixes


def _meta_event(directory: str, name: str, *, folder: bool = False, renamed: bool = False,
                deleted: bool = False) -> dict:
    entry = {"name": name, "isDirectory": folder}
    change = {"oldEntry": entry if (renamed or deleted) else None, "newEntry": None if deleted else entry,
              "newParentPath": directory if renamed else ""}
    return {"directory": directory, "eventNotification": change}


@pytest.mark.parametrize(("event", "prefix"), [
    (_meta_event("/buckets/b/inputs", "toy.jpg"), "inputs/toy."),
    (_meta_event("/buckets/b/inputs/sub", "toy.json"), "inputs/sub/toy."),
    (_meta_event("/buckets/b/inputs", "album", folder=True, renamed=True), "inputs/album/"),
    (_meta_event("/buckets/b/inputs", "new-folder", folder=True), None),
    (_meta_event("/buckets/b/inputs", "gone.jpg", deleted=True), None),
    (_meta_event("/buckets/b/outputs", "x.png"), None),
    (_meta_event("/buckets/other/inputs", "toy.jpg"), None),
])
def test_a_filer_event_is_a_hint_about_the_input_it_changed(event: dict, prefix: str | None) -> None:
    assert FilerMetaTail("127.0.0.1:8888", "b", "inputs/", weed="weed").prefix_of(event) == prefix


def test_the_seaweedfs_source_hears_uploads_from_the_real_filer(s3_server) -> None:
    """``weed filer.meta.tail`` against the test SeaweedFS: an object put through its S3 gateway
    under inputs/ is a hint naming it (its subscription starts a moment after the process does,
    so the test uploads until one is heard)."""
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    wakeup = Wakeup()
    with FilerMetaTail(s3_server.filer, bucket, "inputs/") as source:
        source.start(wakeup)
        client.put_object(Bucket=bucket, Key="outputs/not-an-input.png", Body=b"x")
        heard: frozenset[str] = frozenset()
        deadline = time.monotonic() + HINT_DEADLINE_S
        sent = []
        while not heard & set(sent):
            assert time.monotonic() < deadline, f"no hint for {sent}"
            sent.append(f"inputs/toy-{len(sent)}.")
            client.put_object(Bucket=bucket, Key=sent[-1] + "jpg", Body=b"photo")
            hint = wakeup.wait(1.0)
            heard = hint.prefixes if hint is not None else frozenset()
        assert heard <= set(sent)


# --------------------------------------------------------------------------- configuration


def test_the_default_sources_are_the_bucket_and_on_the_local_store_its_folder(tmp_path: Path) -> None:
    local = Settings(store={"kind": "local", "root": str(tmp_path)})
    store = LocalStore(tmp_path)
    assert chosen_hints(local, store) == ["bucket", "local"]
    assert chosen_hints(local, _NotLocal()) == ["bucket"]  # the store given, whatever the settings say
    assert chosen_hints(Settings(store={"kind": "local", "root": str(tmp_path)}, run={"hints": []}), store) == []
    assert [s.name for s in build_hint_sources(local, store)] == ["bucket", "local"]


class _NotLocal:
    description = "s3://b at http://127.0.0.1:8333"


@pytest.mark.parametrize(("settings", "says"), [
    ({"store": {"kind": "s3", "bucket": "b"}, "run": {"hints": ["local"]}}, "the store is s3://b"),
    ({"store": {"kind": "s3", "bucket": "b"}, "run": {"hints": ["seaweedfs"]}}, "run.seaweedfs_filer"),
    ({"run": {"hints": ["seaweedfs"]}}, "store.kind s3"),
    ({"store": {"kind": "s3", "bucket": "b"}, "run": {"hints": ["sqs"]}}, "run.sqs_queue_url"),
])
def test_a_hint_source_that_cannot_run_here_is_a_config_error_that_says_why(tmp_path: Path, settings: dict,
                                                                              says: str) -> None:
    settings.setdefault("store", {"kind": "local", "root": str(tmp_path)})
    store = LocalStore(tmp_path) if settings["store"]["kind"] == "local" else _NotLocal()
    with pytest.raises(ConfigError, match=says):
        build_hint_sources(Settings(**settings), store)


def test_a_relisting_finds_an_upload_before_the_mark_without_the_done_markers(tmp_path: Path) -> None:
    """Without any hint, an upload that sorts before the mark is found within run.relist_s: one
    listing of inputs/ and one of the new input's own done markers, not a full scan."""

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    store = LocalStore(tmp_path / "bucket")
    for key in ("inputs/b.jpg", "inputs/d.jpg"):
        store.put(key, b"x" + key.encode())
    scanner = IncrementalScanner(store, LAYOUT, full_rescan_s=300, clock=clock, relist_s=30)
    assert len(scanner.scan().pending) == 2
    store.put("inputs/a.jpg", b"new")
    store.put("inputs/b.jpg", b"replaced")  # a new version of a listed input is new work too
    assert scanner.scan().pending == []  # incremental: both sort before the mark
    assert scanner.seconds_to_listing() == 30
    clock.now = 30
    relisted = scanner.scan()
    assert not relisted.full and scanner.relists == 1 and scanner.scans["full"] == 1
    assert sorted(i.keys.input for i in relisted.pending) == ["inputs/a.jpg", "inputs/b.jpg"]
    # The rescan hint's HEAD, the inputs LIST and one done-marker LIST per new input.
    assert relisted.requests == 1 + 1 + 2
    # Known and unchanged inputs are not offered again by the next relisting.
    clock.now = 60
    assert scanner.scan().pending == [] and scanner.relists == 2
