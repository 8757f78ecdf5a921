"""``engine: txt2img``: a fresh picture from the caption and the style's trigger words.

Without ``control`` the photo gives the prompt (through its caption or per-image prompt) and the
picture's aspect ratio, nothing else: no pixel of it goes into the pipeline. The pipeline is the
text-to-image one of the style's model family (``from_pipe``: the same UNet, VAE and text encoders
other styles on that model use). Variant ``i`` uses seed ``style.seed + i`` from a CPU generator
(as img2img), all variants in one batched call, halved on CUDA out-of-memory.

With ``control`` (``processor.pipeline.control``) the photo, resized to the picture's working size,
also gives the maps, so the fresh picture keeps the toy's outline: ControlNets run the family's
ControlNet pipeline, T2I-Adapters its adapter pipeline (over the same shared modules). An adapter's
features must line up with the UNet's blocks, so with adapters both sides are multiples of the
adapter's total downscale factor (64 px for the published SD 1.x ones, 32 for SDXL's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from processor.config import Txt2ImgStyle
from processor.errors import ConfigError
from processor.models.families import FAMILIES, Task
from processor.models.loader import ControlKind, ModelLoader
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.control import StyleControl
from processor.pipeline.diffusion import (
    Batches,
    LoadedModel,
    StyleLoras,
    describe,
    model_record,
    prepare_vae,
    refuse_unsupported,
    warm_up,
)
from processor.pipeline.prompt import encoder_counter, style_prompt
from processor.pipeline.provenance import Txt2ImgRecord
from processor.pipeline.sampling import generators, make_scheduler, native_size, to_pil, working_size


class Txt2ImgEngine:
    """Text-to-image at the photo's aspect ratio, ``style.size`` (default native) on the long side."""

    engine = "txt2img"

    def __init__(self, style_name: str, style: Txt2ImgStyle, models: ModelLoader) -> None:
        self.style_name = style_name
        self.style = style
        self.models = models
        self.loaded: LoadedModel | None = None
        self.pipe: Any = None
        self.control = StyleControl(style_name, style.control, models)
        # No LoRA key on txt2img styles: this only switches a shared UNet's adapters off.
        self.loras = StyleLoras(style_name, models, style.ref)
        self.batches = Batches(style_name, style.variants)
        #: Pixels: both working sides are multiples of this (an adapter's downscale factor, else the family's).
        self.size_multiple = 0
        self.compile_warmup_s: float | None = None
        #: Whether the last call's VAE decode was tiled (``models.performance.vae_tiling``).
        self.vae_tiled = False

    @property
    def switches(self) -> dict[str, Any]:
        return self.loaded.switches if self.loaded else {}

    def setup(self) -> None:
        style = self.style
        found = self.models.family(style.model, style.revision)
        row = refuse_unsupported(self.style_name, style, found)
        if Task.TXT2IMG not in row.pipelines:  # the loader's own message speaks of background models
            channels = f"a {row.unet_channels}-channel UNet" if row.unet_channels else f"no UNet ({row.label})"
            runs = " or ".join(dict.fromkeys(f.label for f in FAMILIES if Task.TXT2IMG in f.pipelines and not f.turbo))
            raise ConfigError(f"styles.{self.style_name}.model {style.model!r} has {channels} ({found.class_name}); "
                              f"engine txt2img needs a text-to-image checkpoint ({runs})")
        self.size_multiple = row.size_multiple
        controlnets = adapters = None
        if self.control:
            kind = self.control.entry_kind()
            xl = row.series == "sdxl"
            if kind is ControlKind.CONTROLNET:
                controlnets = self.control.load(kind)
            else:
                self.control.check_adapter_guidance(xl=xl)
                adapters = self.control.load(kind, xl=xl)
                self.size_multiple = max(row.size_multiple, *(int(a.total_downscale_factor) for a in adapters))
        pipe, resolved = self.models.pipeline(Task.TXT2IMG, style.model, style.revision, controlnets=controlnets,
                                              adapters=adapters)
        pipe.scheduler = make_scheduler(style.scheduler, pipe.scheduler.config)
        self.pipe = pipe
        self.loaded = LoadedModel(pipe, resolved, row, found.class_name,
                                  self.models.switches(style.model, style.revision))
        self.compile_warmup_s = warm_up(self, self.loaded, native_size(pipe, row), self.style_name)

    def describe(self) -> dict[str, Any]:
        return describe(self.engine, self.style_name, self.style, self.models, self.loaded, self.pipe,
                         self.style.scheduler) | {"control": self.control.describe()}

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        assert self.loaded is not None, "setup() first"
        style, row = self.style, self.loaded.family
        native = native_size(self.pipe, row)
        size = working_size(image.width, image.height, style.size or native, multiple=self.size_multiple)
        controls = self.control.uses(image.convert("RGB").resize(size, Image.Resampling.LANCZOS)) if self.control \
            else []
        count, limit = encoder_counter(self.pipe, row.prompt_encoder)
        built = style_prompt(trigger=style.trigger, negative=style.negative, style_subject=style.prompt,
                             context=context, count_tokens=count, max_tokens=limit, fields={"style": self.style_name})
        negative = built.negative.text or None
        seeds = [style.seed + i for i in range(style.variants)]
        # The UNet may be shared with a style that has a LoRA: this style runs with adapters off.
        self.loras.activate(self.pipe)
        vae_tiled = self.vae_tiled = prepare_vae(self.loaded, self.pipe, size, native)
        stage = f"style:{self.style_name}"

        def on_step(pipe: Any, step: int, _timestep: Any, kwargs: dict) -> dict:
            if context is not None:
                context.progress(stage, step=step + 1, steps=style.steps)
            return kwargs

        def on_step_legacy(step: int, _timestep: Any, _latents: Any) -> None:
            if context is not None:
                context.progress(stage, step=step + 1, steps=style.steps)

        # diffusers' adapter pipelines only take the older per-step ``callback``.
        progress: dict[str, Any] = {}
        if context is not None:
            adapter = self.control.kind is ControlKind.T2I_ADAPTER
            progress = {"callback": on_step_legacy} if adapter else {"callback_on_step_end": on_step}

        def call(start: int, stop: int) -> torch.Tensor:
            n = stop - start
            if context is not None:
                context.progress(stage, step=0, steps=style.steps)
            images = self.pipe(
                prompt=[built.prompt.text] * n, negative_prompt=[negative] * n if negative else None,
                width=size[0], height=size[1], num_inference_steps=style.steps, guidance_scale=style.guidance,
                generator=generators(seeds[start:stop]), output_type="pt",
                **progress, **self.control.pipe_kwargs(controls, image_key="image", batch=n),
            ).images
            if isinstance(images, np.ndarray):  # SD 1.x's adapter pipeline answers "pt" with NHWC numpy in [0, 1]
                images = torch.from_numpy(images).permute(0, 3, 1, 2)
            return images

        with torch.inference_mode():
            out, halvings = self.batches.run(style.variants, call)
        record_model = model_record(self.engine, self.style_name, style, self.loaded, self.pipe,
                                    scheduler=style.scheduler, steps=style.steps, size=size,
                                    dtype=self.models.dtype(row), vae_tiled=vae_tiled)
        used = row.guidance.uses_negative(style.guidance)
        results = []
        for i, picture in enumerate(to_pil(out)):
            record = Txt2ImgRecord(
                model=record_model, prompt=built, seed=seeds[i], guidance=style.guidance,
                denoising_steps=style.steps, denoising_steps_all_variants=style.steps * style.variants,
                batch_size=self.batches.limit, oom_halvings=halvings,
                negative_used=False if negative and not used else None)
            results.append(VariantImage(style=self.style_name, engine=self.engine, index=i, seed=seeds[i],
                                        image=picture, parameters=record.parameters(), control=list(controls)))
        return results
