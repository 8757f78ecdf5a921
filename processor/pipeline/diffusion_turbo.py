"""Turbo img2img styles (``styles.<name>.turbo: true``): SD-Turbo and SDXL-Turbo.

These models are adversarially distilled (ADD) to finish in 1-4 steps without classifier-free
guidance (``Img2ImgStyle`` refuses guidance other than 0 and more than ``MAX_TURBO_STEPS``
steps): one UNet evaluation per step and image. They were trained on trailing timesteps (the
first step starts from t = 999), so the style's scheduler is built with
``timestep_spacing: trailing`` whatever the model folder's scheduler config says; with
``leading`` spacing two steps would start from about t = 500 and one img2img step at strength 0.5
from t = 1, leaving the photo almost untouched.
"""

from __future__ import annotations

from typing import Any

from processor.pipeline.diffusion import Img2ImgEngine

#: diffusers' timestep spacing the turbo models were distilled on.
TURBO_TIMESTEP_SPACING = "trailing"


class TurboImg2ImgEngine(Img2ImgEngine):
    """Img2img in rounds on a turbo model (see the module docstring)."""

    def _scheduler_config(self, config: Any) -> Any:
        return {**config, "timestep_spacing": TURBO_TIMESTEP_SPACING}

    def _common(self, size: tuple[int, int]) -> dict[str, Any]:
        return super()._common(size) | {"turbo": True, "timestep_spacing": TURBO_TIMESTEP_SPACING}
