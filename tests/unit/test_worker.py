"""The worker over the local store: results, failure records, re-runs, replacement, the commit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from processor.cli.compose import build_registry
from processor.config import load_settings
from processor.errors import ObjectNotFound
from processor.manifest import FailureRecord, Manifest
from processor.queue.keys import KeyLayout
from processor.queue.scan import scan
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.images import bad_inputs, photo_bytes
from testkit.waits import HANG_GUARD_S


def make_settings(tmp_path: Path, **run: object):
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": ["toon"], "poll_interval_s": 0.05, **run},
        "styles": {"toon": {"engine": "toon", "variants": 2, "max_side": 256}},
        "pipeline": {"contact_sheet_height": 64},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


def make_worker(store, settings, wid: str = "w1", **kw) -> Worker:
    worker = Worker(store, settings, build_registry(settings), worker_id=wid, **kw)
    worker.setup()
    return worker


@pytest.fixture
def env(tmp_path):
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    return settings, store, KeyLayout(settings.prefixes)


def snapshot(store) -> dict[str, str]:
    return {o.key: o.etag for o in store.list("")}


def test_good_and_bad_inputs_end_with_one_result_each(env):
    settings, store, layout = env
    good = {
        "inputs/cow.jpg": photo_bytes(640, 480),
        "inputs/tall.png": photo_bytes(480, 640, fmt="PNG", seed=1),
        "inputs/a folder/ünïcode toy.jpg": photo_bytes(320, 240, seed=2),
    }
    bad = {f"inputs/bad/{name}.{'jpg' if 'jpg' in name else 'png'}": data for name, data in bad_inputs().items()}
    for key, data in {**good, **bad}.items():
        store.put(key, data)

    assert make_worker(store, settings).run_once() == 0

    for key in good:
        keys = layout.for_input(key)
        manifest = Manifest.model_validate_json(store.get(keys.manifest).body)
        assert manifest.source.etag == store.head(key).etag
        assert len(manifest.variants) == 2
        for v in manifest.variants:
            assert hashlib.sha256(store.get(v.key).body).hexdigest() == v.sha256
        assert store.head(manifest.contact_sheet).size > 0
    assert (
        Manifest.model_validate_json(store.get(layout.for_input("inputs/tall.png").manifest).body).variants[0].height
        > Manifest.model_validate_json(store.get(layout.for_input("inputs/tall.png").manifest).body).variants[0].width
    )
    for key in bad:
        record = FailureRecord.model_validate_json(store.get(layout.for_input(key).failure).body)
        assert record.source.etag == store.head(key).etag
        assert record.hint and record.message
        with pytest.raises(ObjectNotFound):
            store.head(layout.for_input(key).manifest)


def test_second_run_writes_nothing(env):
    settings, store, _layout = env
    store.put("inputs/cow.jpg", photo_bytes())
    store.put("inputs/empty.jpg", b"")
    assert make_worker(store, settings).run_once() == 0
    before = snapshot(store)
    worker = make_worker(store, settings, "w2")
    assert worker.run_once() == 0
    assert snapshot(store) == before
    assert sum(worker.totals.values()) == 0


def test_done_inputs_are_found_by_listing_alone(env):
    settings, store, layout = env
    for i in range(5):
        store.put(f"inputs/toy{i}.jpg", photo_bytes(200, 150, seed=i))
    make_worker(store, settings).run_once()
    backlog = scan(store, layout)
    assert backlog.done == 5 and not backlog.pending
    assert backlog.requests == 2  # one listing of inputs, one of done markers


def test_replaced_input_is_processed_again(env):
    settings, store, layout = env
    store.put("inputs/cow.jpg", photo_bytes(seed=1))
    make_worker(store, settings).run_once()
    keys = layout.for_input("inputs/cow.jpg")
    first = Manifest.model_validate_json(store.get(keys.manifest).body)
    new = store.put("inputs/cow.jpg", photo_bytes(seed=2))
    assert make_worker(store, settings).run_once() == 0
    second = Manifest.model_validate_json(store.get(keys.manifest).body)
    assert second.source.etag == new.etag != first.source.etag
    assert second.variants[0].sha256 != first.variants[0].sha256


def test_failed_input_fixed_by_reupload(env):
    settings, store, layout = env
    store.put("inputs/cow.jpg", b"<html>not an image</html>")
    make_worker(store, settings).run_once()
    keys = layout.for_input("inputs/cow.jpg")
    assert store.head(keys.failure)
    store.put("inputs/cow.jpg", photo_bytes())
    make_worker(store, settings).run_once()
    assert Manifest.model_validate_json(store.get(keys.manifest).body).source.etag == store.head("inputs/cow.jpg").etag
    with pytest.raises(ObjectNotFound):
        store.head(keys.failure)  # the stale failure record is gone


def test_leftovers_of_a_crashed_attempt_are_replaced(env):
    settings, store, layout = env
    store.put("inputs/cow.jpg", photo_bytes())
    keys = layout.for_input("inputs/cow.jpg")
    store.put(keys.variant("toon", 0), b"half-written by a worker that died")
    assert make_worker(store, settings).run_once() == 0
    manifest = Manifest.model_validate_json(store.get(keys.manifest).body)
    assert hashlib.sha256(store.get(keys.variant("toon", 0)).body).hexdigest() == manifest.variants[0].sha256


def test_crash_between_manifest_and_marker_is_recovered_without_recompute(env):
    settings, store, layout = env
    store.put("inputs/cow.jpg", photo_bytes())
    make_worker(store, settings).run_once()
    keys = layout.for_input("inputs/cow.jpg")
    for obj in list(store.list(layout.done_prefix)):
        store.delete(obj.key)  # as if the worker died right after its commit
    manifest_before = store.head(keys.manifest).etag
    worker = make_worker(store, settings, "w2")
    assert worker.run_once() == 0
    assert worker.totals["already"] == 1 and worker.totals["done"] == 0
    assert store.head(keys.manifest).etag == manifest_before
    assert scan(store, layout).done == 1


def test_zombie_worker_cannot_publish_over_a_commit(env):
    """A worker paused past its claim's TTL resumes after another committed: it publishes nothing."""
    settings, store, layout = env
    store.put("inputs/cow.jpg", photo_bytes())
    item = scan(store, layout).pending[0]
    zombie = make_worker(store, settings, "zombie", use_claims=False)
    from processor.worker.runner import PassResult

    job = zombie._fetch(item, None, PassResult())
    zombie._compute([job])
    # Meanwhile a healthy worker does the whole item.
    assert make_worker(store, settings, "healthy").run_once() == 0
    committed = snapshot(store)
    assert zombie.publisher.outputs_and_commit(job) == "refused"
    assert snapshot(store) == committed


