"""``engine: edit``: instruction-following editors beside instruct-pix2pix: FLUX.1 Kontext
(``FluxKontextPipeline``, the FLUX transformer reading the photo's latents as extra tokens) here,
Qwen-Image-Edit in ``processor.pipeline.diffusion_qwen_edit``; picked from the model's
``model_index.json`` (``EDITORS``, ``editor_of``); any other pipeline is refused at start with the
engine to use instead.

Every variant is one batched call (per-variant CPU generators seeded ``seed + i``, as the other
engines). The working size keeps the photo's aspect ratio with sides of multiples of 16, and is
passed to Kontext as is: its own snapping to preferred resolutions (``_auto_resize``) would change
the aspect ratio and the size the manifest records.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from PIL import Image

from processor.config import EditStyle
from processor.errors import ConfigError
from processor.models.loader import ResolvedModel
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.diffusion import _DiffusionEngine
from processor.pipeline.diffusion_common import to_pil, to_tensor
from processor.pipeline.diffusion_flow import _flow_size
from processor.pipeline.prompt import fit_text, tokenizer_counter

#: ``model_index.json`` ``_class_name`` of the editors ``engine: edit`` runs -> their pipeline class.
EDITORS = {"FluxKontextPipeline": "FluxKontextPipeline", "QwenImageEditPipeline": "QwenImageEditPipeline",
           "QwenImageEditPlusPipeline": "QwenImageEditPlusPipeline"}
#: Pixels: Kontext's training long side (its default area is 1024 x 1024).
KONTEXT_NATIVE = 1024
#: Kontext's distilled guidance when the style sets none (the model card's).
KONTEXT_GUIDANCE = 2.5


def editor_of(models: Any, model: str, revision: str | None) -> str:
    """The pipeline class ``model`` declares in its ``model_index.json`` (which editor runs it)."""
    resolved = models.resolve(model, revision)
    index = json.loads((resolved.path / "model_index.json").read_text(encoding="utf-8"))
    return str(index.get("_class_name", ""))


class KontextEngine(_DiffusionEngine):
    """A FLUX.1 Kontext edit of the photo, all variants in one batched call."""

    engine = "edit"
    task = "edit"
    style: EditStyle

    def _load_pipeline(self) -> tuple[Any, ResolvedModel]:
        import diffusers

        resolved = self.models.resolve(self.style.model, self.style.revision)
        index = json.loads((resolved.path / "model_index.json").read_text(encoding="utf-8"))
        name = index.get("_class_name", "")
        if name not in EDITORS:
            raise ConfigError(
                f"styles.{self.style_name}.model: {self.style.model!r} is a {name or 'unknown pipeline'}; engine edit "
                f"runs {', '.join(EDITORS)} models (for an instruct-pix2pix model use engine: instruct-pix2pix)")
        base, resolved = self.models.base(self.style.model, self.style.revision)
        pipe = getattr(diffusers, EDITORS[name]).from_pipe(base)
        pipe.set_progress_bar_config(disable=True)
        return pipe, resolved

    def setup(self) -> None:
        self.pipe, self.resolved = self._load_pipeline()
        if self.style.lora is not None:  # onto the shared transformer, switched per call (_activate_lora)
            self.adapter = self.models.lora_adapter(self.pipe, self.style.model, self.style.revision, self.style.lora)
            self.lora_hashes = dict([self.models.lora_hash(self.style.lora)])
        self.switches = self.models.switches(self.style.model, self.style.revision)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"scheduler": self._scheduler_name()}

    def _scheduler_name(self) -> str | None:
        return type(self.pipe.scheduler).__name__ if self.pipe is not None else None

    def _long_side(self) -> int:
        return self.style.size or KONTEXT_NATIVE

    def _prepare_vae(self, size: tuple[int, int]) -> None:
        from processor.models import accel

        self._vae_tiled = accel.set_vae_tiling(self.pipe, self.switches, max(size), KONTEXT_NATIVE)

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        style = self.style
        size = _flow_size(image.width, image.height, self._long_side())
        resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        source = to_tensor(resized).expand(style.variants, -1, -1, -1)
        seeds = [style.seed + i for i in range(style.variants)]
        guidance = style.guidance if style.guidance is not None else KONTEXT_GUIDANCE
        tokenizer = self.pipe.tokenizer
        instruction = fit_text(style.instruction, count_tokens=tokenizer_counter(tokenizer),
                               max_tokens=tokenizer.model_max_length, what="instruction",
                               fields={"style": self.style_name}).text
        self._activate_lora()
        self._prepare_vae(size)

        def call(start: int, stop: int) -> torch.Tensor:
            n = stop - start
            return self.pipe(
                prompt=[instruction] * n,
                image=source[start:stop],
                num_inference_steps=style.steps,
                guidance_scale=guidance,
                width=size[0],
                height=size[1],
                max_area=size[0] * size[1],
                _auto_resize=False,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[start:stop]],
                output_type="pt",
            ).images

        with torch.inference_mode():
            out, halvings = self._batched(style.variants, call)
        results = []
        for i, picture in enumerate(to_pil(out)):
            params = self._common(size) | {
                "editor": "flux-kontext",
                "scheduler": self._scheduler_name(),
                "prompt": instruction,
                "instruction": instruction,
                "seed": seeds[i],
                "guidance": guidance,
                "denoising_steps": style.steps,
                "batch_size": self.batch_limit,
                "oom_halvings": halvings,
            } | self._lora_parameters()
            if style.negative is not None:  # Kontext takes no negative prompt (Qwen-Image-Edit does)
                params["negative_used"] = False
            results.append(VariantImage(style=self.style_name, engine=self.engine, index=i, seed=seeds[i],
                                        image=picture, parameters=params))
        return results
