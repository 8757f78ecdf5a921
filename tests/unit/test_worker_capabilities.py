"""The worker's capabilities record over the local store: what it says, when it is written and
removed, how it ages out, and what a worker does with a style it cannot load (the input waits for
a worker that can)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from processor.cli.compose import build_registry, make_engine
from processor.cli.main import main as cli_main
from processor.config import ToonStyle, load_settings
from processor.errors import ObjectNotFound
from processor.manifest import FailureRecord, Manifest, WorkerInfo
from processor.pipeline.render import EngineRegistry
from processor.pipeline.toon import ToonEngine
from processor.queue.jobs import JobStatus, job_id
from processor.queue.keys import KeyLayout
from processor.queue.outcomes import Outcome
from processor.queue.protocol import BucketQueue
from processor.queue.workers import (
    STALE_RECORD_S,
    WORKER_RECORD_TTL_S,
    StyleState,
    WorkerRecord,
    read_roster,
    record_key,
    write_record,
)
from processor.store.local import LocalStore
from processor.worker.capabilities import check_style
from processor.worker.presence import WorkerPresence
from processor.worker.runner import Worker
from testkit.images import photo_bytes
from testkit.waits import wait_until


def make_settings(tmp_path: Path, **models: object):
    cfg = {
        "store": {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": ["toon"], "poll_interval_s": 0.05},
        "styles": {"toon": {"engine": "toon", "variants": 2, "max_side": 128},
                   # A worker whose install lacks the sd extra, simulated: the model folder is missing.
                   "disney": {"engine": "img2img", "model": str(tmp_path / "no-such-model"), "variants": 1}},
        "pipeline": {"contact_sheet_height": 32},
        "models": models,
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


class Clock:
    """The local store's server clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def capable_registry(settings: Any) -> EngineRegistry:
    """A worker that can run 'disney' (here a toon engine under its name)."""

    def factory(name: str, style: Any) -> Any:
        return ToonEngine(name, ToonStyle(variants=1, max_side=128)) if name == "disney" else make_engine(name, style)

    return EngineRegistry(settings.styles, factory)


def test_a_worker_announces_what_it_can_run_and_removes_its_record_on_exit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    layout = KeyLayout(settings.prefixes)
    worker = Worker(store, settings, build_registry(settings), worker_id="w-toon", announce=True)
    worker.setup()
    try:
        roster = wait_until(lambda: (r := read_roster(store, layout)).live and r.live[0].record.phase == "ready" and r,
                            "the worker's ready record")
        (live,) = roster.live
        record = live.record
        assert record.worker.id == "w-toon" and record.phase == "ready" and record.run_styles == ["toon"]
        assert record.style("toon").state is StyleState.READY
        disney = record.style("disney")
        assert disney.state is StyleState.UNAVAILABLE and "no model_index.json" in disney.reason, disney
        assert "sd" in record.extras  # this test environment has the sd extra; the model is what is missing
        assert roster.availability("toon").workers == ["w-toon"]
        why = roster.availability("disney").why_not()
        assert why.startswith("no running worker can load it: w-toon: model ") and "no model_index.json" in why
    finally:
        worker.close()
    assert read_roster(store, layout).live == []
    assert not list(store.list(layout.workers_prefix))


def test_a_style_it_cannot_load_waits_for_a_worker_that_can(tmp_path: Path, capsys) -> None:
    """The toon-only worker writes a retryable StyleUnavailable record (no attempt spent), leaves
    the input alone from then on (``run --once`` ends, exit 0) and says so in its record; a worker
    that can load the style takes the input at its next scan and the record goes."""
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    layout = KeyLayout(settings.prefixes)
    store.put("inputs/bear.jpg", photo_bytes(96, 80, seed=1))
    store.put("inputs/bear.json", b'{"styles": ["disney"]}')
    store.put("inputs/plain.jpg", photo_bytes(96, 80, seed=2))
    worker = Worker(store, settings, build_registry(settings), worker_id="w-toon", announce=True)
    worker.setup()
    try:
        assert worker.run_once() == 0
        assert worker.totals[Outcome.STYLE_UNAVAILABLE] == 1 and worker.totals[Outcome.DONE] == 1
        keys = layout.for_input("inputs/bear.jpg")
        record = FailureRecord.model_validate_json(store.get(keys.failure).body)
        assert (record.error, record.final, record.permanent, record.attempts) == ("StyleUnavailable", False, False, 0)
        assert "style 'disney' cannot run on this worker" in record.message and "Operator" in record.hint
        assert not list(store.list(keys.done_prefix))  # no done marker: a capable worker's scan finds it
        # The job waits: queued, with the record to say why; Retry (a requeue) is offered.
        queue = BucketQueue.for_settings(store, settings)
        state = queue.state(job_id("bear.jpg"))
        assert state.status is JobStatus.queued and state.waiting is not None
        assert state.waiting.error == "StyleUnavailable"
        # `processor status` says it waits, not that an attempt failed.
        capsys.readouterr()
        assert cli_main(["status", "--config", str(tmp_path / "config.yaml")]) == 0
        assert ("inputs/bear.jpg: StyleUnavailable (waiting for a worker that can load it; no attempt spent)"
                in capsys.readouterr().out)
        # Asked again, this worker leaves it alone: no claim, no new record.
        before = store.head(keys.failure).etag
        assert worker.run_once() == 0 and store.head(keys.failure).etag == before
        # Its record says what failed, in the load error's own words.
        wait_until(lambda: read_roster(store, layout).live[0].record.style("disney").reason.startswith(
            "style 'disney' cannot run on this worker"), "the record to carry the load failure")
    finally:
        worker.close()

    capable = Worker(store, settings, capable_registry(settings), worker_id="w-gpu")
    capable.setup()
    assert capable.run_once() == 0 and capable.totals[Outcome.DONE] == 1
    manifest = Manifest.model_validate_json(store.get(keys.manifest).body)
    assert [v.style for v in manifest.variants] == ["disney"] and manifest.attempt == 1
    assert not list(store.list(keys.failure))  # the success deleted the record


