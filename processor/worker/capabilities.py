"""What this worker can run, for its capabilities record (``processor.queue.workers``).

Its own styles (``run.styles``) are loaded at start: ``ready`` once ``setup`` returned, ``loading``
before. Every other configured style loads when an input first asks for it, so at start it is only
checked, cheaply and without importing PyTorch (a toon-only worker never does): the packages its
engine imports (the ``sd`` extra, PyAV for clips) must be installed, and its diffusion pipelines
(model, refiner, background) must be a local folder with ``model_index.json`` or, in offline mode,
in the model cache. What the check cannot see (a broken download, an option the model's family
does not run) shows when an input asks: the style's load failure, remembered by the registry
(``EngineRegistry.unavailable``), marks it ``unavailable`` from then on, with that reason.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from processor.config import Settings, background_model
from processor.manifest import WorkerInfo, utcnow
from processor.pipeline.caption import caption_used
from processor.pipeline.render import MAX_REASON_CHARS
from processor.queue.workers import StyleCapability, StyleState, WorkerRecord

log = logging.getLogger("processor.worker")

#: The modules whose presence says an optional extra is installed (``pyproject.toml``).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "sd": ("torch", "diffusers", "transformers", "huggingface_hub"),
    "api": ("fastapi", "uvicorn", "jinja2"),
    "otel": ("opentelemetry.sdk",),
    "cos": ("ibm_boto3",),
}
#: Modules a diffusion engine, or a background stage, imports (all in the ``sd`` extra).
DIFFUSION_MODULES = ("torch", "diffusers", "transformers")
#: What an ``engine: animate`` style needs besides (its MP4s: PyAV, in the ``sd`` extra).
CLIP_MODULES = ("av",)
#: How to install the extra the diffusion styles need.
SD_EXTRA = "pip install 'toy-cartoonizer[sd]'"


def missing_modules(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that cannot be imported here (looked up, never imported)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a dotted name whose parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def installed_extras() -> list[str]:
    """The optional extras whose packages are all installed here."""
    return [extra for extra, modules in EXTRA_MODULES.items() if not missing_modules(modules)]


def check_style(style: Any, settings: Settings) -> tuple[StyleState, str | None]:
    """Whether a style that is not loaded yet can load here, and why not (or what loading it will
    take), without loading anything: see the module docstring."""
    needs_models = style.engine != "toon" or background_model(style) is not None
    if not needs_models:
        return StyleState.LOADABLE, None
    modules = [*DIFFUSION_MODULES, *(CLIP_MODULES if style.engine == "animate" else ())]
    missing = missing_modules(modules)
    if missing:
        return StyleState.UNAVAILABLE, f"needs the sd extra ({', '.join(missing)} not installed): {SD_EXTRA}"
    from processor.models.pull_list import configured_models

    notes = []
    for model, revision in configured_models({"style": style}):
        problem, note = _model_here(model, revision, settings)
        if problem:
            return StyleState.UNAVAILABLE, problem
        if note:
            notes.append(note)
    return StyleState.LOADABLE, "; ".join(notes) or None


def _model_here(model: str, revision: str | None, settings: Settings) -> tuple[str | None, str | None]:
    """(why ``model`` cannot load here, or None; a note on what loading it takes, or None)."""
    from processor.models.hub import is_local
    from processor.models.loader import offline_mode

    if is_local(model):
        if not (Path(model).expanduser() / "model_index.json").is_file():
            return f"model {model}: no diffusers pipeline folder there (no model_index.json)", None
        return None, None
    from processor.errors import ModelUnavailableError
    from processor.models.hub import fetch_file

    offline = offline_mode(settings.models)
    cache_dir = str(settings.models.cache_dir) if settings.models.cache_dir else None
    try:
        fetch_file(model, "model_index.json", what=f"model {model}", revision=revision, cache_dir=cache_dir,
                   download=False, offline=offline)
    except ModelUnavailableError as exc:
        if offline:
            return " ".join(str(exc).split()), None
        return None, f"model {model} is not in the cache: downloaded on first use (`processor models pull` first)"
    return None, None


def style_capabilities(settings: Settings, run_styles: Sequence[str], *, loading: bool,
                       unavailable: Callable[[str], str | None],
                       checked: dict[str, tuple[StyleState, str | None]]) -> list[StyleCapability]:
    """Every configured style's state on this worker: its own (``run_styles``) ``loading`` or
    ``ready``; a style whose load failed for an input (``unavailable``: the registry's, and the
    captioner's) ``unavailable``; any other as ``checked`` at start (``check_style``, filled once)."""
    out = []
    for name, style in settings.styles.items():
        failed = unavailable(name)
        if failed is not None:
            out.append(StyleCapability(name=name, state=StyleState.UNAVAILABLE, reason=failed))
        elif name in run_styles:
            out.append(StyleCapability(name=name, state=StyleState.LOADING if loading else StyleState.READY))
        else:
            if name not in checked:
                try:
                    checked[name] = check_style(style, settings)
                except Exception as exc:  # noqa: BLE001 - a check that breaks must not stop the worker
                    log.warning("style_check_failed", extra={"style": name, "error": type(exc).__name__,
                                                             "detail": str(exc)})
                    checked[name] = (StyleState.LOADABLE, None)
            state, reason = checked[name]
            out.append(StyleCapability(name=name, state=state, reason=reason))
    return out


class WorkerCapabilities:
    """What one worker reports: its identity, its styles' states (``style_capabilities``), its
    extras. ``record`` is what ``processor.worker.presence`` writes; ``loaded`` turns true when
    ``setup`` returned. ``pipeline`` is the worker's ``ItemPipeline`` (its registry and captioner
    know what failed to load for an input)."""

    def __init__(self, settings: Settings, run_styles: Sequence[str], info: WorkerInfo, pipeline: Any) -> None:
        self.settings = settings
        self.run_styles = list(run_styles)
        self.info = info
        self.pipeline = pipeline
        self.loaded = False
        self.started_at = utcnow()
        self._checked: dict[str, tuple[StyleState, str | None]] = {}
        self._extras: list[str] | None = None
        #: Style -> why it failed to load for an input (from the item's StyleUnavailable, which also
        #: comes back from compute processes, whose registries this process cannot see).
        self._failed: dict[str, str] = {}

    def note_unavailable(self, styles: Sequence[str], reason: str) -> None:
        """An input's StyleUnavailable: ``styles`` cannot load on this worker, for ``reason``."""
        line = " ".join(reason.split())
        for name in styles:
            if name in self.settings.styles:
                self._failed[name] = line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "…"

    def record(self, phase: Literal["starting", "ready", "stopping"]) -> WorkerRecord:
        if self._extras is None:
            self._extras = installed_extras()
        styles = style_capabilities(self.settings, self.run_styles, loading=not self.loaded,
                                    unavailable=self.unavailable, checked=self._checked)
        return WorkerRecord(worker=self.info, phase=phase, started_at=self.started_at, run_styles=self.run_styles,
                            styles=styles, extras=self._extras)

    def unavailable(self, style_name: str) -> str | None:
        """Why a style failed to load for an input here (its engine, or the captioner it needs)."""
        reason: str | None = self._failed.get(style_name) or self.pipeline.registry.unavailable(style_name)
        caption = self.pipeline.caption_unavailable
        if reason is None and caption is not None and caption_used(self.settings.caption, self.settings.styles,
                                                                   [style_name]):
            reason = f"the captioner cannot load on this worker: {caption}"
        return reason
