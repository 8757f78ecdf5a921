"""``engine: edit`` on Qwen-Image-Edit (``QwenImageEditPipeline``; ``QwenImageEditPlusPipeline`` for
the 2509 and later releases), picked from the model's ``model_index.json`` like FLUX.1 Kontext.

The keys are Kontext's: ``instruction`` is the edit, read with the photo by the model's Qwen2.5-VL
encoder; ``guidance`` is Qwen's ``true_cfg_scale``. Qwen-Image-Edit is not guidance-distilled: it
runs real classifier-free guidance, one transformer call with the instruction and one with the
``negative`` prompt per step, so the negative is always passed (default ``" "``, the model card's,
as the pipeline skips CFG without one) and ``guidance`` <= 1 turns CFG off, halving the calls. Each
variant records ``true_cfg`` and ``transformer_evals``.

The output has the working size (the photo's aspect, long side ``size``, default 1024, sides
multiples of 16); the pipeline itself conditions on a copy of the photo of about 1024 x 1024 px
(the Plus editors also on a 384 x 384 copy for the VL encoder), which variants record as
``condition_size``. Every variant is one batched call: one photo, ``num_images_per_prompt`` and
per-variant CPU generators seeded ``seed + i``.
"""

from __future__ import annotations

import torch
from PIL import Image

from processor.errors import ConfigError
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.diffusion_common import to_pil
from processor.pipeline.diffusion_edit import KontextEngine
from processor.pipeline.diffusion_flow import _flow_size
from processor.pipeline.prompt import fit_text, tokenizer_counter

#: ``model_index.json`` ``_class_name`` of the Qwen editors -> the ``editor`` variants record.
QWEN_EDITORS = {"QwenImageEditPipeline": "qwen-image-edit", "QwenImageEditPlusPipeline": "qwen-image-edit-plus"}
#: ``true_cfg_scale`` when the style sets no ``guidance`` (the model card's).
QWEN_TRUE_CFG = 4.0
#: The negative prompt when the style sets none: the model card's blank one, so that true CFG runs.
QWEN_NEGATIVE = " "
#: Square pixels: the area of the photo copy the pipeline's VAE conditions on (its ``calculate_dimensions``).
QWEN_CONDITION_AREA = 1024 * 1024


def condition_size(width: int, height: int) -> tuple[int, int]:
    """The size the pipeline resizes the photo to for its VAE: about 1 Mpx, aspect kept, sides of 32."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    w, h, _ = calculate_dimensions(QWEN_CONDITION_AREA, width / height)
    return int(w), int(h)


class QwenEditEngine(KontextEngine):
    """A Qwen-Image-Edit edit of the photo with true CFG, all variants in one batched call."""

    def setup(self) -> None:
        import torch

        # Qwen-Image is trained in bfloat16 and its transformer's activations overflow float16
        # (NaN latents: black pictures), the auto dtype on CUDA; refuse before loading 58 GB.
        if self.models.dtype() == torch.float16:
            raise ConfigError(
                f"styles.{self.style_name}.model: Qwen-Image-Edit overflows in float16 (NaN latents, black "
                "pictures); set models.dtype: bfloat16 (or float32)")
        super().setup()

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        style = self.style
        size = _flow_size(image.width, image.height, self._long_side())
        photo = image.convert("RGB")
        seeds = [style.seed + i for i in range(style.variants)]
        scale = style.guidance if style.guidance is not None else QWEN_TRUE_CFG
        cfg = scale > 1
        count = tokenizer_counter(self.pipe.tokenizer)
        limit = self.pipe.tokenizer_max_length
        fields = {"style": self.style_name}
        instruction = fit_text(style.instruction, count_tokens=count, max_tokens=limit, what="instruction",
                               fields=fields).text
        negative = None
        if cfg:  # the blank default as is: fitting would strip it to "", not the card's prompt
            negative = QWEN_NEGATIVE if style.negative is None else fit_text(
                style.negative, count_tokens=count, max_tokens=limit, what="negative", fields=fields).text
        self._activate_lora()
        self._prepare_vae(size)

        def call(start: int, stop: int) -> torch.Tensor:
            return self.pipe(
                image=photo,
                prompt=instruction,
                negative_prompt=negative,
                true_cfg_scale=scale,
                num_inference_steps=style.steps,
                width=size[0],
                height=size[1],
                num_images_per_prompt=stop - start,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[start:stop]],
                output_type="pt",
            ).images

        with torch.inference_mode():
            out, halvings = self._batched(style.variants, call)
        editor = QWEN_EDITORS.get(type(self.pipe).__name__, type(self.pipe).__name__)
        condition = condition_size(photo.width, photo.height)
        results = []
        for i, picture in enumerate(to_pil(out)):
            params = self._common(size) | {
                "editor": editor,
                "scheduler": self._scheduler_name(),
                "prompt": instruction,
                "instruction": instruction,
                "negative": negative,
                "seed": seeds[i],
                "guidance": scale,
                "true_cfg_scale": scale,
                "true_cfg": cfg,
                "denoising_steps": style.steps,
                "transformer_evals": style.steps * (2 if cfg else 1),
                "condition_size": f"{condition[0]}x{condition[1]}",
                "batch_size": self.batch_limit,
                "oom_halvings": halvings,
            } | self._lora_parameters()
            results.append(VariantImage(style=self.style_name, engine=self.engine, index=i, seed=seeds[i],
                                        image=picture, parameters=params))
        return results