def test_sidecar_overrides_and_bad_sidecar(env):
    settings, store, layout = env
    store.put("inputs/one.jpg", photo_bytes())
    store.put("inputs/one.json", json.dumps({"variants": 3, "seed": 7}).encode())
    store.put("inputs/two.jpg", photo_bytes(seed=3))
    store.put("inputs/two.json", b'{"variantz": 3}')
    assert make_worker(store, settings).run_once() == 0
    manifest = Manifest.model_validate_json(store.get(layout.for_input("inputs/one.jpg").manifest).body)
    assert [v.seed for v in manifest.variants] == [7, 8, 9]
    record = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/two.jpg").failure).body)
    assert record.error == "InvalidSidecar" and "variantz" in record.message


def test_inputs_sharing_an_output_folder(env):
    settings, store, layout = env
    store.put("inputs/cow.jpg", photo_bytes())
    store.put("inputs/cow.png", photo_bytes(fmt="PNG"))
    assert make_worker(store, settings).run_once() == 0
    assert Manifest.model_validate_json(store.get("outputs/cow/manifest.json").body).source.key == "inputs/cow.jpg"
    record = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/cow.png").failure).body)
    assert "inputs/cow.jpg" in record.message and "Rename" in record.hint


def test_static_shards_split_the_work(tmp_path):
    settings = make_settings(tmp_path, coordination="shards", shard_count=3)
    store = LocalStore(settings.store.root)
    for i in range(12):
        store.put(f"inputs/t{i:02d}.png", photo_bytes(96, 96, fmt="PNG", seed=i))
    done = 0
    for index in range(3):
        shard = settings.model_copy(update={"run": settings.run.model_copy(update={"shard_index": index})})
        worker = make_worker(store, shard, f"w{index}", use_claims=False)
        assert worker.run_once() == 0
        assert 0 < worker.totals["done"] < 12
        done += worker.totals["done"]
    assert done == 12 and scan(store, KeyLayout(settings.prefixes)).done == 12


