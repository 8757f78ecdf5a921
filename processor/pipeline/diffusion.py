"""Stable Diffusion engines: ``img2img`` (in rounds) and ``instruct-pix2pix``.

An img2img style with ``control`` runs diffusers' ControlNet img2img pipeline over the same shared
modules (``from_pipe``): every round is steered by maps made once per input from the resized photo
(canny: OpenCV edges; lineart, softedge, depth: a preprocessor model,
``processor.pipeline.control_preprocess``), so the toy keeps its outline at strengths that would
otherwise redraw it.

Per image, every variant is computed in ONE batched pipeline call per round (per-variant
``torch.Generator`` list, the image repeated), not one call per variant.

Determinism: variant ``i`` uses seed ``style.seed + i``; round ``k`` of it draws its noise from a
CPU generator seeded ``seed + i + k * ROUND_SEED_STRIDE`` (round 0 is exactly the variant seed, so
a one-round style reproduces plain img2img with that seed elsewhere). Generators live on the CPU
even when the pipeline runs on CUDA, so the noise does not depend on the device, and each variant
has its own generator, so the noise does not depend on how the batch is split.

Shared rounds (``style.shared_rounds`` = S, default 0): rounds 0..S-1 run once per image as one
chain of batch 1 with variant 0's round seeds (``seed + k * ROUND_SEED_STRIDE``), and every variant
branches from that image for rounds S.. with its own round seeds, as above. This is the original
notebook's cost profile: (S shared rounds + variants x the rest) instead of variants x every round.

Sizes: the input keeps its aspect ratio; its long side is scaled to ``style.size`` (default: the
model's native resolution, UNet sample size x VAE factor: 512 for SD 1.x, 1024 for SDXL) and both
sides are rounded to multiples of 8 (the VAE factor).

CUDA out of memory: the batch is halved and the failed chunk retried, down to one variant; the
engine remembers the smaller batch for later images. ``batch_size`` and ``oom_halvings`` are
recorded in every variant's parameters. Out of memory with one variant fails the item
(``StageFailed``, a failure record, never a lost item).

Between rounds images stay float tensors in [0, 1] (no 8-bit rounding until the final PNG).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from processor.config import Img2ImgStyle, InstructPix2PixStyle
from processor.errors import ConfigError
from processor.models import accel
from processor.models.loader import ControlKind, ModelLoader, ResolvedModel
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.diffusion_common import (  # noqa: F401 - the helpers' old home: re-exported
    ROUND_SEED_STRIDE,
    SCHEDULERS,
    SIZE_MULTIPLE,
    canny_map,
    make_scheduler,
    native_size,
    round_seed,
    run_in_batches,
    to_pil,
    to_tensor,
    working_size,
)
from processor.pipeline.diffusion_control import ControlledEngine
from processor.pipeline.prompt import StylePrompt, fit_text, style_prompt, tokenizer_counter

log = logging.getLogger("processor.diffusion")


class _DiffusionEngine:
    engine: str
    task: str

    def __init__(self, style_name: str, style: Any, models: ModelLoader) -> None:
        self.style_name = style_name
        self.style = style
        self.models = models
        self.pipe: Any = None
        self.resolved: ResolvedModel | None = None
        self.adapter: str | None = None
        #: The LCM-LoRA's adapter name (``style.lcm``), active beside ``adapter``.
        self.lcm_adapter: str | None = None
        #: name -> short sha256 of each LoRA file in use (A1111's ``Lora hashes``).
        self.lora_hashes: dict[str, str] = {}
        #: Variants per pipeline call; shrinks after a CUDA out-of-memory error.
        self.batch_limit = style.variants
        #: Performance switches active on the shared modules (``processor.models.accel``), recorded per variant.
        self.switches: dict[str, Any] = {}
        self.compile_warmup_s: float | None = None
        self._vae_tiled = False
        #: The style image and its IP-Adapter (``processor.pipeline.ip_adapter.IpAdapterUse``), img2img only.
        self.ip_adapter: Any = None

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        """``style.variants`` images of ``image``; each engine (img2img, instruct-pix2pix) renders its own way."""
        raise NotImplementedError

    def _load_pipeline(self) -> tuple[Any, ResolvedModel]:
        return self.models.pipeline(self.task, self.style.model, self.style.revision)

    def setup(self) -> None:
        pipe, self.resolved = self._load_pipeline()
        pipe.scheduler = make_scheduler(self.style.scheduler, self._scheduler_config(pipe.scheduler.config))
        self.pipe = pipe
        lora = getattr(self.style, "lora", None)
        if lora is not None:
            self.adapter = self.models.lora_adapter(pipe, self.style.model, self.style.revision, lora)
        lcm = getattr(self.style, "lcm", None)
        loras = [lora] if lora is not None else []
        if lcm is not None:
            lcm_lora = lcm.as_lora()
            self.lcm_adapter = self.models.lora_adapter(pipe, self.style.model, self.style.revision, lcm_lora)
            loras.append(lcm_lora)
        self.lora_hashes = dict(self.models.lora_hash(x) for x in loras)
        if getattr(self.style, "ip_adapter", None) is not None:  # before the warm-up: it runs a call
            from processor.pipeline.ip_adapter import IpAdapterUse

            self.ip_adapter = IpAdapterUse(self.style_name, self.style, pipe, self.models)
        self.switches = self.models.switches(self.style.model, self.style.revision)
        # A compiled UNet compiles on its first call: do it now, on one blank image at the native
        # size (the shapes of a square input), rather than on the first user's input. Once per
        # shared UNet: per-image engines (sidecar overrides) share the record.
        if "compile_warmup_s" not in self.switches:
            side = native_size(pipe)
            seconds = accel.warm_up(lambda: self(Image.new("RGB", (side, side), "gray")), self.switches,
                                    self.style_name)
            if seconds is not None:
                self.switches["compile_warmup_s"] = seconds
        self.compile_warmup_s = self.switches.get("compile_warmup_s")

    def _scheduler_config(self, config: Any) -> Any:
        """The model's scheduler config the style's scheduler is built from (a turbo style overrides it)."""
        return config

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "style": self.style_name,
            "available": self.pipe is not None,
            "model": self.style.model,
            "revision": self._revision(),
            "pipeline": type(self.pipe).__name__ if self.pipe is not None else None,
            "device": self.models.device(),
            "dtype": str(self.models.dtype()).replace("torch.", ""),
            "scheduler": getattr(self.style, "scheduler", None),  # edit styles keep the model's
            "variants": self.style.variants,
            "seed": self.style.seed,
        }

    def _revision(self) -> str | None:
        return self.style.revision or (self.resolved.revision if self.resolved else None)

    def _prompt(self, context: ItemContext | None) -> StylePrompt:
        """This style's prompt for one input (``processor.pipeline.prompt``), fitted to the
        pipeline's own tokenizer."""
        tokenizer = self.pipe.tokenizer
        return style_prompt(trigger=self.style.trigger, negative=self.style.negative, style_subject=self.style.prompt,
                            context=context, count_tokens=tokenizer_counter(tokenizer),
                            max_tokens=tokenizer.model_max_length, fields={"style": self.style_name})

    def _long_side(self) -> int:
        return self.style.size or native_size(self.pipe)

    def _prepare_vae(self, size: tuple[int, int]) -> None:
        self._vae_tiled = accel.set_vae_tiling(self.pipe, self.switches, max(size), native_size(self.pipe))

    def _performance(self) -> dict[str, Any]:
        record = {k: v for k, v in self.switches.items() if v is not None}
        record["vae_tiled"] = self._vae_tiled
        return record

    def _activate_lora(self) -> None:
        """The UNet is shared between styles: switch this style's adapter on, or every adapter off."""
        names = [n for n in (self.adapter, self.lcm_adapter) if n]
        if names:
            weights = ([self.style.lora.scale] if self.adapter else []) + ([self.style.lcm.scale] if self.lcm_adapter
                                                                           else [])
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, adapter_weights=weights)
        elif self.models.has_adapters(self.style.model, self.style.revision):
            self.pipe.disable_lora()

    def _lora_parameters(self) -> dict[str, Any]:
        """What a variant records of this style's LoRA and LCM-LoRA (none: an empty dict)."""
        params: dict[str, Any] = {}
        lora = getattr(self.style, "lora", None)
        if lora is not None:
            params["lora"] = {"path": lora.path, "scale": lora.scale, "revision": self.models.lora_revision(lora)}
        lcm = getattr(self.style, "lcm", None)
        if lcm is not None:
            params["lcm"] = {"lora": lcm.lora, "scale": lcm.scale, "revision": self.models.lora_revision(lcm.as_lora())}
        if self.lora_hashes:
            params["lora_hashes"] = dict(self.lora_hashes)
        return params

    def _batched(self, count: int, call: Callable[[int, int], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """``call(start, stop)`` over [0, count), halving the chunk on CUDA out-of-memory (the
        engine keeps the smaller batch for later images). Returns the outputs and the halvings."""
        out, self.batch_limit, halvings = run_in_batches(
            count, call, self.batch_limit, style_name=self.style_name, stage="transform",
            too_small=f"CUDA out of memory with a single variant; lower styles.{self.style_name}.size "
                      "or use a GPU with more memory",
        )
        return out, halvings

    def _common(self, size: tuple[int, int]) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "style": self.style_name,
            "model": self.style.model,
            "revision": self._revision(),
            # Provenance: the repo's own safetensors, or its pickle weights converted here.
            "weights": "converted-from-pickle" if self.resolved and self.resolved.converted else "safetensors",
            "pipeline": type(self.pipe).__name__,
            "scheduler": getattr(self.style, "scheduler", None),  # edit styles keep the model's
            "steps": self.style.steps,
            "size": f"{size[0]}x{size[1]}",
            "dtype": str(self.models.dtype()).replace("torch.", ""),
            "performance": self._performance(),
        }


class Img2ImgEngine(ControlledEngine, _DiffusionEngine):
    """Stable Diffusion img2img in ``style.rounds`` (every round runs; see the module docstring).

    With ``style.shared_rounds`` = S > 0 the first S rounds run once, as one chain of batch 1
    seeded like variant 0 (round k: ``round_seed(style.seed, k)``), and rounds S.. branch per
    variant from that shared image, batched as with S = 0. Every variant's ``rounds[]`` marks the
    shared ones (``shared: true``, the same seed in every variant)."""

    engine = "img2img"
    task = "img2img"
    style: Img2ImgStyle

    def __init__(self, style_name: str, style: Img2ImgStyle, models: ModelLoader) -> None:
        super().__init__(style_name, style, models)
        self._init_control()

    def _load_pipeline(self) -> tuple[Any, ResolvedModel]:
        if not self.style.control:
            return super()._load_pipeline()
        if self._style_control_kind() is ControlKind.T2I_ADAPTER:  # before any weights load
            raise ConfigError(f"styles.{self.style_name}.control: {self.style.control[0].model} is a T2I-Adapter, and "
                              f"diffusers has no img2img adapter pipeline: use engine: txt2img, or a ControlNet")
        modules = self._load_control(ControlKind.CONTROLNET)
        return self.models.pipeline(self.task, self.style.model, self.style.revision, controlnets=modules)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"rounds": len(self.style.rounds), "shared_rounds": self.style.shared_rounds,
                                     "control": self._describe_control()}

    def _with_ip_adapter(self, call: Callable[[int, int], torch.Tensor]) -> Callable[[int, int], torch.Tensor]:
        """``call`` with the style's IP-Adapter in the shared UNet for its duration (and out after:
        other styles share the UNet, ``processor.models.ip_adapter``); ``call`` itself without one."""
        if self.ip_adapter is None:
            return call
        use = self.ip_adapter

        def active(start: int, stop: int) -> torch.Tensor:
            with use.active(self.pipe):
                return call(start, stop)

        return active

    def _final_rounds(self, current: torch.Tensor, prompt: str, negative: str | None, seeds: list[int],
                      context: ItemContext | None) -> tuple[torch.Tensor, int, list[dict[str, Any]]]:
        """Rounds run after ``style.rounds`` on every variant (the SDXL refiner's): the images, the
        out-of-memory halvings, and one ``rounds[]`` record each. None here."""
        return current, 0, []

    def _pipe_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        """Extra pipeline keywords for a working size (the flow families pass width and height)."""
        return {}

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        style = self.style
        size = working_size(image.width, image.height, self._long_side())
        resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        start_image = to_tensor(resized)
        controls = self._controls(resized)
        control_kwargs = self._control_kwargs(controls)
        ip_kwargs = self.ip_adapter.pipe_kwargs(context) if self.ip_adapter is not None else {}
        built = self._prompt(context)
        prompt = built.prompt.text
        negative = built.negative.text or None
        seeds = [style.seed + i for i in range(style.variants)]
        shared = style.shared_rounds
        self._activate_lora()
        self._prepare_vae(size)

        def run_round(source: torch.Tensor, k: int, round_seeds: list[int]) -> Callable[[int, int], torch.Tensor]:
            rnd = style.rounds[k]

            def call(start: int, stop: int) -> torch.Tensor:
                n = stop - start
                steps = int(style.steps * rnd.strength)
                stage = f"style:{self.style_name}"
                if context is not None:
                    context.progress(stage, round=k + 1, rounds=len(style.rounds), step=0, steps=steps)

                def on_step(pipe: Any, step: int, _timestep: Any, kwargs: dict) -> dict:
                    # Only memory: the claim keeper writes the latest value at its next renewal. (The
                    # pipe is given this callback only with a context; the check narrows the closure.)
                    if context is not None:
                        context.progress(stage, round=k + 1, rounds=len(style.rounds), step=step + 1, steps=steps)
                    return kwargs

                return self.pipe(
                    prompt=[prompt] * n,
                    negative_prompt=[negative] * n if negative else None,
                    image=source[start:stop],
                    strength=rnd.strength,
                    guidance_scale=rnd.guidance,
                    num_inference_steps=style.steps,
                    generator=[torch.Generator("cpu").manual_seed(round_seed(s, k)) for s in round_seeds[start:stop]],
                    output_type="pt",
                    callback_on_step_end=on_step if context is not None else None,
                    **control_kwargs,
                    **ip_kwargs,
                    **self._pipe_kwargs(size),
                ).images

            return self._with_ip_adapter(call)

        current = start_image
        with torch.inference_mode():
            # The shared chain: one image, so no batch to halve; out of memory here fails the item.
            for k in range(shared):
                current, _, _ = run_in_batches(
                    1, run_round(current, k, [style.seed]), 1, style_name=self.style_name, stage="transform",
                    too_small=f"CUDA out of memory in a shared round (one image); lower styles.{self.style_name}.size "
                              "or use a GPU with more memory",
                )
            current = current.expand(style.variants, -1, -1, -1)
        halvings = 0
        for k in range(shared, len(style.rounds)):
            with torch.inference_mode():
                current, made = self._batched(style.variants, run_round(current, k, seeds))
            halvings += made
        current, made, final = self._final_rounds(current, prompt, negative, seeds, context)
        halvings += made
        rounds = [{"strength": r.strength, "guidance": r.guidance, "denoising_steps": int(style.steps * r.strength),
                   "shared": k < shared} for k, r in enumerate(style.rounds)] + final
        chain_steps = sum(r["denoising_steps"] for r in rounds)
        shared_steps = sum(r["denoising_steps"] for r in rounds[:shared])
        results = []
        for i, picture in enumerate(to_pil(current)):
            params = self._common(size) | built.parameters() | {
                "seed": seeds[i],
                "rounds": [r | {"seed": round_seed(style.seed if r["shared"] else seeds[i], k)}
                           for k, r in enumerate(rounds)],
                # The steps this variant's image went through (its whole chain of rounds)...
                "denoising_steps": chain_steps,
                "shared_rounds": shared,
                # ...of which these ran once for all of this input's variants of the style...
                "shared_denoising_steps": shared_steps,
                # ...so all of them together cost this many (shared steps counted once).
                "denoising_steps_all_variants": shared_steps + style.variants * (chain_steps - shared_steps),
                "batch_size": self.batch_limit,
                "oom_halvings": halvings,
            }
            params |= self._lora_parameters()
            if self.ip_adapter is not None:
                params["ip_adapter"] = self.ip_adapter.record(context)
            results.append(VariantImage(style=self.style_name, engine=self.engine, index=i, seed=seeds[i],
                                        image=picture, parameters=params, control=list(controls)))
        return results


