"""Run the configured styles on one decoded image.

``EngineRegistry`` builds each style's engine once (through a factory the composition root
provides) and caches per-image variants of it (a sidecar's ``variants``/``seed``), so weights load
once per worker. Unexpected exceptions from an engine become ``StageFailed`` naming the style.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image
from pydantic import ValidationError

from processor.errors import InvalidSidecar, ItemError, StageFailed
from processor.pipeline.base import Engine, ItemContext, VariantImage

log = logging.getLogger("processor.render")

EngineFactory = Callable[[str, Any], Engine]

#: Engines kept for per-image overrides (each shares its style's weights; this bounds the rest).
MAX_OVERRIDE_ENGINES = 32


class EngineRegistry:
    def __init__(self, styles: Mapping[str, Any], factory: EngineFactory) -> None:
        self.styles = dict(styles)
        self.factory = factory
        self._engines: OrderedDict[tuple[str, tuple[tuple[str, Any], ...]], Engine] = OrderedDict()

    def engine(self, style_name: str, overrides: Mapping[str, Any] | None = None) -> Engine:
        if style_name not in self.styles:
            known = ", ".join(sorted(self.styles))
            raise InvalidSidecar(f"unknown style {style_name!r}; configured styles: {known}")
        style = self.styles[style_name]
        # Only fields the style has: a toon style ignores a sidecar prompt.
        applicable = {k: v for k, v in (overrides or {}).items() if k in type(style).model_fields}
        cache_key = (style_name, tuple(sorted((k, _hashable(v)) for k, v in applicable.items())))
        if cache_key in self._engines:
            self._engines.move_to_end(cache_key)
            return self._engines[cache_key]
        configured = self._with_overrides(style_name, style, applicable) if applicable else style
        engine = self.factory(style_name, configured)
        engine.setup()
        self._engines[cache_key] = engine
        # Evict the oldest per-image engine, never a style's own (those carry no overrides).
        overridden = [k for k in self._engines if k[1]]
        if len(overridden) > MAX_OVERRIDE_ENGINES:
            del self._engines[overridden[0]]
        return engine

    @staticmethod
    def _with_overrides(style_name: str, style: Any, overrides: Mapping[str, Any]) -> Any:
        """The style with a sidecar's values, validated by the style's own rules."""
        current = style.model_dump()
        # A nested override (a sidecar's ``background: {prompt}``) replaces only the keys it names.
        merged = {k: current[k] | v if isinstance(v, dict) and isinstance(current.get(k), dict) else v
                  for k, v in overrides.items()}
        try:
            return type(style).model_validate(current | merged)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidSidecar(f"sidecar values do not fit style {style_name!r}: {problems}") from None

    def setup(self, style_names: Sequence[str]) -> None:
        """Load every named style now (at start), so the first item does not pay for it."""
        for name in style_names:
            self.engine(name)


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def render(
    image: Image.Image,
    style_names: Sequence[str],
    registry: EngineRegistry,
    overrides: Mapping[str, Any] | None = None,
    context: ItemContext | None = None,
) -> tuple[list[VariantImage], dict[str, float]]:
    """Every variant of every style, and the seconds each style took. ``context`` carries the
    caption and per-image prompt to engines that build a prompt."""
    variants: list[VariantImage] = []
    timings: dict[str, float] = {}
    for name in style_names:
        engine = registry.engine(name, overrides)
        if context is not None:
            context.progress(f"style:{name}")
        started = time.perf_counter()
        try:
            variants.extend(engine(image, context))
        except ItemError:
            raise
        except Exception as exc:  # an engine bug or model fault: fail this item, keep the worker
            log.exception("stage_failed", extra={"style": name})
            raise StageFailed(f"style {name!r} ({engine.engine}) failed: {type(exc).__name__}: {exc}") from exc
        timings[f"style:{name}"] = round(time.perf_counter() - started, 4)
    return variants, timings
