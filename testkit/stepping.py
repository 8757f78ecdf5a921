"""Engines that take steps: a stand-in for a diffusion model's denoising loop, for tests that need a
job to stay running (to cancel it, to watch its progress) on the fast toon style.

``stepping_registry(settings)`` is the worker's own registry (``build_registry``) whose engines each
report ``steps`` progress steps, ``step_s`` apart, through the item's progress hook before they
render, exactly as the diffusion engines report theirs. ``steps`` can be changed while a worker
runs (``Stepping.steps``): a test slows the first job down and lets the next one through.
"""

from __future__ import annotations

import time
from typing import Any

from PIL import Image

from processor.cli.compose import build_registry
from processor.config import Settings
from processor.pipeline.base import ItemContext, VariantImage


class Stepping:
    """The steps every engine of one registry takes, and the furthest step any item reached."""

    def __init__(self, steps: int, step_s: float) -> None:
        self.steps = steps
        self.step_s = step_s
        #: The last step an item reported (0: none yet).
        self.reached = 0


class SteppingEngine:
    """``inner`` after ``stepping.steps`` reported steps (the progress hook may raise to stop it)."""

    def __init__(self, inner: Any, stepping: Stepping) -> None:
        self.inner = inner
        self.stepping = stepping
        self.style_name = inner.style_name
        self.engine = inner.engine

    def setup(self) -> None:
        self.inner.setup()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        steps = self.stepping.steps
        for step in range(1, steps + 1):
            if context is not None:
                context.progress(f"style:{self.style_name}", step=step, steps=steps)
            self.stepping.reached = step
            time.sleep(self.stepping.step_s)
        return self.inner(image, context)


def stepping_registry(settings: Settings, steps: int, step_s: float = 0.05) -> tuple[Any, Stepping]:
    """The worker's registry with stepping engines, and the ``Stepping`` that drives them."""
    registry = build_registry(settings)
    stepping = Stepping(steps, step_s)
    made = registry.factory
    registry.factory = lambda name, style: SteppingEngine(made(name, style), stepping)
    return registry, stepping
