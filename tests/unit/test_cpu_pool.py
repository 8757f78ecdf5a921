"""Compute processes for CPU-only styles (``processor.worker.cpu_pool``): every core computes, an
item's failure comes back with its hint, a dead process fails only its item, and the composition
root uses them only where no PyTorch model loads."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from processor.cli.compose import build_compute_pool, build_registry, cpu_pipeline, make_engine
from processor.config import Settings
from processor.errors import InvalidInput, StageFailed, StyleUnavailable
from processor.manifest import Manifest
from processor.pipeline.item import ItemPipeline
from processor.pipeline.render import EngineRegistry
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.worker.cpu_pool import ProcessCompute
from processor.worker.runner import Worker
from testkit.images import photo_bytes
from tests.unit.test_worker import make_settings

TOON = {"styles": {"toon": {"engine": "toon", "variants": 2, "max_side": 96}}, "run": {"styles": ["toon"]}}
#: Pixel widths that make the test engine below misbehave in a compute process.
BAD_INPUT_WIDTH, FATAL_WIDTH, UNAVAILABLE_WIDTH = 97, 98, 99


class MoodyEngine:
    """The real toon engine, except for two image widths: one is a bad input, one kills the process."""

    def __init__(self, inner) -> None:
        self.inner, self.style_name, self.engine = inner, inner.style_name, inner.engine

    def setup(self) -> None:
        self.inner.setup()

    def __call__(self, image, context=None):
        if image.width == BAD_INPUT_WIDTH:
            raise InvalidInput("this toy is too moody", hint="Cheer it up and upload it again.")
        if image.width == UNAVAILABLE_WIDTH:
            raise StyleUnavailable("style 'toon' cannot run on this worker", styles=("toon",))
        if image.width == FATAL_WIDTH:
            os._exit(3)  # a crash in native code, as far as the worker can tell
        return self.inner(image, context)

    def describe(self):
        return self.inner.describe()


def moody_pipeline(settings: Settings) -> ItemPipeline:
    """A compute process's pipeline with ``MoodyEngine`` (module level: the pool pickles it)."""
    registry = EngineRegistry(settings.styles, lambda name, style: MoodyEngine(make_engine(name, style)))
    pipeline = ItemPipeline(settings, registry, styles=["toon"])
    pipeline.setup()
    return pipeline


def _prepared(settings: Settings, width: int):
    local = ItemPipeline(settings, build_registry(settings), styles=["toon"])
    return local.prepare(photo_bytes(width, 96), name=f"{width}.jpg")


def test_an_item_computes_in_a_process_and_its_failures_keep_their_hint() -> None:
    settings = Settings(**TOON)
    with_pool = ProcessCompute(functools.partial(moody_pipeline, settings), 2)
    try:
        with_pool.start()
        timings: dict[str, float] = {}
        rendered = with_pool.compute(_prepared(settings, 128), timings)
        assert [v.style for v in rendered.variants] == ["toon", "toon"] and "style:toon" in timings
        with pytest.raises(InvalidInput, match="too moody") as caught:
            with_pool.compute(_prepared(settings, BAD_INPUT_WIDTH), {})
        assert caught.value.hint == "Cheer it up and upload it again."
        # Its attributes too: the worker's capabilities record names the styles that cannot load.
        with pytest.raises(StyleUnavailable) as unavailable:
            with_pool.compute(_prepared(settings, UNAVAILABLE_WIDTH), {})
        assert unavailable.value.styles == ("toon",) and unavailable.value.hint == StyleUnavailable.hint
        # A process that dies fails its item only; the next item gets a new pool.
        with pytest.raises(StageFailed, match="died"):
            with_pool.compute(_prepared(settings, FATAL_WIDTH), {})
        assert with_pool.compute(_prepared(settings, 128), {}).variants
    finally:
        with_pool.close()


def _slow_second_setup(folder: str) -> object:
    """A pool process's setup that is slow for every process but the first to arrive, and leaves
    a file per process that finished it."""
    import time

    try:
        with open(os.path.join(folder, "first"), "x"):
            pass
    except FileExistsError:
        time.sleep(1.5)
    open(os.path.join(folder, f"set-up-{os.getpid()}"), "w").close()
    return object()


def test_start_returns_once_every_process_has_set_up(tmp_path: Path) -> None:
    """Each process answers one of start's calls: a fast process cannot answer for a slow one
    that is still loading (and would die of a Ctrl-C then)."""
    pool = ProcessCompute(functools.partial(_slow_second_setup, str(tmp_path)), 2)
    try:
        pool.start()
        assert sorted(p.name for p in tmp_path.glob("set-up-*")) == sorted(f"set-up-{pid}" for pid in pool.pids())
        assert len(pool.pids()) == 2
    finally:
        pool.close()


def test_a_signal_to_the_process_group_leaves_the_computing_to_the_worker() -> None:
    """Ctrl-C reaches every process of the group; the worker's first signal finishes the items in
    hand, so its compute processes must not die of it."""
    import signal

    settings = Settings(**TOON)
    pool = ProcessCompute(functools.partial(cpu_pipeline, settings, ["toon"]), 2)
    try:
        pool.start()
        for pid in pool.pids():
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)
        assert pool.compute(_prepared(settings, 128), {}).variants
        assert len(pool.pids()) == 2
    finally:
        pool.close()


def test_a_worker_with_compute_processes_finishes_every_input(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.store.root)
    layout = KeyLayout(settings.prefixes)
    keys = [f"inputs/toy-{n}.jpg" for n in range(5)]
    for n, key in enumerate(keys):
        store.put(key, photo_bytes(160, 120, seed=n))
    pool = ProcessCompute(functools.partial(cpu_pipeline, settings, ["toon"]), 2)
    worker = Worker(store, settings, build_registry(settings), worker_id="w1", compute_pool=pool)
    try:
        worker.setup()
        assert worker.compute_slots == 2
        assert worker.run_once() == 0
    finally:
        worker.close()
    for key in keys:
        manifest = Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body)
        assert manifest.source.key == key and len(manifest.variants) == 2


@pytest.mark.parametrize(("config", "size"), [
    ({**TOON, "run": {"styles": ["toon"], "cpu_workers": 3}}, 3),
    ({**TOON, "run": {"styles": ["toon"], "cpu_workers": 1}}, None),
    ({"styles": {"sd": {"engine": "img2img", "model": "some/model"}}, "run": {"styles": ["sd"], "cpu_workers": 4}},
     None),
])
def test_compute_processes_only_for_cpu_styles_and_more_than_one_slot(config: dict, size: int | None) -> None:
    settings = Settings(**config)
    pool = build_compute_pool(settings, settings.run.styles)
    assert (pool.size if pool is not None else None) == size


def test_by_default_there_is_a_compute_process_per_core() -> None:
    settings = Settings(**TOON)
    pool = build_compute_pool(settings, ["toon"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert (pool.size if pool is not None else 1) == cores
