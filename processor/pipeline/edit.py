"""The instruction editors: ``engine: instruct-pix2pix`` (an 8-channel SD UNet) and ``engine: edit``
(FLUX.1 Kontext, Qwen-Image-Edit and its 2509+ "Plus" release), picked from the model's family
(``processor.models.families``); a model of another family is refused at start with the engine to
use instead.

One engine, top to bottom: the working size (the photo's aspect ratio, long side ``size``, sides of
the family's multiple), the instruction fitted to the editor's text encoder, then every variant in
ONE batched call with per-variant CPU generators seeded ``seed + i``. What differs per editor is
written out in ``_call_kwargs`` and the record:

- instruct-pix2pix: the style's scheduler; ``guidance`` is text CFG and ``image_guidance`` how
  closely to keep the photo; the negative prompt works only with both CFGs on (guidance > 1,
  image_guidance >= 1), else it is recorded unused.
- FLUX.1 Kontext: the model's flow scheduler; ``guidance`` is its distilled guidance (default 2.5);
  no negative prompt (recorded unused); the instruction reaches CLIP (77 tokens) and T5 (512).
  The working size is passed as is: Kontext's own snapping to preferred resolutions
  (``_auto_resize``) would change the aspect ratio and the size the manifest records.
- Qwen-Image-Edit: ``guidance`` is ``true_cfg_scale`` (default 4.0): real classifier-free
  guidance, one transformer call with the instruction and one with the negative per step, so the
  negative is always passed (default ``" "``, the card's, as the pipeline skips CFG without one)
  and ``guidance`` <= 1 turns CFG off, halving the calls (``true_cfg``, ``transformer_evals``).
  The pipeline conditions on a copy of the photo of about 1024 x 1024 px (``condition_size``).
  Qwen-Image overflows float16 (NaN latents: black pictures), so float16 is refused at start.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from processor.config import EditStyle, InstructPix2PixStyle
from processor.errors import ConfigError
from processor.models.families import FAMILIES, Editor, Family, Guidance, SchedulerChoice, Task
from processor.models.loader import ModelLoader
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.diffusion import (
    Batches,
    LoadedModel,
    StyleLoras,
    describe,
    model_record,
    prepare_vae,
    refuse_unsupported,
    scheduler_name,
    warm_up,
)
from processor.pipeline.prompt import BuiltPrompt, encoder_counter, fit_text
from processor.pipeline.provenance import EditRecord, T5PromptRecord
from processor.pipeline.sampling import generators, make_scheduler, native_size, to_pil, to_tensor, working_size

#: The negative prompt Qwen-Image-Edit gets when the style sets none: the model card's blank one,
#: so that true CFG runs.
QWEN_NEGATIVE = " "
#: Square pixels: the area of the photo copy Qwen-Image-Edit's VAE conditions on (its ``calculate_dimensions``).
QWEN_CONDITION_AREA = 1024 * 1024


def condition_size(width: int, height: int) -> tuple[int, int]:
    """The size Qwen-Image-Edit resizes the photo to for its VAE: about 1 Mpx, aspect kept, sides of 32."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    w, h, _ = calculate_dimensions(QWEN_CONDITION_AREA, width / height)
    return int(w), int(h)


def _editors_for(engine: str) -> list[Family]:
    """The families an edit engine runs: instruct-pix2pix models, or the ``engine: edit`` editors."""
    wanted = Task.INSTRUCT_PIX2PIX if engine == "instruct-pix2pix" else Task.EDIT
    return [f for f in FAMILIES if wanted in f.pipelines]


