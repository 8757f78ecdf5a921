"""Run the configured styles on one decoded image, or on several at once.

``EngineRegistry`` builds each style's engine once (through a factory the composition root
provides) and caches per-image variants of it (a sidecar's ``variants``/``seed``), so weights load
once per worker. Unexpected exceptions from an engine become ``StageFailed`` naming the style. A
style that cannot load for an input after start (its extra or model is missing on this worker) is
that input's ``StyleUnavailable``, remembered, and reported by ``unavailable`` (the worker's
capabilities record, ``processor.worker.capabilities``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image

from processor.config import with_sources
from processor.config.licenses import style_licenses
from processor.errors import InvalidSidecar, ItemError, StageFailed, StyleUnavailable
from processor.pipeline.base import Engine, ItemContext, VariantImage
from processor.pipeline.sidecar import style_with_overrides

log = logging.getLogger("processor.render")

EngineFactory = Callable[[str, Any], Engine]

#: Engines kept for per-image overrides (each shares its style's weights; this bounds the rest).
MAX_OVERRIDE_ENGINES = 32


class EngineRegistry:
    """Builds each style's engine once, and bounded per-image variants of it for sidecar overrides."""

    def __init__(self, styles: Mapping[str, Any], factory: EngineFactory) -> None:
        self.styles = dict(styles)
        self.factory = factory
        self._engines: OrderedDict[tuple[str, tuple[tuple[str, Any], ...]], Engine] = OrderedDict()
        #: True once ``setup`` loaded the worker's own styles: engines built after that are asked
        #: for by one input (its sidecar's styles or values), and failing to build one fails it.
        self._started = False
        #: Engines that failed to load for an input, and why: the next input is told at once
        #: (the oldest forgotten past MAX_OVERRIDE_ENGINES: sidecar values make the keys).
        self._unavailable: OrderedDict[tuple[str, tuple[tuple[str, Any], ...]], str] = OrderedDict()

    def engine(self, style_name: str, overrides: Mapping[str, Any] | None = None) -> Engine:
        if style_name not in self.styles:
            known = ", ".join(sorted(self.styles))
            raise InvalidSidecar(f"unknown style {style_name!r}; configured styles: {known}")
        style = self.styles[style_name]
        # Only fields the style has: a toon style ignores a sidecar prompt.
        applicable = {k: v for k, v in (overrides or {}).items() if k in type(style).model_fields}
        cache_key = (style_name, tuple(sorted((k, freeze(v)) for k, v in applicable.items())))
        if cache_key in self._engines:
            self._engines.move_to_end(cache_key)
            return self._engines[cache_key]
        if cache_key in self._unavailable:
            raise StyleUnavailable(self._unavailable[cache_key], styles=(style_name,))
        configured = style_with_overrides(style_name, style, applicable) if applicable else style
        own = self._engines.get((style_name, ()))
        per_call: frozenset[str] = getattr(own, "PER_CALL_FIELDS", frozenset())
        try:
            if own is not None and applicable and set(applicable) <= per_call:
                engine = own.derive(configured)  # type: ignore[attr-defined] # values its calls read
            else:
                engine = self.factory(style_name, configured)
                engine.setup()
        except ItemError:
            raise
        except Exception as exc:
            if not self._started:
                raise  # the worker's own styles: a missing model stops it at start (exit 5)
            # An input asked for a style (or a background) whose model is missing, or whose engine
            # this install lacks: the operator's problem, not the photo's. That input waits for a
            # worker that can load it; this worker and its other inputs go on.
            message = (f"style {style_name!r} cannot run on this worker"
                       f"{' with these sidecar values' if applicable else ''}: {one_line(exc)}")
            log.warning("style_unavailable", extra={"style": style_name, "error": type(exc).__name__,
                                                    "detail": str(exc)})
            self._unavailable[cache_key] = message
            if len(self._unavailable) > MAX_OVERRIDE_ENGINES:
                self._unavailable.popitem(last=False)
            raise StyleUnavailable(message, styles=(style_name,)) from exc
        self._engines[cache_key] = engine
        # Evict the oldest per-image engine, never a style's own (those carry no overrides).
        overridden = [k for k in self._engines if k[1]]
        if len(overridden) > MAX_OVERRIDE_ENGINES:
            del self._engines[overridden[0]]
        return engine

    def loaded(self, style_name: str) -> bool:
        """Whether the style's own engine (no per-image values) is built and set up."""
        return (style_name, ()) in self._engines

    def unavailable(self, style_name: str) -> str | None:
        """Why the style's own engine failed to load for an input on this worker; None when it has
        not (it loaded, or was never asked for)."""
        return self._unavailable.get((style_name, ()))

    def configured(self, style_name: str, overrides: Mapping[str, Any] | None = None) -> Any:
        """The style's settings with the per-image overrides that apply to it (what its engine runs)."""
        style = self.styles[style_name]
        applicable = {k: v for k, v in (overrides or {}).items() if k in type(style).model_fields}
        return style_with_overrides(style_name, style, applicable) if applicable else style

    def setup(self, style_names: Sequence[str]) -> None:
        """Load every named style now (at start), so the first item does not pay for it."""
        for name in style_names:
            self.engine(name)
        self._started = True