def test_retry_of_a_waiting_job_requeues_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    store.put("inputs/bear.jpg", photo_bytes(96, 80, seed=1))
    store.put("inputs/bear.json", b'{"styles": ["disney"]}')
    worker = Worker(store, settings, build_registry(settings), worker_id="w-toon")
    worker.setup()
    assert worker.run_once() == 0
    queue = BucketQueue.for_settings(store, settings)
    state = queue.retry(job_id("bear.jpg"))
    assert state.status is JobStatus.queued and state.waiting is not None and state.waiting.requeued_at is not None


def test_the_cheap_check_never_loads_and_says_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    settings = make_settings(tmp_path, offline=True)
    toon, disney = settings.styles["toon"], settings.styles["disney"]
    assert check_style(toon, settings) == (StyleState.LOADABLE, None)
    state, reason = check_style(disney, settings)
    assert state is StyleState.UNAVAILABLE and "no model_index.json" in reason
    hub = disney.model_copy(update={"model": "some-org/not-cached-model"})
    state, reason = check_style(hub, settings)
    assert state is StyleState.UNAVAILABLE and "not in the model cache" in reason and "offline" in reason
    online = settings.model_copy(update={"models": settings.models.model_copy(update={"offline": False})})
    state, reason = check_style(hub, online)
    assert state is StyleState.LOADABLE and "downloaded on first use" in reason


def test_the_check_names_the_extra_when_its_packages_are_missing(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "diffusers") else real(name, *a))
    settings = make_settings(tmp_path)
    state, reason = check_style(settings.styles["disney"], settings)
    assert state is StyleState.UNAVAILABLE
    assert reason == "needs the sd extra (torch, diffusers not installed): pip install 'toy-cartoonizer[sd]'"


def test_a_record_ages_out_on_the_stores_clock_and_long_dead_ones_are_pruned(tmp_path: Path) -> None:
    clock = Clock()
    store = LocalStore(tmp_path / "bucket", clock=clock)
    settings = make_settings(tmp_path)
    layout = KeyLayout(settings.prefixes)
    info = WorkerInfo(id="w-1", version="1", device="cpu")
    write_record(store, layout, WorkerRecord(worker=info))
    assert [w.record.worker.id for w in read_roster(store, layout).live] == ["w-1"]
    clock.now += timedelta(seconds=WORKER_RECORD_TTL_S + 1)
    roster = read_roster(store, layout)
    assert roster.live == [] and roster.stale == 1 and not roster.any_live
    # Garbage, and a record that claims to live for ever (its TTL is capped), are never trusted.
    store.put(f"{layout.workers_prefix}junk.json", b"{not json")
    write_record(store, layout, WorkerRecord(worker=info.model_copy(update={"id": "w-forever"}), ttl_s=1e12))
    roster = read_roster(store, layout)
    assert [w.record.worker.id for w in roster.live] == ["w-forever"] and roster.unreadable == 1
    # A worker that starts deletes the records of workers dead for long (by their Last-Modified).
    old = tmp_path / "bucket" / record_key(layout, "w-1")
    past = (datetime.now(timezone.utc) - timedelta(seconds=STALE_RECORD_S + 60)).timestamp()
    os.utime(old, (past, past))
    queue = BucketQueue(store, layout)
    clock.now = datetime.now(timezone.utc)
    queue.announce_worker(WorkerRecord(worker=info.model_copy(update={"id": "w-new"})), prune=True)
    left = sorted(o.key.rsplit("/", 1)[1] for o in store.list(layout.workers_prefix))
    assert left == ["junk.json", "w-forever.json", "w-new.json"]


def test_the_record_is_renewed_only_while_the_worker_makes_progress(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    layout = KeyLayout(settings.prefixes)
    now = [0.0]
    presence = WorkerPresence(BucketQueue(store, layout), lambda phase: WorkerRecord(
        worker=WorkerInfo(id="w-p", version="1", device="cpu"), phase=phase), stall_s=60, refresh_s=0.05,
        clock=lambda: now[0])
    presence.start()
    try:
        assert presence.writes == 1 and presence.alive()  # starting: setup loads models without heartbeats
        presence.setup_done()
        wait_until(lambda: json.loads(store.get(record_key(layout, "w-p")).body)["phase"] == "ready",
                   "the ready record")
        written = presence.writes

        def beat_and_tick() -> bool:  # a live loop: heartbeats while the (fake) clock moves on
            now[0] += 0.05
            presence.heartbeat()
            return presence.writes > written + 1

        wait_until(beat_and_tick, "a refresh while alive")
        now[0] = 120.0  # no heartbeat for longer than stall_s: a hung loop
        assert not presence.alive()
        time.sleep(0.2)  # a refresh in flight lands
        stuck = presence.writes
        time.sleep(0.3)  # six refresh periods
        assert presence.writes == stuck  # no more rewrites: the record ages out
        presence.heartbeat(quiet_s=300)  # an announced idle wait is life
        assert presence.alive()
        now[0] = 120.0 + 250
        assert presence.alive()
        now[0] = 120.0 + 400
        assert not presence.alive()
    finally:
        presence.close()
    with pytest.raises(ObjectNotFound):
        store.get(record_key(layout, "w-p"))
