"""``engine: txt2img``: a fresh picture from the caption and the style's trigger words.

Without ``control`` the photo gives the prompt (through its caption or per-image prompt) and the
picture's aspect ratio, nothing else: no pixel of it goes into the pipeline. The pipeline is the
text-to-image one of the style's model (``from_pipe``: the same UNet, VAE and text encoders other
styles on that model use). Variant ``i`` uses seed ``style.seed + i`` from a CPU generator (as
img2img), all variants in one batched call, halved on CUDA out-of-memory.

With ``control`` (``processor.pipeline.diffusion_control``) the photo, resized to the picture's
working size, also gives the maps, so the fresh picture keeps the toy's outline: ControlNets run
``StableDiffusion[XL]ControlNetPipeline``, T2I-Adapters ``StableDiffusion[XL]AdapterPipeline``
(over the same shared modules). An adapter's features must line up with the UNet's blocks, so
with adapters both sides are multiples of the adapter's total downscale factor (64 px for the
published SD 1.x ones, 32 for SDXL's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from processor.config import Txt2ImgStyle
from processor.errors import ConfigError
from processor.models.loader import ControlKind, ModelLoader, ResolvedModel
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.diffusion import _DiffusionEngine
from processor.pipeline.diffusion_common import SIZE_MULTIPLE, to_pil, working_size
from processor.pipeline.diffusion_control import ControlledEngine


class Txt2ImgEngine(ControlledEngine, _DiffusionEngine):
    """Text-to-image at the photo's aspect ratio, ``style.size`` (default native) on the long side."""

    engine = "txt2img"
    task = "text2img"
    style: Txt2ImgStyle

    def __init__(self, style_name: str, style: Txt2ImgStyle, models: ModelLoader) -> None:
        super().__init__(style_name, style, models)
        self._init_control()
        #: Pixels: both working sides are multiples of this (an adapter's downscale factor, else the VAE's).
        self.size_multiple = SIZE_MULTIPLE

    def _load_pipeline(self) -> tuple[Any, ResolvedModel]:
        base, _ = self.models.base(self.style.model, self.style.revision)
        channels = base.unet.config.in_channels
        if channels != 4:  # the loader's own message speaks of background models
            raise ConfigError(
                f"styles.{self.style_name}.model {self.style.model!r} has a {channels}-channel UNet "
                f"({type(base).__name__}); engine txt2img needs a text-to-image checkpoint"
            )
        if not self.style.control:
            return super()._load_pipeline()
        kind = self._style_control_kind()
        if kind is ControlKind.CONTROLNET:
            nets = self._load_control(kind)
            return self.models.pipeline(self.task, self.style.model, self.style.revision, controlnets=nets)
        self._check_adapter_guidance(xl=getattr(base, "text_encoder_2", None) is not None)
        adapters = self._load_control(kind)
        self.size_multiple = max(SIZE_MULTIPLE, *(int(a.total_downscale_factor) for a in adapters))
        return self.models.pipeline(self.task, self.style.model, self.style.revision, adapters=adapters)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"control": self._describe_control()}

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        style = self.style
        size = working_size(image.width, image.height, self._long_side(), multiple=self.size_multiple)
        controls = self._controls(image.convert("RGB").resize(size, Image.Resampling.LANCZOS)) if style.control else []
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

        def on_step_legacy(step: int, _timestep: Any, _latents: Any) -> None:
            if context is not None:
                context.progress(stage, step=step + 1, steps=style.steps)

        # diffusers' adapter pipelines only take the older per-step ``callback``.
        adapter = self.control_kind is ControlKind.T2I_ADAPTER
        progress: dict[str, Any] = {}
        if context is not None:
            progress = {"callback": on_step_legacy} if adapter else {"callback_on_step_end": on_step}

        def call(start: int, stop: int) -> torch.Tensor:
            n = stop - start
            if context is not None:
                context.progress(stage, step=0, steps=style.steps)
            images = self.pipe(
                prompt=[prompt] * n,
                negative_prompt=[negative] * n if negative else None,
                width=size[0],
                height=size[1],
                num_inference_steps=style.steps,
                guidance_scale=style.guidance,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[start:stop]],
                output_type="pt",
                **progress,
                **self._control_kwargs(controls, image_key="image", batch=n),
            ).images
            if isinstance(images, np.ndarray):  # SD 1.x's adapter pipeline answers "pt" with NHWC numpy in [0, 1]
                images = torch.from_numpy(images).permute(0, 3, 1, 2)
            return images

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
                                        image=picture, parameters=params, control=list(controls)))
        return results