class EditEngine:
    """An instruction edit of the photo, all variants in one batched call (see the module docstring)."""

    def __init__(self, style_name: str, style: EditStyle | InstructPix2PixStyle, models: ModelLoader) -> None:
        self.style_name = style_name
        self.style = style
        self.models = models
        #: ``instruct-pix2pix`` or ``edit``: the style's engine key, and what variants record.
        self.engine = style.engine
        self.loaded: LoadedModel | None = None
        self.pipe: Any = None
        self.loras = StyleLoras(style_name, models, style.ref, style.addons().lora)
        self.batches = Batches(style_name, style.variants)
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
        task = Task.INSTRUCT_PIX2PIX if self.engine == "instruct-pix2pix" else Task.EDIT
        if task is Task.EDIT and task not in row.pipelines:
            names = ", ".join(f.pipelines[Task.EDIT] for f in _editors_for(self.engine))
            raise ConfigError(
                f"styles.{self.style_name}.model: {style.model!r} is a {found.class_name or 'unknown pipeline'}; "
                f"engine edit runs {names} models (for an instruct-pix2pix model use engine: instruct-pix2pix)")
        if row.refuses_float16 and self.models.dtype(row) == torch.float16:  # refuse before loading 58 GB
            raise ConfigError(
                f"styles.{self.style_name}.model: {row.label} overflows in float16 (NaN latents, black "
                "pictures); set models.dtype: bfloat16 (or float32)")
        pipe, resolved = self.models.pipeline(task, style.model, style.revision)
        if row.scheduler is SchedulerChoice.STYLE and isinstance(style, InstructPix2PixStyle):
            pipe.scheduler = make_scheduler(style.scheduler, pipe.scheduler.config)
        self.pipe = pipe
        self.loaded = LoadedModel(pipe, resolved, row, found.class_name,
                                  self.models.switches(style.model, style.revision))
        self.loras.load(pipe)  # onto the shared denoiser, switched per call
        self.compile_warmup_s = warm_up(self, self.loaded, native_size(pipe, row), self.style_name)

    def _scheduler(self) -> str | None:
        style_scheduler = self.style.scheduler if isinstance(self.style, InstructPix2PixStyle) else None
        if self.loaded is None:
            return style_scheduler
        return scheduler_name(style_scheduler, self.pipe, self.loaded.family)

    def describe(self) -> dict[str, Any]:
        return describe(self.engine, self.style_name, self.style, self.models, self.loaded, self.pipe,
                        self._scheduler())

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        assert self.loaded is not None, "setup() first"
        style, row = self.style, self.loaded.family
        editor = row.editor
        assert editor is not None
        native = native_size(self.pipe, row)
        size = working_size(image.width, image.height, style.size or native, multiple=row.size_multiple)
        photo = image.convert("RGB")
        source = to_tensor(photo.resize(size, Image.Resampling.LANCZOS)).expand(style.variants, -1, -1, -1)
        seeds = [style.seed + i for i in range(style.variants)]
        fields = {"style": self.style_name}
        count, limit = encoder_counter(self.pipe, row.prompt_encoder)
        instruction = fit_text(style.instruction, count_tokens=count, max_tokens=limit, what="instruction",
                               fields=fields)
        t5 = None
        if row.t5 is not None:  # Kontext: T5 reads up to 512 tokens of the same instruction
            t5_count, t5_limit = encoder_counter(self.pipe, row.t5)
            t5 = fit_text(style.instruction, count_tokens=t5_count, max_tokens=t5_limit, what="instruction",
                          fields=fields | {"encoder": row.t5.kind.value})
        guidance = style.guidance if style.guidance is not None else row.default_guidance
        assert guidance is not None
        negative = self._negative(guidance, count, limit)
        self.loras.activate(self.pipe)
        vae_tiled = self.vae_tiled = prepare_vae(self.loaded, self.pipe, size, native)

        def call(start: int, stop: int) -> torch.Tensor:
            return self.pipe(**self._call_kwargs(editor, start, stop, photo=photo, source=source, size=size,
                                                 instruction=instruction, t5=t5, negative=negative, guidance=guidance),
                             num_inference_steps=style.steps, generator=generators(seeds[start:stop]),
                             output_type="pt").images

        with torch.inference_mode():
            out, halvings = self.batches.run(style.variants, call)
        record_model = model_record(self.engine, self.style_name, style, self.loaded, self.pipe,
                                    scheduler=self._scheduler(), steps=style.steps, size=size,
                                    dtype=self.models.dtype(row), vae_tiled=vae_tiled)
        true_cfg = row.guidance.uses_negative(guidance) if row.guidance is Guidance.TRUE_CFG else None
        condition = condition_size(photo.width, photo.height) if true_cfg is not None else None
        loras = self.loras.record()
        results = []
        for i, picture in enumerate(to_pil(out)):
            record = EditRecord(
                model=record_model, editor=editor, instruction=instruction.text, seed=seeds[i], guidance=guidance,
                denoising_steps=style.steps, batch_size=self.batches.limit, oom_halvings=halvings,
                negative=self._recorded_negative(negative), image_guidance=self._image_guidance(),
                true_cfg=true_cfg, transformer_evals=style.steps * (2 if true_cfg else 1) if condition else None,
                condition_size=f"{condition[0]}x{condition[1]}" if condition else None, loras=loras,
                negative_used=False if self._negative_unused(guidance) else None,
                t5=T5PromptRecord(t5, row.t5.max_tokens) if t5 is not None and row.t5 is not None else None)
            results.append(VariantImage(style=self.style_name, engine=self.engine, index=i, seed=seeds[i],
                                        image=picture, parameters=record.parameters()))
        return results

    def _image_guidance(self) -> float | None:
        return self.style.image_guidance if isinstance(self.style, InstructPix2PixStyle) else None

    def _negative(self, guidance: float, count: Any, limit: int) -> str | None:
        """The negative prompt the pipeline gets: instruct-pix2pix the style's (None when empty);
        Qwen-Image-Edit with true CFG the style's or the card's blank one, fitted to its encoder;
        Kontext none (it has no negative prompt)."""
        style, row = self.style, self.loaded.family if self.loaded else None
        if isinstance(style, InstructPix2PixStyle):
            return style.negative or None
        if row is None or not row.guidance.uses_negative(guidance):
            return None
        if style.negative is None:  # the blank default as is: fitting would strip it to "", not the card's prompt
            return QWEN_NEGATIVE
        return fit_text(style.negative, count_tokens=count, max_tokens=limit, what="negative",
                        fields={"style": self.style_name}).text

    def _recorded_negative(self, negative: str | None) -> str | None:
        """instruct-pix2pix records the style's negative as written; Qwen the one its CFG ran."""
        if isinstance(self.style, InstructPix2PixStyle):
            return self.style.negative
        return negative

    def _negative_unused(self, guidance: float) -> bool:
        """A negative the style set that changed nothing: Kontext has none; instruct-pix2pix runs
        it only with both guidances on. (Qwen-Image-Edit records the negative its CFG ran.)"""
        style = self.style
        if isinstance(style, InstructPix2PixStyle):
            return bool(style.negative) and not (guidance > 1 and style.image_guidance >= 1)
        return style.negative is not None and self.loaded is not None and self.loaded.family.editor is \
            Editor.FLUX_KONTEXT

    def _call_kwargs(self, editor: Editor, start: int, stop: int, *, photo: Image.Image, source: torch.Tensor,
                     size: tuple[int, int], instruction: BuiltPrompt, t5: BuiltPrompt | None, negative: str | None,
                     guidance: float) -> dict[str, Any]:
        """The editor's own pipeline keywords for variants [start, stop)."""
        n = stop - start
        if editor is Editor.INSTRUCT_PIX2PIX:
            return {"prompt": [instruction.text] * n, "negative_prompt": [negative] * n if negative else None,
                    "image": source[start:stop], "guidance_scale": guidance,
                    "image_guidance_scale": self._image_guidance()}
        if editor is Editor.FLUX_KONTEXT:
            kwargs: dict[str, Any] = {
                "prompt": [instruction.text] * n, "image": source[start:stop], "guidance_scale": guidance,
                "width": size[0], "height": size[1], "max_area": size[0] * size[1], "_auto_resize": False}
            row = self.loaded.family if self.loaded else None
            if t5 is not None and row is not None and row.t5 is not None:
                kwargs |= {row.t5.prompt_keyword: [t5.text] * n, "max_sequence_length": row.t5.max_tokens}
            return kwargs
        # Qwen-Image-Edit: one photo, num_images_per_prompt variants.
        return {"image": photo, "prompt": instruction.text, "negative_prompt": negative, "true_cfg_scale": guidance,
                "width": size[0], "height": size[1], "num_images_per_prompt": n}