class InstructPix2PixEngine(_DiffusionEngine):
    """An instruct-pix2pix edit, all variants in one batched call."""

    engine = "instruct-pix2pix"
    task = "instruct-pix2pix"
    style: InstructPix2PixStyle

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        style = self.style
        size = working_size(image.width, image.height, self._long_side())
        resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        source = to_tensor(resized).expand(style.variants, -1, -1, -1)
        negative = style.negative or None
        seeds = [style.seed + i for i in range(style.variants)]
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
                negative_prompt=[negative] * n if negative else None,
                image=source[start:stop],
                num_inference_steps=style.steps,
                guidance_scale=style.guidance,
                image_guidance_scale=style.image_guidance,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[start:stop]],
                output_type="pt",
            ).images

        with torch.inference_mode():
            out, halvings = self._batched(style.variants, call)
        results = []
        for i, picture in enumerate(to_pil(out)):
            params = self._common(size) | {
                "prompt": instruction,
                "instruction": instruction,
                "negative": style.negative,
                "seed": seeds[i],
                "guidance": style.guidance,
                "image_guidance": style.image_guidance,
                "denoising_steps": style.steps,
                "batch_size": self.batch_limit,
                "oom_halvings": halvings,
            }
            results.append(VariantImage(style=self.style_name, engine=self.engine, index=i, seed=seeds[i],
                                        image=picture, parameters=params))
        return results