#: Characters of an engine's load error kept in a failure record and a capabilities record.
MAX_REASON_CHARS = 400


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, at most ``MAX_REASON_CHARS`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def freeze(value: Any) -> Any:
    """``value`` as a hashable key (dicts and lists as sorted tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


#: One input's outcome of ``render_many``: its variants and the seconds each style took, or its error.
RenderOutcome = tuple[list[VariantImage], dict[str, float]]


def render(
    image: Image.Image,
    style_names: Sequence[str],
    registry: EngineRegistry,
    overrides: Mapping[str, Any] | None = None,
    context: ItemContext | None = None,
) -> RenderOutcome:
    """Every variant of every style, and the seconds each style took. ``context`` carries the
    caption and per-image prompt to engines that build a prompt, and each style's variants to the
    animate styles that start from them (``image_from``: that still style runs first, and for the
    input even when it did not name it)."""
    outcome = render_many([image], style_names, registry, [overrides], [context])[0]
    if isinstance(outcome, ItemError):
        raise outcome
    return outcome


def render_many(
    images: Sequence[Image.Image],
    style_names: Sequence[str],
    registry: EngineRegistry,
    overrides: Sequence[Mapping[str, Any] | None],
    contexts: Sequence[ItemContext | None],
) -> list[RenderOutcome | ItemError]:
    """``render`` for several inputs that ask for the same styles, each with its own values
    (``overrides[j]``), in input order. Inputs whose engines share one pipeline (a style's engine
    and those ``derive``d from it for an input's seed or prompt) go to it in one ``render_many``
    call; when that call fails, each input runs alone, so a failure is only ever its own input's
    (an input that fails skips its later styles)."""
    count = len(images)
    found: list[ItemContext | None] = list(contexts)
    running = with_sources(style_names, registry.styles)
    if any(registry.styles[n].image_source() for n in running if n in registry.styles):
        found = [c if c is not None else ItemContext() for c in found]  # the chain's variants travel in it
    made: list[RenderOutcome] = [([], {}) for _ in images]
    failed: dict[int, ItemError] = {}
    for name in running:
        sharing: dict[int, list[tuple[int, Engine]]] = {}  # id of the pipeline's engine -> its inputs
        for j in range(count):
            if j in failed:
                continue
            try:
                engine = registry.engine(name, overrides[j])
                if found[j] is not None:
                    found[j].progress(f"style:{name}")  # type: ignore[union-attr]
            except ItemError as exc:  # its style cannot load, or its job was cancelled
                failed[j] = exc
                continue
            sharing.setdefault(id(getattr(engine, "base", engine)), []).append((j, engine))
        for members in sharing.values():
            inputs = [j for j, _ in members]
            outcomes = _run_style([engine for _, engine in members], name, [images[j] for j in inputs],
                                  [found[j] for j in inputs])
            for j, outcome in zip(inputs, outcomes, strict=True):
                if isinstance(outcome, ItemError):
                    failed[j] = outcome
                    continue
                variants, seconds = outcome
                licenses = style_licenses(registry.configured(name, overrides[j]))
                for v in variants:
                    v.licenses = list(licenses)
                if found[j] is not None:
                    found[j].made[name] = variants  # type: ignore[union-attr]
                made[j][0].extend(variants)
                made[j][1][f"style:{name}"] = seconds
    return [failed.get(j, made[j]) for j in range(count)]


def _run_style(engines: list[Engine], name: str, images: list[Image.Image],
               contexts: list[ItemContext | None]) -> list[tuple[list[VariantImage], float] | ItemError]:
    """One style on several inputs, ``engines[j]`` for input ``j`` (all calling one pipeline):
    each input's variants and the seconds its call took (a shared call's for inputs rendered
    together), or its error."""
    base = getattr(engines[0], "base", engines[0])
    together = getattr(base, "render_many", None)
    if together is not None and len(images) > 1:
        started = time.perf_counter()
        try:
            made = together(images, contexts, [engine.style for engine in engines])  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - whose input it was is found by running each alone
            log.warning("batch_failed", extra={"style": name, "inputs": len(images), "error": type(exc).__name__,
                                               "detail": str(exc)})
        else:
            seconds = round(time.perf_counter() - started, 4)
            return [(variants, seconds) for variants in made]
    outcomes: list[tuple[list[VariantImage], float] | ItemError] = []
    for engine, image, context in zip(engines, images, contexts, strict=True):
        started = time.perf_counter()
        try:
            outcomes.append((engine(image, context), round(time.perf_counter() - started, 4)))
        except ItemError as exc:
            outcomes.append(exc)
        except Exception as exc:  # an engine bug or model fault: fail this item, keep the worker
            log.exception("stage_failed", extra={"style": name})
            failure = StageFailed(f"style {name!r} ({engine.engine}) failed: {type(exc).__name__}: {exc}")
            failure.__cause__ = exc
            outcomes.append(failure)
    return outcomes
