"""Rectified-flow transformer families for ``engine: img2img``: FLUX.1 (schnell, dev) and
Stable Diffusion 3 / 3.5, picked from the model's ``model_index.json`` ``_class_name``.

They run the img2img engine's rounds, seeds, batching and records (``Img2ImgEngine``) over
``FluxImg2ImgPipeline`` / ``StableDiffusion3Img2ImgPipeline`` derived from the shared base with
``from_pipe``. What differs from a UNet style:

- The model's own flow-matching scheduler always runs (``style.scheduler`` names DDPM-family
  samplers, which these models were not trained for); the manifest records its class.
- Working sides are multiples of 16 (the VAE's 8x times the transformer's 2x2 latent patches).
- FLUX.1 takes no negative prompt here (true CFG would double the cost); its ``guidance`` is the
  distilled guidance embedding (dev). schnell has none: a round asking for guidance is refused.
- ``lora:`` works as on a UNet style (the same keys): diffusers' ``load_lora_weights`` puts it on
  the shared transformer (and text encoders where it has weights for them), switched on with its
  scale for this style's calls and off for the others'. ControlNets and LCM-LoRAs of this project
  are UNet add-ons: such a style is refused at start, naming the key to drop.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from PIL import Image

from processor.config import Img2ImgStyle
from processor.errors import ConfigError
from processor.models.loader import ModelLoader, ResolvedModel
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.diffusion import Img2ImgEngine

#: T5 tokens of the prompt FLUX.1 schnell / dev read (schnell was distilled with 256).
FLUX_SCHNELL_T5_TOKENS = 256
FLUX_DEV_T5_TOKENS = 512
#: Pixels: working sides are multiples of this (VAE factor 8 x the 2x2 latent patches).
FLOW_SIZE_MULTIPLE = 16


class FlowFamily(str, Enum):
    FLUX = "flux"
    SD3 = "sd3"


#: ``model_index.json`` ``_class_name`` -> family (any pipeline class of the family names it).
FAMILY_BY_CLASS = {
    "FluxPipeline": FlowFamily.FLUX,
    "FluxImg2ImgPipeline": FlowFamily.FLUX,
    "StableDiffusion3Pipeline": FlowFamily.SD3,
    "StableDiffusion3Img2ImgPipeline": FlowFamily.SD3,
}


def flow_family(models: ModelLoader, model: str, revision: str | None) -> FlowFamily | None:
    """The flow family of ``model`` from its ``model_index.json``, or None (a UNet model)."""
    resolved = models.resolve(model, revision)
    index = json.loads((resolved.path / "model_index.json").read_text(encoding="utf-8"))
    return FAMILY_BY_CLASS.get(index.get("_class_name", ""))


def _flow_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = long_side / max(width, height)

    def snap(side: float) -> int:
        return max(FLOW_SIZE_MULTIPLE, round(side / FLOW_SIZE_MULTIPLE) * FLOW_SIZE_MULTIPLE)

    return snap(width * scale), snap(height * scale)


class FlowImg2ImgEngine(Img2ImgEngine):
    """img2img in rounds on FLUX.1 or SD 3 (see the module docstring)."""

    style: Img2ImgStyle

    def __init__(self, style_name: str, style: Img2ImgStyle, models: ModelLoader, family: FlowFamily) -> None:
        super().__init__(style_name, style, models)
        self.family = family

    def _refuse_unet_addons(self) -> None:
        for key in ("control", "lcm", "ip_adapter"):
            if getattr(self.style, key):
                raise ConfigError(
                    f"styles.{self.style_name}.{key}: model {self.style.model!r} is {self.family.value.upper()} (a "
                    f"flow transformer); {key} works with SD 1.x / 2.x / SDXL UNets only; "
                    f"drop {key} or pick a UNet model")

    def _load_pipeline(self) -> tuple[Any, ResolvedModel]:
        from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

        base, resolved = self.models.base(self.style.model, self.style.revision)
        cls = FluxImg2ImgPipeline if self.family is FlowFamily.FLUX else StableDiffusion3Img2ImgPipeline
        pipe = cls.from_pipe(base)
        pipe.set_progress_bar_config(disable=True)
        return pipe, resolved

    def setup(self) -> None:
        self._refuse_unet_addons()
        self.pipe, self.resolved = self._load_pipeline()
        if self.style.lora is not None:
            self.adapter = self.models.lora_adapter(self.pipe, self.style.model, self.style.revision, self.style.lora)
            self.lora_hashes = dict([self.models.lora_hash(self.style.lora)])
        if self.family is FlowFamily.FLUX and not self._guidance_embedded():
            for i, r in enumerate(self.style.rounds):
                if r.guidance:
                    raise ConfigError(
                        f"styles.{self.style_name}.rounds[{i}].guidance: {r.guidance}, but {self.style.model!r} is "
                        f"guidance-distilled (FLUX.1 schnell: no guidance input); set guidance: 0")
        self.switches = self.models.switches(self.style.model, self.style.revision)

    def _guidance_embedded(self) -> bool:
        return bool(getattr(self.pipe.transformer.config, "guidance_embeds", False))

    def _native(self) -> int:
        """Pixels: the long side the model was trained at (1024 for FLUX.1 and SD 3)."""
        factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        sample = getattr(self.pipe.transformer.config, "sample_size", None)
        if self.family is FlowFamily.SD3 and sample:
            return int(sample) * factor
        return int(getattr(self.pipe, "default_sample_size", 128)) * factor

    def _long_side(self) -> int:
        return self.style.size or self._native()

    def _prepare_vae(self, size: tuple[int, int]) -> None:
        from processor.models import accel

        self._vae_tiled = accel.set_vae_tiling(self.pipe, self.switches, max(size), self._native())

    def _max_sequence_length(self) -> int | None:
        """T5 tokens: schnell was trained with 256 (diffusers' FLUX docs), dev with 512."""
        if self.family is FlowFamily.FLUX:
            return FLUX_DEV_T5_TOKENS if self._guidance_embedded() else FLUX_SCHNELL_T5_TOKENS
        return None

    def _pipe_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        # Without them both pipelines resize the input to their default 1024 x 1024.
        kwargs: dict[str, Any] = {"width": size[0], "height": size[1]}
        if self._max_sequence_length() is not None:
            kwargs["max_sequence_length"] = self._max_sequence_length()
        return kwargs

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"family": self.family.value, "scheduler": self._scheduler_name()}

    def _scheduler_name(self) -> str | None:
        return type(self.pipe.scheduler).__name__ if self.pipe is not None else None

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        # Resized here to multiples of 16; the img2img engine's own sizing keeps that size as is.
        size = _flow_size(image.width, image.height, self._long_side())
        variants = super().__call__(image.convert("RGB").resize(size, Image.Resampling.LANCZOS), context)
        for variant in variants:
            params = variant.parameters
            params["family"] = self.family.value
            params["scheduler"] = self._scheduler_name()
            if self.family is FlowFamily.FLUX:
                params["guidance_embedded"] = self._guidance_embedded()
                params["max_sequence_length"] = self._max_sequence_length()
                if params.get("negative"):
                    params["negative_used"] = False
        return variants
