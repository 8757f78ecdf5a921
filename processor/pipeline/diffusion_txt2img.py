"""``engine: txt2img``: a fresh picture from the caption and the style's trigger words alone.

The photo gives the prompt (through its caption or per-image prompt) and the picture's aspect
ratio, nothing else: no pixel of it goes into the pipeline. The pipeline is the text-to-image one
of the style's model (``from_pipe``: the same UNet, VAE and text encoders other styles on that
model use). Variant ``i`` uses seed ``style.seed + i`` from a CPU generator (as img2img), all
variants in one batched call, halved on CUDA out-of-memory.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from processor.config import Txt2ImgStyle
from processor.errors import ConfigError
from processor.models.loader import ResolvedModel
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.diffusion import _DiffusionEngine
from processor.pipeline.diffusion_common import to_pil, working_size


class Txt2ImgEngine(_DiffusionEngine):
    """Text-to-image at the photo's aspect ratio, ``style.size`` (default native) on the long side."""

    engine = "txt2img"
    task = "text2img"
    style: Txt2ImgStyle

    def _load_pipeline(self) -> tuple[Any, ResolvedModel]:
        base, _ = self.models.base(self.style.model, self.style.revision)
        channels = base.unet.config.in_channels
        if channels != 4:  # the loader's own message speaks of background models
            raise ConfigError(
                f"styles.{self.style_name}.model {self.style.model!r} has a {channels}-channel UNet "
                f"({type(base).__name__}); engine txt2img needs a text-to-image checkpoint"
            )
        return super()._load_pipeline()

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        style = self.style
        size = working_size(image.width, image.height, self._long_side())
        built = self._prompt(context)
        prompt = built.prompt.text
        negative = built.negative.text or None
        seeds = [style.seed + i for i in range(style.variants)]
        # The UNet may be shared with a style that has a LoRA: this style runs with adapters off.
        self._activate_lora()
        self._prepare_vae(size)
        stage = f"style:{self.style_name}"

        def on_step(pipe: Any, step: int, _timestep: Any, kwargs: dict) -> dict:
            if context is not None:
                context.progress(stage, step=step + 1, steps=style.steps)
            return kwargs

        def call(start: int, stop: int) -> torch.Tensor:
            n = stop - start
            if context is not None:
                context.progress(stage, step=0, steps=style.steps)
            return self.pipe(
                prompt=[prompt] * n,
                negative_prompt=[negative] * n if negative else None,
                width=size[0],
                height=size[1],
                num_inference_steps=style.steps,
                guidance_scale=style.guidance,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[start:stop]],
                output_type="pt",
                callback_on_step_end=on_step if context is not None else None,
            ).images

        with torch.inference_mode():
            out, halvings = self._batched(style.variants, call)
        results = []
        for i, picture in enumerate(to_pil(out)):
            params = self._common(size) | built.parameters() | {
                "seed": seeds[i],
                "guidance": style.guidance,
                # Every scheduler step denoises (no strength): the variant's UNet evaluations
                # are steps x (2 with guidance > 1, else 1).
                "denoising_steps": style.steps,
                "denoising_steps_all_variants": style.steps * style.variants,
                "batch_size": self.batch_limit,
                "oom_halvings": halvings,
            }
            results.append(VariantImage(style=self.style_name, engine=self.engine, index=i, seed=seeds[i],
                                        image=picture, parameters=params))
        return results
