"""The background stage: after a style's transform, change what is behind the toy.

Contract (``styles.<name>.background``, see ``BackgroundSettings``):

- The subject mask is computed once per input from the *source photo* (``SubjectMasker``, shared
  by every style of the worker), scaled to each variant's size, and attached to the variants so
  the outputs can write it as ``mask.png``.
- ``inpaint``: the background region (everything not fully subject, the feather band included) is
  repainted by an inpainting pipeline (9-channel UNet) from ``prompt``, around where the toy stands.
- ``generate``: a text-to-image background at the variant's aspect ratio; the subject is
  composited onto it at its original position and scale with the feathered mask; a low-strength
  img2img pass (``harmonize``) then evens out light and colour.
- ``instruct``: an instruct-pix2pix edit (``prompt`` is the instruction) of the whole variant.
- In every mode the transformed subject is composited back last, so pixels where the mask is fully
  subject (outside the feather band) are exactly the transform's pixels.
- Sizes: the model runs at the variant's aspect ratio with both sides multiples of 8 (long side
  ``background.size``, default the model's native resolution); its output is resized back to the
  variant's exact size before compositing, so outputs keep the transform's size.
- Batching: all variants of a style go through one pipeline call (chunks halve on CUDA out of
  memory), each with its own CPU generator: variant ``i`` uses ``background.seed + i`` (default:
  the variant's own seed); the harmonising pass uses that seed + ``ROUND_SEED_STRIDE``.
- Weights: the pipeline is derived with ``ModelLoader.pipeline`` (``from_pipe``), so a background
  on the style's own model shares its UNet, VAE and text encoder.
- A mask covering too little or too much of the image (``pipeline.mask`` bounds) leaves the
  variants unchanged; the reason is recorded in each variant's ``background.fallback``.

Torch is imported only when a stage with a mode other than ``none`` is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from processor.config import StyleBase
from processor.models.families import Task
from processor.pipeline.base import Engine, ItemContext, VariantImage
from processor.pipeline.mask import SubjectMask, SubjectMasker
from processor.pipeline.sampling import (
    ROUND_SEED_STRIDE,
    make_scheduler,
    native_size,
    run_in_batches,
    to_pil,
    to_tensor,
    working_size,
)

log = logging.getLogger("processor.background")

#: Pipeline each mode runs on (``ModelLoader.pipeline`` tasks).
MODE_TASKS = {"inpaint": Task.INPAINT, "generate": Task.TXT2IMG, "instruct": Task.INSTRUCT_PIX2PIX}
#: Variants per pipeline call at most (a style has at most 16); halves on CUDA out of memory.
MAX_BATCH = 16
#: Scheduler per mode when ``background.scheduler`` is not set.
DEFAULT_SCHEDULERS = {"inpaint": "dpmpp-2m-karras", "generate": "dpmpp-2m-karras", "instruct": "euler-a"}


def composite(subject: Image.Image, backdrop: Image.Image, alpha: np.ndarray) -> Image.Image:
    """``subject`` over ``backdrop`` with uint8 ``alpha`` (255 = subject), in integer arithmetic so
    alpha 255 gives exactly the subject's pixel and alpha 0 exactly the backdrop's."""
    if subject.size != backdrop.size or alpha.shape != (subject.height, subject.width):
        raise ValueError(f"composite sizes differ: {subject.size}, {backdrop.size}, alpha {alpha.shape[::-1]}")
    fg = np.asarray(subject.convert("RGB"), np.uint32)
    bg = np.asarray(backdrop.convert("RGB"), np.uint32)
    a = alpha.astype(np.uint32)[..., None]
    out = (fg * a + bg * (255 - a) + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


class BackgroundStage:
    """One style's background (mode other than ``none``); see the module docstring."""

    def __init__(self, style_name: str, style: StyleBase, models: Any, masker: SubjectMasker) -> None:
        self.style_name = style_name
        settings, found = style.background_settings(), style.background_ref()
        if settings is None or found is None:
            raise ValueError(f"style {style_name!r} has no background (background.mode: none)")
        self.settings = settings
        self.mode: str = self.settings.mode
        if self.mode not in MODE_TASKS:
            raise ValueError(f"no background stage for mode {self.mode!r}")
        self.model, self.revision = found.model, found.revision
        self.models = models
        self.masker = masker
        self.scheduler = self.settings.scheduler or DEFAULT_SCHEDULERS[self.mode]
        self.pipe: Any = None
        self.harmonizer: Any = None
        self.resolved: Any = None
        #: Variants per pipeline call; halves after a CUDA out-of-memory error and stays halved.
        self.batch_limit = MAX_BATCH

    def setup(self) -> None:
        self.pipe, self.resolved = self.models.pipeline(MODE_TASKS[self.mode], self.model, self.revision)
        self.pipe.scheduler = make_scheduler(self.scheduler, self.pipe.scheduler.config)
        if self.mode == "generate" and self.settings.harmonize > 0:
            self.harmonizer, _ = self.models.pipeline(Task.IMG2IMG, self.model, self.revision)
            self.harmonizer.scheduler = make_scheduler(self.scheduler, self.harmonizer.scheduler.config)
        self.masker.setup()

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.model, "revision": self._revision(),
                "pipeline": type(self.pipe).__name__ if self.pipe is not None else None,
                "segmenter": self.masker.method}

    def _revision(self) -> str | None:
        return self.revision or (self.resolved.revision if self.resolved else None)

    # ----------------------------------------------------------------- per input

    def __call__(self, source: Image.Image, variants: list[VariantImage]) -> list[VariantImage]:
        """``variants`` (this style's transform of ``source``) with their background changed."""
        started = time.perf_counter()
        mask = self.masker(source)
        info = {
            "mode": self.mode,
            "prompt": self.settings.prompt,
            "negative": self.settings.negative or None,
            "model": self.model,
            "revision": self._revision(),
            "segmenter": mask.method,
            "segmentation": mask.segmentation.record(),
            "coverage": round(mask.coverage, 4),
            "fallback": mask.fallback,
        }
        if mask.fallback:
            log.warning("background_fallback", extra={"style": self.style_name, "reason": mask.fallback})
            return [self._with(v, v.image, mask, info | {"applied": False, "seed": None}) for v in variants]
        by_size: dict[tuple[int, int], list[VariantImage]] = {}
        for v in variants:
            by_size.setdefault(v.image.size, []).append(v)
        done: dict[int, VariantImage] = {}
        for size, group in by_size.items():
            for v, picture, extra in zip(group, *self._run(group, mask, size), strict=True):
                done[id(v)] = self._with(v, picture, mask, info | extra | {"applied": True})
        log.info("background", extra={"style": self.style_name, "mode": self.mode, "variants": len(variants),
                                      "seconds": round(time.perf_counter() - started, 3)})
        return [done[id(v)] for v in variants]

    @staticmethod
    def _with(v: VariantImage, picture: Image.Image, mask: SubjectMask, info: dict[str, Any]) -> VariantImage:
        # replace(): everything else the transform recorded (its ControlNets, ...) stays with the variant.
        return replace(v, image=picture, background=info, mask=mask)

    def _seed(self, v: VariantImage) -> int:
        return self.settings.seed + v.index if self.settings.seed is not None else v.seed

    def _run(self, group: list[VariantImage], mask: SubjectMask,
             size: tuple[int, int]) -> tuple[list[Image.Image], list[dict[str, Any]]]:
        """One batched pass for variants of one size: (final pictures, per-variant info)."""
        import torch

        s = self.settings
        work = working_size(size[0], size[1], s.size or native_size(self.pipe))
        alpha = mask.alpha_at(size)
        alpha_work = mask.alpha_at(work)
        pictures = [v.image.convert("RGB") for v in group]
        x = torch.cat([to_tensor(p if p.size == work else p.resize(work, Image.Resampling.LANCZOS)) for p in pictures])
        a = torch.from_numpy(alpha_work.astype(np.float32) / 255.0)[None, None].expand(len(group), 1, -1, -1)
        seeds = [self._seed(v) for v in group]
        negative = s.negative or None
        self._lora_off()

        def generators(start: int, stop: int, offset: int = 0) -> list[Any]:
            return [torch.Generator("cpu").manual_seed(seed + offset) for seed in seeds[start:stop]]

        def common(start: int, stop: int) -> dict[str, Any]:
            n = stop - start
            return {"prompt": [s.prompt] * n, "negative_prompt": [negative] * n if negative else None,
                    "num_inference_steps": s.steps, "guidance_scale": s.guidance,
                    "generator": generators(start, stop), "output_type": "pt"}

        extra: dict[str, Any] = {"size": f"{work[0]}x{work[1]}", "steps": s.steps, "guidance": s.guidance,
                                 "scheduler": self.scheduler, "pipeline": type(self.pipe).__name__}
        with torch.inference_mode():
            if self.mode == "inpaint":
                # Repaint everything that is not fully subject: the band is then blended back.
                repaint = (a < 1.0).to(x.dtype)
                out = self._batched(len(group), lambda i, j: self.pipe(
                    image=x[i:j], mask_image=repaint[i:j], height=work[1], width=work[0], strength=1.0,
                    **common(i, j)).images)
            elif self.mode == "generate":
                backdrop = self._batched(len(group), lambda i, j: self.pipe(
                    height=work[1], width=work[0], **common(i, j)).images)
                out = a * x + (1 - a) * backdrop.to(x.dtype)
                denoise = int(s.steps * s.harmonize)
                if self.harmonizer is not None and denoise >= 1:
                    source = out

                    def harmonise(i: int, j: int) -> Any:
                        args = common(i, j) | {"generator": generators(i, j, ROUND_SEED_STRIDE)}
                        return self.harmonizer(image=source[i:j], strength=s.harmonize, **args).images

                    out = self._batched(len(group), harmonise)
                    extra |= {"harmonize": s.harmonize, "harmonize_steps": denoise}
            else:
                out = self._batched(len(group), lambda i, j: self.pipe(
                    image=x[i:j], image_guidance_scale=s.image_guidance, **common(i, j)).images)
                extra |= {"image_guidance": s.image_guidance}
        finals = []
        infos = []
        for i, (picture, made) in enumerate(zip(pictures, to_pil(out), strict=True)):
            if made.size != size:
                made = made.resize(size, Image.Resampling.LANCZOS)
            finals.append(composite(picture, made, alpha))
            infos.append(extra | {"seed": seeds[i]} | ({"harmonize_seed": seeds[i] + ROUND_SEED_STRIDE}
                                                       if "harmonize" in extra else {}))
        return finals, infos

    def _lora_off(self) -> None:
        """The UNet may be shared with a LoRA style: the background is drawn by the plain model."""
        if self.models.has_adapters(self.model, self.revision):
            self.pipe.disable_lora()
            if self.harmonizer is not None:
                self.harmonizer.disable_lora()

    def _batched(self, count: int, call: Callable[[int, int], Any]) -> Any:
        """``call(start, stop)`` over [0, count) in chunks, halving them on CUDA out of memory."""
        out, self.batch_limit, _ = run_in_batches(
            count, call, self.batch_limit, style_name=self.style_name, stage="background",
            too_small=f"CUDA out of memory drawing one background; lower styles.{self.style_name}.background.size",
        )
        return out.float()


class BackgroundEngine:
    """A style's engine followed by its background stage (what ``EngineRegistry`` holds)."""

    def __init__(self, inner: Engine, stage: BackgroundStage) -> None:
        self.inner = inner
        self.stage = stage
        self.style_name = inner.style_name
        self.engine = inner.engine

    def setup(self) -> None:
        self.inner.setup()
        self.stage.setup()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe() | {"background": self.stage.describe()}

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        return self.stage(image, self.inner(image, context))


def with_background(engine: Engine, style_name: str, style: StyleBase, models: Any, masker: SubjectMasker) -> Engine:
    """``engine`` wrapped with its style's background stage, or unchanged for mode ``none``.
    ``models`` is the worker's one loader: the stage shares the transform's weights through it."""
    background = style.background_settings()
    if background is None or background.mode == "none":
        return engine
    return BackgroundEngine(engine, BackgroundStage(style_name, style, models, masker))
