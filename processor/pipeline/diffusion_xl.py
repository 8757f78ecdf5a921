"""SDXL img2img with a refiner as the last round (``styles.<name>.refiner``).

The style's rounds run on the SDXL base exactly as ``Img2ImgEngine`` runs them; then every variant
goes through the refiner's img2img pipeline once (``refiner.strength``, ``refiner.steps``,
``refiner.guidance``). The refiner is loaded by ``ModelLoader.refiner`` with the base's VAE and
second text encoder passed in (diffusers' base + refiner pattern), so it adds only its UNet to
memory. The refiner round is round ``k = len(style.rounds)`` of the chain: variant ``i`` draws its
noise from ``round_seed(seed + i, k)``, and the manifest's ``rounds[]`` ends with it
(``refiner: true``, its model and resolved revision).
"""

from __future__ import annotations

from typing import Any

import torch

from processor.config import Img2ImgStyle
from processor.models.loader import ModelLoader, ResolvedModel
from processor.pipeline.base import ItemContext
from processor.pipeline.diffusion import Img2ImgEngine
from processor.pipeline.diffusion_common import make_scheduler, round_seed


class RefinedImg2ImgEngine(Img2ImgEngine):
    """An img2img style whose last round is an SDXL refiner (see the module docstring)."""

    def __init__(self, style_name: str, style: Img2ImgStyle, models: ModelLoader) -> None:
        if style.refiner is None:
            raise ValueError(f"style {style_name!r} has no refiner; use Img2ImgEngine")
        super().__init__(style_name, style, models)
        self.refiner = style.refiner
        self.refiner_pipe: Any = None
        self.refiner_resolved: ResolvedModel | None = None

    def _load_pipeline(self) -> tuple[Any, ResolvedModel]:
        # Before the base's setup finishes: its compile warm-up already runs the refiner round.
        pipe, resolved = super()._load_pipeline()
        refiner, self.refiner_resolved = self.models.refiner(self.refiner.model, self.refiner.revision,
                                                             self.style.model, self.style.revision)
        refiner.scheduler = make_scheduler(self.style.scheduler, refiner.scheduler.config)
        self.refiner_pipe = refiner
        return pipe, resolved

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"refiner": self.refiner.model}

    def _final_rounds(self, current: torch.Tensor, prompt: str, negative: str | None, seeds: list[int],
                      context: ItemContext | None) -> tuple[torch.Tensor, int, list[dict[str, Any]]]:
        refiner = self.refiner
        k = len(self.style.rounds)
        steps = int(refiner.steps * refiner.strength)

        def call(start: int, stop: int) -> torch.Tensor:
            n = stop - start
            if context is not None:
                context.progress(f"style:{self.style_name}", round=k + 1, rounds=k + 1, step=0, steps=steps)
            return self.refiner_pipe(
                prompt=[prompt] * n,
                negative_prompt=[negative] * n if negative else None,
                image=current[start:stop],
                strength=refiner.strength,
                guidance_scale=refiner.guidance,
                num_inference_steps=refiner.steps,
                generator=[torch.Generator("cpu").manual_seed(round_seed(s, k)) for s in seeds[start:stop]],
                output_type="pt",
            ).images

        with torch.inference_mode():
            out, halvings = self._batched(len(seeds), call)
        revision = refiner.revision or (self.refiner_resolved.revision if self.refiner_resolved else None)
        record = {"strength": refiner.strength, "guidance": refiner.guidance, "denoising_steps": steps,
                  "shared": False, "refiner": True, "model": refiner.model, "revision": revision,
                  "pipeline": type(self.refiner_pipe).__name__, "steps": refiner.steps}
        return out, halvings, [record]
