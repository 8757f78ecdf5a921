"""``engine: img2img``: the photo re-drawn in rounds, on any family the model is (SD 1.x / 2.x,
SDXL, FLUX.1, SD 3; ``processor.models.families`` says which and what that changes).

Per input, top to bottom (``Img2ImgEngine.__call__``):

1. Size: the photo keeps its aspect ratio; its long side is scaled to ``style.size`` (default the
   model's native resolution) and both sides are rounded to the family's multiple (8 px on a UNet,
   16 on a flow transformer: VAE 8x times 2x2 patches).
2. Control (``processor.pipeline.control``): ControlNet maps made once from the resized photo steer
   every round, so the toy keeps its outline at strengths that would otherwise redraw it.
3. Prompt (``processor.pipeline.prompt``): fitted to CLIP's 77 tokens; a family with a T5 encoder
   (FLUX.1, SD 3) gets a second prompt fitted to the T5's own limit.
4. Rounds: every round runs, each from the previous round's image, in ONE batched pipeline call per
   round for all variants (per-variant CPU generators). ``shared_rounds`` = S: rounds 0..S-1 run
   once as one chain of batch 1 with variant 0's round seeds, and every variant branches from that
   image (the notebook's cost profile: S shared rounds + variants x the rest). The SDXL refiner
   (``refiner``) is one more round, on its own pipeline, after them.
5. Record (``processor.pipeline.provenance.Img2ImgRecord``): every round with the denoising steps
   the family's rounding of steps x strength really ran, seeds, LoRAs, IP-Adapter, batch size.

Options are data, not subclasses: ``turbo`` picks the family's turbo row (trailing timesteps),
``lcm`` is a LoRA plus the LCM scheduler (config sets it), ``refiner`` a last round, ``ip_adapter``
a style picture steering every round (``processor.pipeline.ip_adapter``). An option the family does
not run is refused at start. Flow families keep their own flow-matching scheduler; FLUX.1's
``guidance`` is its distilled guidance input (schnell has none: guidance must be 0), so a negative
prompt is recorded unused (``negative_used: false``), as on any round without classifier-free guidance.

Several inputs at once (``render_many``, the worker's ``run.batch_inputs``): inputs of one working
size share every call of a round, input-major rows, each with its own prompt and its variants'
generators; an input's own seed, variants, prompt, trigger or negative is a style ``derive``d from
this one (``PER_CALL_FIELDS``), on the same pipeline. Control and IP-Adapter inputs run alone.

Determinism: variant ``i`` uses seed ``style.seed + i``; round ``k`` of it draws its noise from a
CPU generator seeded ``seed + i + k * ROUND_SEED_STRIDE`` (round 0 is exactly the variant seed), so
the noise depends neither on the device nor on how the batch is split. CUDA out of memory halves
the batch (``batch_size`` and ``oom_halvings`` are recorded); with one variant it fails the item.
Between rounds images stay float tensors in [0, 1] (no 8-bit rounding until the final PNG).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from processor.config import Img2ImgStyle
from processor.errors import ConfigError
from processor.models.families import Denoiser, Guidance, SchedulerChoice, Task
from processor.models.loader import ControlKind, ModelLoader, ResolvedModel
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
    scheduler_name,
    warm_up,
)
from processor.pipeline.prompt import StylePrompt, encoder_counter, style_prompt
from processor.pipeline.provenance import FlowRecord, Img2ImgRecord, RefinerRecord, RoundRecord, T5PromptRecord
from processor.pipeline.sampling import (
    generators,
    make_scheduler,
    native_size,
    round_seed,
    run_in_batches,
    to_pil,
    to_tensor,
    working_size,
)


class Img2ImgEngine:
    """img2img in ``style.rounds`` on the style's model (see the module docstring)."""

    engine = "img2img"
    #: Style fields an input's own values may change without a pipeline of their own: every call
    #: reads them (``derive``), so inputs that differ only in these render together.
    PER_CALL_FIELDS = frozenset({"seed", "variants", "negative", "trigger", "prompt"})

    def __init__(self, style_name: str, style: Img2ImgStyle, models: ModelLoader) -> None:
        self.style_name = style_name
        self.style = style
        self.models = models
        self.loaded: LoadedModel | None = None
        #: The pipeline object every round calls (over the shared base; ``setup`` sets it).
        self.pipe: Any = None
        self.loras = StyleLoras(style_name, models, style.ref, style.lora, style.lcm)
        self.control = StyleControl(style_name, style.control, models)
        #: The style picture and its IP-Adapter (``processor.pipeline.ip_adapter.IpAdapterUse``).
        self.ip_adapter: Any = None
        #: The SDXL refiner's pipeline (``style.refiner``) and where its weights came from.
        self.refiner_pipe: Any = None
        self.refiner_resolved: ResolvedModel | None = None
        self.batches = Batches(style_name, style.variants)
        self.compile_warmup_s: float | None = None
        #: Whether the last call's VAE decode was tiled (``models.performance.vae_tiling``).
        self.vae_tiled = False
        #: The engine whose pipeline this one calls: itself, or the one it was derived from.
        self.base = self

    @property
    def switches(self) -> dict[str, Any]:
        return self.loaded.switches if self.loaded else {}

    def setup(self) -> None:
        style = self.style
        found = self.models.family(style.model, style.revision)
        row = refuse_unsupported(self.style_name, style, found)
        if row.guidance is Guidance.NONE:
            for i, r in enumerate(style.rounds):
                if r.guidance:
                    raise ConfigError(
                        f"styles.{self.style_name}.rounds[{i}].guidance: {r.guidance}, but {style.model!r} is "
                        f"guidance-distilled ({row.label}: no guidance input); set guidance: 0")
        controlnets = None
        if self.control:
            if self.control.entry_kind() is ControlKind.T2I_ADAPTER:  # before any weights load
                raise ConfigError(f"styles.{self.style_name}.control: {style.control[0].model} is a T2I-Adapter, and "
                                  f"diffusers has no img2img adapter pipeline: use engine: txt2img, or a ControlNet")
            controlnets = self.control.load(ControlKind.CONTROLNET)
        pipe, resolved = self.models.pipeline(Task.IMG2IMG, style.model, style.revision, controlnets=controlnets)
        if row.scheduler is SchedulerChoice.STYLE:
            pipe.scheduler = make_scheduler(style.scheduler, pipe.scheduler.config, row.timestep_spacing)
        if style.refiner is not None:  # before the warm-up: it runs the refiner round too
            refiner, self.refiner_resolved = self.models.refiner(style.refiner.model, style.refiner.revision,
                                                                 style.model, style.revision)
            refiner.scheduler = make_scheduler(style.scheduler, refiner.scheduler.config)
            self.refiner_pipe = refiner
        self.pipe = pipe
        self.loaded = LoadedModel(pipe, resolved, row, found.class_name,
                                  self.models.switches(style.model, style.revision))
        self.loras.load(pipe)
        if style.ip_adapter is not None:  # before the warm-up: it runs a call
            from processor.pipeline.ip_adapter import IpAdapterUse

            self.ip_adapter = IpAdapterUse(self.style_name, style, pipe, self.models)
        self.compile_warmup_s = warm_up(self, self.loaded, native_size(pipe, row), self.style_name)

    def derive(self, style: Img2ImgStyle) -> Img2ImgEngine:
        """This engine for ``style``, which differs from its own only in ``PER_CALL_FIELDS``: it
        shares the loaded pipeline, LoRAs, control and batch limit, and needs no ``setup``."""
        twin = copy.copy(self)
        twin.style = style
        return twin

    def describe(self) -> dict[str, Any]:
        style = self.style
        row = self.loaded.family if self.loaded else None
        scheduler = scheduler_name(style.scheduler, self.pipe, row) if row else style.scheduler
        return describe(self.engine, self.style_name, style, self.models, self.loaded, self.pipe, scheduler) | {
            "rounds": len(style.rounds), "shared_rounds": style.shared_rounds, "control": self.control.describe(),
        } | ({"refiner": style.refiner.model} if style.refiner is not None else {})

    def _prompts(self, context: ItemContext | None, style: Img2ImgStyle) -> tuple[StylePrompt, StylePrompt | None]:
        """The prompt for CLIP (fitted to 77 tokens) and, for a family with a T5 encoder, for it
        (fitted to the T5's limit: the subject the CLIP prompt had to cut is kept there)."""
        assert self.loaded is not None
        row = self.loaded.family
        prompts: list[StylePrompt | None] = []
        for encoder in (row.prompt_encoder, row.t5):
            if encoder is None:
                prompts.append(None)
                continue
            count, limit = encoder_counter(self.pipe, encoder)
            prompts.append(style_prompt(trigger=style.trigger, negative=style.negative, style_subject=style.prompt,
                                        context=context, count_tokens=count, max_tokens=limit,
                                        fields={"style": self.style_name, "encoder": encoder.kind.value}))
        clip, t5 = prompts
        assert clip is not None
        return clip, t5

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        return self.render_many([image], [context], [self.style])[0]

    def render_many(self, images: Sequence[Image.Image], contexts: Sequence[ItemContext | None],
                    styles: Sequence[Img2ImgStyle]) -> list[list[VariantImage]]:
        """Every variant of several inputs, in input order; input ``j`` runs ``styles[j]``, this
        engine's style or one ``derive``d from it (its own seed, variants, prompt). Inputs of the
        same working size (and without control or IP-Adapter, which steer with one input's
        pictures) run together: each round is one pipeline call over all their variants, each row
        with its own input's prompt and its variant's generator, so an input's noise is what it
        draws alone."""
        assert self.loaded is not None, "setup() first"
        assert len(images) == len(contexts) == len(styles)
        groups: dict[Any, list[int]] = {}
        for j, image in enumerate(images):
            key = self._working_size(image) if not (self.control or self.ip_adapter is not None) else ("alone", j)
            groups.setdefault(key, []).append(j)
        made: list[list[VariantImage]] = [[] for _ in images]
        for members in groups.values():
            made_here = self._render_group([images[j] for j in members], [contexts[j] for j in members],
                                           [styles[j] for j in members])
            for j, variants in zip(members, made_here, strict=True):
                made[j] = variants
        return made

    def _working_size(self, image: Image.Image) -> tuple[int, int]:
        assert self.loaded is not None
        row = self.loaded.family
        return working_size(image.width, image.height, self.style.size or native_size(self.pipe, row),
                            multiple=row.size_multiple)

    def _render_group(self, images: list[Image.Image], contexts: list[ItemContext | None],
                      styles: list[Img2ImgStyle]) -> list[list[VariantImage]]:
        """``render_many`` for inputs of one working size. Rows are input-major: input ``j``'s
        variants ``0 .. V_j - 1``, then the next input's. ``self.style`` says what every call
        shares (model, rounds, steps, size); ``styles[j]`` what input ``j`` has of its own."""
        assert self.loaded is not None
        style, row = self.style, self.loaded.family
        n = len(images)
        native = native_size(self.pipe, row)
        size = self._working_size(images[0])
        resized = [image.convert("RGB").resize(size, Image.Resampling.LANCZOS) for image in images]
        controls = self.control.uses(resized[0]) if self.control else []  # then the group is one input
        control_kwargs = self.control.pipe_kwargs(controls)
        ip_kwargs = self.ip_adapter.pipe_kwargs(contexts[0]) if self.ip_adapter is not None else {}
        prompts = [self._prompts(c, own) for c, own in zip(contexts, styles, strict=True)]
        negatives = [clip.negative.text or None for clip, _ in prompts]
        # Whether any round runs classifier-free guidance: else a negative prompt changes nothing.
        cfg = any(row.guidance.uses_negative(r.guidance) for r in style.rounds)
        # What every call reads besides the image and the prompts: control, IP-Adapter and, on a flow
        # transformer, the size (without it FLUX.1 and SD 3 resize to their default 1024 x 1024).
        fixed: dict[str, Any] = dict(control_kwargs) | ip_kwargs
        t5_used = row.t5 is not None and prompts[0][1] is not None
        if row.denoiser is Denoiser.TRANSFORMER:
            fixed |= {"width": size[0], "height": size[1]}
        if t5_used and row.t5 is not None:
            fixed["max_sequence_length"] = row.t5.max_tokens
        #: Each input's variant seeds, and each row's input and variant seed.
        seeds = [[own.seed + i for i in range(own.variants)] for own in styles]
        row_input = [j for j in range(n) for _ in seeds[j]]
        row_seeds = [seed for mine in seeds for seed in mine]
        rows = len(row_seeds)
        shared = style.shared_rounds
        self.loras.activate(self.pipe)
        vae_tiled = self.vae_tiled = prepare_vae(self.loaded, self.pipe, size, native)
        stage = f"style:{self.style_name}"

        def text(inputs: Sequence[int]) -> dict[str, Any]:
            """The prompts of rows whose inputs are ``inputs`` (no negative list when none has one:
            an empty negative is the pipelines' own default)."""
            any_negative = any(negatives[j] for j in inputs)
            words: dict[str, Any] = {"prompt": [prompts[j][0].prompt.text for j in inputs],
                                     "negative_prompt": [negatives[j] or "" for j in inputs] if any_negative else None}
            if t5_used and row.t5 is not None:
                words[row.t5.prompt_keyword] = [prompts[j][1].prompt.text for j in inputs]  # type: ignore[union-attr]
                if any_negative and cfg:
                    words[row.t5.negative_keyword] = [prompts[j][1].negative.text for j in inputs]  # type: ignore[union-attr]
            return words

        def report(inputs: Sequence[int], **counts: int) -> None:
            for j in dict.fromkeys(inputs):
                if contexts[j] is not None:
                    contexts[j].progress(stage, **counts)  # type: ignore[union-attr]

        def run_round(source: torch.Tensor, k: int, round_seeds: list[int],
                      inputs: list[int]) -> Callable[[int, int], torch.Tensor]:
            rnd = style.rounds[k]
            steps = row.denoising_steps(style.steps, rnd.strength)
            watched = any(c is not None for c in contexts)

            def call(start: int, stop: int) -> torch.Tensor:
                these = inputs[start:stop]
                report(these, round=k + 1, rounds=len(style.rounds), step=0, steps=steps)

                def on_step(pipe: Any, step: int, _timestep: Any, kwargs: dict) -> dict:
                    # Only memory: the claim keeper writes the latest value at its next renewal.
                    report(these, round=k + 1, rounds=len(style.rounds), step=step + 1, steps=steps)
                    return kwargs

                kwargs = text(these) | fixed | {
                    "image": source[start:stop], "strength": rnd.strength, "guidance_scale": rnd.guidance,
                    "num_inference_steps": style.steps, "output_type": "pt",
                    "generator": generators([round_seed(s, k) for s in round_seeds[start:stop]]),
                    "callback_on_step_end": on_step if watched else None}
                if self.ip_adapter is None:
                    return self.pipe(**kwargs).images
                with self.ip_adapter.active(self.pipe):  # in the shared UNet for this call only
                    return self.pipe(**kwargs).images

            return call

        current = torch.cat([to_tensor(r) for r in resized])
        with torch.inference_mode():
            # The shared chain: one image per input; out of memory with one image fails the item.
            for k in range(shared):
                current, _, _ = run_in_batches(
                    n, run_round(current, k, [own.seed for own in styles], list(range(n))), n,
                    style_name=self.style_name,
                    stage="transform",
                    too_small=f"CUDA out of memory in a shared round (one image); lower styles.{self.style_name}.size "
                              "or use a GPU with more memory",
                )
            current = current.repeat_interleave(torch.tensor([len(mine) for mine in seeds]), dim=0)
        halvings = 0
        rows_per_call = self.batches.rows(rows)
        for k in range(shared, len(style.rounds)):
            with torch.inference_mode():
                current, made = self.batches.run(rows, run_round(current, k, row_seeds, row_input))
            halvings += made
            rows_per_call = self.batches.rows(rows)
        refined = None
        if style.refiner is not None:
            current, made = self._refine(current, [prompts[j][0].prompt.text for j in row_input],
                                         [negatives[j] for j in row_input], row_seeds,
                                         lambda rows, **counts: report([row_input[r] for r in rows], **counts))
            halvings += made
            rows_per_call = self.batches.rows(rows)
            refined = style.refiner
            cfg = cfg or refined.guidance > 1
        counted = [row.denoising_steps(style.steps, r.strength) for r in style.rounds]
        if refined is not None:
            counted.append(row.denoising_steps(refined.steps, refined.strength))  # SDXL: the refiner's family
        chain_steps = sum(counted)
        shared_steps = sum(counted[:shared])
        loras = self.loras.record()
        flow = None
        if row.denoiser is Denoiser.TRANSFORMER:
            # FLUX.1 records whether its guidance is an input (dev) or absent (schnell); CFG families not.
            embedded = None if row.guidance is Guidance.CFG else row.guidance is Guidance.DISTILLED
            flow = FlowRecord(family=row.series, guidance_embedded=embedded,
                              max_sequence_length=row.t5.max_tokens if row.t5 is not None else None)
        pictures = iter(to_pil(current))
        results: list[list[VariantImage]] = []
        for j in range(n):
            clip, t5 = prompts[j]
            own = styles[j]
            mine = []
            for i, seed in enumerate(seeds[j]):
                rounds = [RoundRecord(r.strength, r.guidance, counted[k], k < shared,
                                      round_seed(own.seed if k < shared else seed, k))
                          for k, r in enumerate(style.rounds)]
                if refined is not None:
                    k = len(style.rounds)
                    refiner = RefinerRecord(refined.model, self._refiner_revision(),
                                            type(self.refiner_pipe).__name__, refined.steps)
                    rounds.append(RoundRecord(refined.strength, refined.guidance, counted[k], False,
                                              round_seed(seed, k), refiner))
                record = Img2ImgRecord(
                    model=model_record(self.engine, self.style_name, style, self.loaded, self.pipe,
                                       scheduler=scheduler_name(style.scheduler, self.pipe, row), steps=style.steps,
                                       size=size, dtype=self.models.dtype(row), vae_tiled=vae_tiled),
                    prompt=clip, seed=seed, rounds=rounds, shared_rounds=shared, denoising_steps=chain_steps,
                    shared_denoising_steps=shared_steps,
                    denoising_steps_all_variants=shared_steps + own.variants * (chain_steps - shared_steps),
                    batch_size=rows_per_call, oom_halvings=halvings, loras=loras,
                    ip_adapter=self.ip_adapter.record(contexts[j]) if self.ip_adapter is not None else None,
                    flow=flow, negative_used=False if negatives[j] and not cfg else None,
                    t5=T5PromptRecord(t5.prompt, row.t5.max_tokens) if t5 is not None and row.t5 is not None else None,
                    batch_inputs=n)
                mine.append(VariantImage(style=self.style_name, engine=self.engine, index=i, seed=seed,
                                         image=next(pictures), parameters=record.parameters(),
                                         control=list(controls)))
            results.append(mine)
        return results

    def _refiner_revision(self) -> str | None:
        refiner = self.style.refiner
        assert refiner is not None
        return refiner.revision or (self.refiner_resolved.revision if self.refiner_resolved else None)

    def _refine(self, current: torch.Tensor, prompts: list[str], negatives: list[str | None], seeds: list[int],
                report: Callable[..., None]) -> tuple[torch.Tensor, int]:
        """The SDXL refiner as round ``k = len(style.rounds)`` of every variant's chain: the row of
        variant ``i`` draws its noise from ``round_seed(seed + i, k)``; ``report(rows, ...)`` tells
        the rows' inputs."""
        refiner = self.style.refiner
        assert refiner is not None
        k = len(self.style.rounds)
        assert self.loaded is not None
        steps = self.loaded.family.denoising_steps(refiner.steps, refiner.strength)
        any_negative = any(negatives)

        def call(start: int, stop: int) -> torch.Tensor:
            report(range(start, stop), round=k + 1, rounds=k + 1, step=0, steps=steps)
            return self.refiner_pipe(
                prompt=prompts[start:stop],
                negative_prompt=[n or "" for n in negatives[start:stop]] if any_negative else None,
                image=current[start:stop], strength=refiner.strength, guidance_scale=refiner.guidance,
                num_inference_steps=refiner.steps, generator=generators([round_seed(s, k) for s in seeds[start:stop]]),
                output_type="pt").images

        with torch.inference_mode():
            return self.batches.run(len(seeds), call)
