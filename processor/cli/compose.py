"""The composition root: the only module that names concrete classes (stores, engines, the
caption stage). Every command, the HTTP API and the trainer build their parts here."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from processor.config import Settings
from processor.errors import ConfigError, StoreAccessError
from processor.queue.keys import KeyLayout
from processor.store.base import ObjectStore
from processor.store.retry import for_command


class StoreUse(Enum):
    """Who opens the store: how long a store that does not answer is waited for, and whether a
    local bucket directory that does not exist may be made."""

    #: ``status``, ``results``, ``retry``, ``doctor``: a person waits (``store.command_timeout_s``),
    #: and a missing local bucket is an error: reading one never creates it.
    READ = "read"
    #: ``submit``, and ``run --once`` until the store first answered: a person waits; the first
    #: upload makes the bucket.
    WRITE = "write"
    #: ``run`` and ``serve``: the configured retries and back-off (``store.max_attempts``).
    DAEMON = "daemon"


def build_store(settings: Settings, use: StoreUse = StoreUse.DAEMON) -> ObjectStore:
    """The configured store, opened for ``use`` (``StoreUse``)."""
    store = settings.store if use is StoreUse.DAEMON else for_command(settings.store)
    kind = store.kind
    if kind == "local":
        from processor.store.local import LocalStore

        if use is StoreUse.READ and not store.root.is_dir():
            raise StoreAccessError(missing_local_bucket(store.root))
        return LocalStore(store.root)
    if kind == "s3":
        from processor.store.s3 import S3Store

        return S3Store.from_settings(store)
    from processor.store.cos import CosStore

    return CosStore.from_settings(store)


def missing_local_bucket(root: Path) -> str:
    """What a command that only reads says when the local bucket directory is not there."""
    where = root.absolute()
    return (f"no bucket at {where} (store.root: {root}): the directory does not exist. Run from the folder "
            f"that holds it, point store.root at it, or create it: `processor submit PHOTOS` uploads into "
            f"a new one, `mkdir -p {where}` makes an empty one")


def make_engine(style_name: str, style: Any, models: Any = None, video: Any = None) -> Any:
    """The engine for one style (the factory ``EngineRegistry`` calls), by its ``engine`` key; what
    the model's family changes inside an engine is data (``processor.models.families``). ``models``
    is the worker's ``ModelLoader``, shared by every diffusion style so equal base models load once;
    ``video`` the clip limits of animate styles (``pipeline.video``, default its defaults)."""
    if style.engine == "toon":
        from processor.pipeline.toon import ToonEngine

        return ToonEngine(style_name, style)
    from processor.models.loader import ModelLoader

    if style.engine == "animate":
        from processor.pipeline.animate import AnimateEngine

        return AnimateEngine(style_name, style, models if models is not None else ModelLoader(), video)
    from processor.pipeline.edit import EditEngine
    from processor.pipeline.img2img import Img2ImgEngine
    from processor.pipeline.txt2img import Txt2ImgEngine

    engines: dict[str, Any] = {"img2img": Img2ImgEngine, "txt2img": Txt2ImgEngine, "instruct-pix2pix": EditEngine,
                               "edit": EditEngine}
    if style.engine not in engines:
        raise ConfigError(f"styles.{style_name}.engine: unknown engine {style.engine!r}")
    return engines[style.engine](style_name, style, models if models is not None else ModelLoader())


def build_registry(settings: Settings) -> Any:
    from processor.models.loader import ModelLoader
    from processor.pipeline.render import EngineRegistry

    # Imports torch only when a diffusion style loads; opens the store only for bucket: LoRAs.
    models = ModelLoader(settings.models, store=lambda: build_store(settings))
    from processor.pipeline.background import with_background
    from processor.pipeline.mask import SubjectMasker

    masker = SubjectMasker(settings.pipeline.mask, models)  # one mask per input, shared by every style
    return EngineRegistry(settings.styles, lambda name, style: with_background(
        make_engine(name, style, models, settings.pipeline.video), name, style, models, masker))


def build_captioner(settings: Settings, store: ObjectStore | None = None) -> Any:
    """The caption stage, or None with ``caption.mode: none``. With a store, label tables are
    shared through the bucket's state prefix (``<state>/cache/label-tables/``)."""
    if settings.caption.mode == "none":
        return None
    from processor.models.loader import ModelLoader
    from processor.pipeline.caption import Captioner

    remote = None
    if store is not None:
        from processor.queue.shared_cache import StoreCache

        remote = StoreCache(store, KeyLayout(settings.prefixes).cache_prefix + "label-tables/")
    return Captioner(settings.caption, ModelLoader(settings.models), remote)


def needs_torch(settings: Settings, styles: Sequence[str]) -> bool:
    """Whether running ``styles`` loads a PyTorch model: a diffusion engine, a background stage
    or the caption stage, or the CLIP score (``pipeline.clip_score``). The toon style alone does not."""
    from processor.config import background_model
    from processor.pipeline.caption import caption_used

    for name in styles:
        style = settings.styles[name]
        if style.engine != "toon" or background_model(style) is not None:
            return True
    return caption_used(settings.caption, settings.styles, list(styles)) or settings.pipeline.clip_score is not None


def build_compute_pool(settings: Settings, styles: Sequence[str]) -> Any:
    """The worker's compute processes (``processor.worker.cpu_pool``) when ``styles`` need no PyTorch
    model and ``run.cpu_workers`` (unset: this node's cores) is above one; else None (compute in
    the worker's own process, one item at a time)."""
    if needs_torch(settings, styles):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    size = settings.run.cpu_workers or cores
    if size < 2:
        return None
    from processor.worker.cpu_pool import ProcessCompute

    return ProcessCompute(functools.partial(cpu_pipeline, settings, list(styles)), size)


def cpu_pipeline(settings: Settings, styles: list[str]) -> Any:
    """The item pipeline of one compute process: the styles' engines, set up (no captioner: the
    styles it runs take none)."""
    from processor.pipeline.item import ItemPipeline

    pipeline = ItemPipeline(settings, build_registry(settings), styles=styles)
    pipeline.setup()
    return pipeline


def detect_device(settings: Settings | None = None, styles: Sequence[str] | None = None) -> str:
    """``cuda:N (name)`` when PyTorch sees a GPU, else ``cpu``; never imports torch if absent.

    Given the settings and styles of a run, torch is imported only when they need it
    (``needs_torch``): importing it costs seconds and most of a toon-only worker's memory.
    """
    if settings is not None and styles is not None and not needs_torch(settings, styles):
        return "cpu"
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return "cpu"
        import torch

        if torch.cuda.is_available():
            return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    except Exception:  # noqa: BLE001 - a broken torch install must not stop a CPU-only style
        return "cpu"
    return "cpu"


def worker_id(settings: Settings) -> str:
    return settings.run.worker_id or f"{socket.gethostname()}-{os.getpid()}"