def test_output_keys_never_leave_outputs(env):
    _settings, _store, layout = env
    for key in ["inputs/../../escape.jpg", "inputs//double.jpg", "inputs/./dot.jpg"]:
        keys = layout.for_input(key)
        for derived in (keys.manifest, keys.variant("toon", 0), keys.failure):
            assert not any(part in ("", ".", "..") for part in derived.split("/")), derived
        assert keys.manifest.startswith("outputs/") and keys.failure.startswith("failed/")


def test_sidecar_values_are_validated_by_the_style(env):
    settings, store, layout = env
    store.put("inputs/one.jpg", photo_bytes())
    store.put("inputs/one.json", json.dumps({"styles": ["nope"]}).encode())
    store.put("inputs/two.jpg", photo_bytes(seed=1))
    store.put("inputs/two.json", json.dumps({"variants": 99}).encode())
    assert make_worker(store, settings).run_once() == 0
    one = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/one.jpg").failure).body)
    assert one.error == "InvalidSidecar" and "nope" in one.message and "toon" in one.message
    two = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/two.jpg").failure).body)
    assert two.error == "InvalidSidecar" and "variants" in two.message


def test_a_fatal_store_error_while_uploading_stops_the_pass_without_hanging(tmp_path):
    """Credentials revoked mid-run: the upload stage dies; compute and fetch must not block on
    queues nobody drains, and the error reaches the caller (the CLI exits non-zero)."""
    from processor.errors import StoreAccessError

    settings = make_settings(tmp_path, prefetch=1, upload_queue=1)

    class RevokedStore(LocalStore):
        def put(self, key, body, **kw):
            if key.startswith("outputs/"):
                raise StoreAccessError("credentials revoked")
            return super().put(key, body, **kw)

    store = RevokedStore(settings.store.root)
    for i in range(6):
        store.put(f"inputs/t{i}.png", photo_bytes(96, 96, fmt="PNG", seed=i))
    with pytest.raises(StoreAccessError):
        make_worker(store, settings).run_once()
    assert list(store.list(".processor/claims/")) == []  # every claim was released


def test_the_pass_ends_when_the_fetch_stage_gives_up_its_end_marker(tmp_path):
    """The race behind the hang above, made certain: the upload stage dies while the compute
    stage is busy and the prefetch queue is full, so the fetch stage gives up offering its end
    marker (nobody may ever read a full queue again once the pass is aborted). The compute stage
    must still see the fetch stage has ended instead of waiting on the queue forever."""
    import threading

    from processor.errors import StoreAccessError

    settings = make_settings(tmp_path, prefetch=1, upload_queue=1)
    computing_second = threading.Event()

    class RevokedStore(LocalStore):
        def put(self, key, body, **kw):
            if key.startswith("outputs/"):
                # Fail the first upload only once the compute stage holds the second item, with
                # the third already waiting in the (full) prefetch queue behind it.
                computing_second.wait(HANG_GUARD_S)
                raise StoreAccessError("credentials revoked")
            return super().put(key, body, **kw)

    store = RevokedStore(settings.store.root)
    for i in range(6):
        store.put(f"inputs/t{i}.png", photo_bytes(96, 96, fmt="PNG", seed=i))
    worker = make_worker(store, settings)
    compute, calls = worker.pipeline.compute_many, []

    def slow_second_compute(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            computing_second.set()
            # Stay busy until the fetch stage has ended: with the prefetch queue full and the pass
            # aborted, it exits without delivering its end marker.
            for thread in threading.enumerate():
                if thread.name == "fetch":
                    thread.join(10)
        return compute(*args, **kwargs)

    worker.pipeline.compute_many = slow_second_compute
    raised: list[BaseException] = []

    def drain() -> None:
        try:
            worker.run_once()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    runner = threading.Thread(target=drain, daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "run_pass hung waiting for the fetch stage's end marker"
    assert len(calls) == 2, calls  # the race happened as arranged: the second item was computing
    assert [type(exc) for exc in raised] == [StoreAccessError]
    assert list(store.list(".processor/claims/")) == []  # every claim was released
