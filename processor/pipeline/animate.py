"""``engine: animate``: the toy brought to life, one short clip per variant from an image-to-video
model (Stable Video Diffusion, Wan 2.x image-to-video, LTX-Video; ``processor.models.families``
reads which from the model's ``model_index.json``).

At start (``setup``), before the weights load where it can: the model must be an image-to-video
family; every key the style sets must be one the family takes (SVD reads no text, Wan and LTX
have no motion bucket: ``VideoKnob``), else ``ConfigError`` naming the key; a family published
under a non-commercial licence (SVD) must be declared so (``license: non-commercial``, which
``run.allow_noncommercial`` gates); PyAV must be installed. Then the clip's shape: ``frames``
(default the model's own), ``fps`` (the family's) and the working long side ``size`` (the family's
native) must fit the family (Wan clips are 4k + 1 frames, LTX 8k + 1; sides of its multiple) and
``pipeline.video``'s limits.

Per input, top to bottom (``__call__``):

1. Source: the photo, or (``image_from``) the first or every variant the still style made for this
   input (``ItemContext.made``; ``render`` runs that style first).
2. Size: the source's aspect ratio, long side ``size``, sides of the family's multiple (always
   even: H.264 4:2:0 halves them).
3. Prompt (Wan, LTX): the caption path of img2img, fitted to the family's T5 limit
   (``processor.pipeline.prompt``). SVD reads none; a negative prompt is then recorded unused.
4. One pipeline call per clip, clip ``k`` (source ``j``, variant ``i``: ``k = j * variants + i``)
   seeded ``seed + k`` on a CPU generator, frames returned as tensors in [0, 1].
5. Record (``AnimateRecord``): family, frames, fps, duration, size, seed, the motion settings as they
   ran, the source picture, and the denoiser calls and samples the clip cost (SVD and LTX batch
   the negative sample into the same call; Wan calls twice per step).

The frames leave as ``VariantImage.video``; ``processor.pipeline.outputs`` writes the MP4 and the
animated WebP preview.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from processor.config import AnimateStyle, PerformanceSettings, VideoSettings
from processor.config.base import NONCOMMERCIAL_LICENSES
from processor.errors import ConfigError, StageFailed
from processor.models.families import (
    CfgCalls,
    Family,
    FamilyMatch,
    FrameSource,
    Task,
    VideoKind,
    VideoKnob,
    VideoTraits,
)
from processor.models.loader import ModelLoader
from processor.models.pipelines import task_problem
from processor.pipeline import video_encode
from processor.pipeline.base import ClipSource, ItemContext, VariantImage, VideoFrames
from processor.pipeline.diffusion import LoadedModel, describe, model_record, prepare_vae, warm_up
from processor.pipeline.prompt import StylePrompt, encoder_counter, style_prompt
from processor.pipeline.provenance import AnimateRecord
from processor.pipeline.sampling import generators, run_in_batches, to_pil, working_size

#: The style keys each knob stands for (``prompt`` covers the trigger words too).
KNOB_KEYS: dict[VideoKnob, tuple[str, ...]] = {knob: (knob.value,) for knob in VideoKnob} | {
    VideoKnob.PROMPT: ("prompt", "trigger")}


def frames_problem(frames: int, traits: VideoTraits, label: str) -> str | None:
    """Why ``frames`` does not fit a family whose clips are ``k * frame_step + 1`` long, or None."""
    step = traits.frame_step
    if (frames - 1) % step == 0:
        return None
    below = (frames - 1) // step * step + 1
    fits = [n for n in (below, below + step) if n >= 2]
    return (f"{frames} frames do not fit {label}, whose clips are {step}k + 1 frames long: use "
            f"{' or '.join(str(n) for n in fits)}")


class AnimateEngine:
    """Clips from an image-to-video model (see the module docstring)."""

    engine = "animate"

    def __init__(self, style_name: str, style: AnimateStyle, models: ModelLoader,
                 video: VideoSettings | None = None) -> None:
        self.style_name = style_name
        self.style = style
        self.models = models
        #: ``pipeline.video``: the limits the family's defaults must fit too.
        self.video = video or VideoSettings()
        self.loaded: LoadedModel | None = None
        self.pipe: Any = None
        #: The clip's shape, decided in ``setup``: frames, fps and the working long side.
        self.frames = 0
        self.fps = 0
        self.long_side = 0
        #: The family's knobs as they run (the style's values, else the family's defaults).
        self.motion: dict[str, Any] = {}
        self.compile_warmup_s: float | None = None

    @property
    def switches(self) -> dict[str, Any]:
        return self.loaded.switches if self.loaded else {}

    def _key(self, key: str) -> str:
        return f"styles.{self.style_name}.{key}"

    def _asked(self) -> dict[str, Any]:
        """The family-dependent keys the style set (None / empty: not set)."""
        style = self.style
        return {"prompt": style.prompt, "trigger": style.trigger.strip() or None, "guidance": style.guidance,
                "motion_bucket_id": style.motion_bucket_id, "noise_aug_strength": style.noise_aug_strength,
                "min_guidance": style.min_guidance, "max_guidance": style.max_guidance,
                "decode_chunk_size": style.decode_chunk_size, "decode_timestep": style.decode_timestep,
                "decode_noise_scale": style.decode_noise_scale}

    def _performance(self) -> PerformanceSettings | None:
        """This model's own offload / VAE tiling (the style's), or None: the worker's."""
        changes = {k: v for k, v in (("offload", self.style.offload), ("vae_tiling", self.style.vae_tiling))
                   if v is not None}
        return self.models.settings.performance.model_copy(update=changes) if changes else None

    def _check_family(self, found: FamilyMatch) -> VideoTraits:
        """The family's video traits, after refusing what it does not run (see the module docstring)."""
        style, row = self.style, found.family
        if row.video is None or Task.VIDEO not in row.pipelines:
            raise ConfigError(f"{self._key('model')}: " + task_problem(Task.VIDEO, style.model, found))
        traits = row.video
        asked = self._asked()
        for knob, keys in KNOB_KEYS.items():
            for key in keys:
                if knob not in traits.knobs and asked[key] is not None:
                    takes = sorted(k for kn in traits.knobs for k in KNOB_KEYS[kn])
                    raise ConfigError(f"{self._key(key)}: model {style.model!r} is {row.label}, which takes no {key}; "
                                      f"drop {key} (its own keys: {', '.join(takes) or 'none'})")
        if traits.published_license in NONCOMMERCIAL_LICENSES and style.license not in NONCOMMERCIAL_LICENSES:
            raise ConfigError(f"{self._key('license')}: model {style.model!r} is {row.label}, whose published weights "
                              "are under a non-commercial licence; declare license: non-commercial (and set "
                              "run.allow_noncommercial: true if your use is non-commercial), or pick another model")
        return traits

    def _check_shape(self, row: Family, traits: VideoTraits, native_frames: int) -> None:
        """Frames, fps and the working long side: the style's or the family's, fitting both."""
        style, video = self.style, self.video
        self.frames = style.frames or native_frames
        self.fps = style.fps or traits.fps
        self.long_side = style.size or row.native_size
        unset = "" if style.frames else f" (unset: {row.label}'s default)"
        if self.frames > video.max_frames:
            raise ConfigError(f"{self._key('frames')}: {self.frames}{unset} is over pipeline.video.max_frames "
                              f"({video.max_frames}); set frames lower, or raise the limit")
        problem = frames_problem(self.frames, traits, row.label)
        if problem:
            raise ConfigError(f"{self._key('frames')}: {problem}")
        if self.long_side > video.max_size:
            native = "" if style.size else " (unset: the native size)"
            raise ConfigError(f"{self._key('size')}: {self.long_side}{native} is over pipeline.video.max_size "
                              f"({video.max_size}); set size lower, or raise the limit")
        if self.long_side % row.size_multiple:
            raise ConfigError(f"{self._key('size')}: {self.long_side} must be a multiple of {row.size_multiple} for "
                              f"{row.label} (its VAE and patch sizes)")

    def _resolve_motion(self, traits: VideoTraits) -> dict[str, Any]:
        asked = self._asked()
        motion: dict[str, Any] = {}
        for knob in sorted(traits.knobs - {VideoKnob.PROMPT}, key=list(VideoKnob).index):
            value = asked[knob.value]
            motion[knob.value] = value if value is not None else traits.defaults.get(knob)
        if VideoKnob.DECODE_NOISE_SCALE in traits.knobs and motion["decode_noise_scale"] is None:
            motion["decode_noise_scale"] = motion["decode_timestep"]  # the pipeline's own rule
        chunk = motion.get("decode_chunk_size")
        if chunk is not None and chunk > self.video.max_decode_chunk_size:
            raise ConfigError(f"{self._key('decode_chunk_size')}: {chunk} is over "
                              f"pipeline.video.max_decode_chunk_size ({self.video.max_decode_chunk_size})")
        return motion

    def setup(self) -> None:
        style = self.style
        video_encode.require()  # before any weights load: a worker that cannot write MP4s stops at start
        found = self.models.family(style.model, style.revision)
        row = found.family
        traits = self._check_family(found)
        if traits.frames_from is FrameSource.TABLE:
            self._check_shape(row, traits, traits.frames)
        performance = self._performance()
        pipe, resolved = self.models.pipeline(Task.VIDEO, style.model, style.revision, performance=performance)
        if traits.frames_from is FrameSource.UNET_CONFIG:
            self._check_shape(row, traits, int(pipe.unet.config.num_frames))
        self.motion = self._resolve_motion(traits)
        self.pipe = pipe
        self.loaded = LoadedModel(pipe, resolved, row, found.class_name,
                                  self.models.switches(style.model, style.revision, performance=performance))
        # A compiled UNet (SVD) compiles on its first call: now, on a blank photo.
        self.compile_warmup_s = warm_up(lambda picture: self._render([(picture, ClipSource())], None), self.loaded,
                                        self.long_side, self.style_name)

    def describe(self) -> dict[str, Any]:
        scheduler = type(self.pipe.scheduler).__name__ if self.pipe is not None else None
        return describe(self.engine, self.style_name, self.style, self.models, self.loaded, self.pipe, scheduler) | {
            "frames": self.frames or None, "fps": self.fps or None, "image_from": self.style.image_from}

    def __call__(self, image: Image.Image, context: ItemContext | None = None) -> list[VariantImage]:
        return self._render(self._sources(image, context), context)

    def _sources(self, image: Image.Image, context: ItemContext | None) -> list[tuple[Image.Image, ClipSource]]:
        """The pictures to animate: the photo, or the still style's variants (``image_from``)."""
        source = self.style.image_source()
        if source is None:
            return [(image, ClipSource())]
        made = context.made.get(source.style) if context is not None else None
        if not made:
            raise StageFailed(f"style {self.style_name!r} animates the variants of style {source.style!r} "
                              "(image_from), and that style made none for this input")
        chosen = made[:1] if source.variants == "first" else made
        return [(v.image, ClipSource("variant", v.style, v.index, v.seed)) for v in chosen]

    def _prompt(self, traits: VideoTraits, context: ItemContext | None) -> StylePrompt | None:
        """The prompt of a family that reads text, fitted to its T5; None for SVD."""
        if VideoKnob.PROMPT not in traits.knobs or self.loaded is None:
            return None
        row, style = self.loaded.family, self.style
        count, limit = encoder_counter(self.pipe, row.prompt_encoder)
        return style_prompt(trigger=style.trigger, negative=style.negative, style_subject=style.prompt,
                            context=context, count_tokens=count, max_tokens=limit,
                            fields={"style": self.style_name, "encoder": row.prompt_encoder.kind.value})

    def _guided(self, traits: VideoTraits) -> bool:
        """Whether classifier-free guidance runs (a second sample per step)."""
        if traits.kind is VideoKind.SVD:
            return float(self.motion["max_guidance"]) > 1
        return float(self.motion["guidance"]) > 1

    def _call_kwargs(self, traits: VideoTraits, picture: Image.Image, size: tuple[int, int],
                     prompt: StylePrompt | None) -> dict[str, Any]:
        """The family's own pipeline keywords for one clip."""
        m = self.motion
        common = {"image": picture, "width": size[0], "height": size[1], "num_frames": self.frames,
                  "num_inference_steps": self.style.steps, "output_type": "pt"}
        if traits.kind is VideoKind.SVD:
            return common | {"fps": self.fps, "motion_bucket_id": m["motion_bucket_id"],
                             "noise_aug_strength": m["noise_aug_strength"], "min_guidance_scale": m["min_guidance"],
                             "max_guidance_scale": m["max_guidance"], "decode_chunk_size": m["decode_chunk_size"]}
        assert prompt is not None and self.loaded is not None
        text = {"prompt": prompt.prompt.text, "negative_prompt": prompt.negative.text or None,
                "guidance_scale": m["guidance"], "max_sequence_length": self.loaded.family.prompt_encoder.max_tokens}
        if traits.kind is VideoKind.LTX:
            return common | text | {"frame_rate": self.fps, "decode_timestep": m["decode_timestep"],
                                    "decode_noise_scale": m["decode_noise_scale"]}
        return common | text

    def _render(self, sources: list[tuple[Image.Image, ClipSource]], context: ItemContext | None) -> list[VariantImage]:
        assert self.loaded is not None and self.loaded.family.video is not None, "setup() first"
        style, row, traits = self.style, self.loaded.family, self.loaded.family.video
        prompt = self._prompt(traits, context)
        guided = self._guided(traits)
        steps = style.steps
        calls = steps * (2 if guided and traits.cfg_calls is CfgCalls.SEPARATE else 1)
        negative_given = bool((prompt.negative.text if prompt is not None else style.negative).strip())
        stage, total = f"style:{self.style_name}", len(sources) * style.variants
        results: list[VariantImage] = []
        for j, (picture, source) in enumerate(sources):
            size = working_size(picture.width, picture.height, self.long_side, multiple=row.size_multiple)
            resized = picture.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            kwargs = self._call_kwargs(traits, resized, size, prompt)
            vae_tiled = prepare_vae(self.loaded, self.pipe, size, row.native_size)
            for i in range(style.variants):
                k = j * style.variants + i
                seed = style.seed + k
                frames = self._clip(kwargs, seed, context, stage, k, total)
                record = AnimateRecord(
                    model=model_record(self.engine, self.style_name, style, self.loaded, self.pipe,
                                       scheduler=type(self.pipe.scheduler).__name__, steps=steps, size=size,
                                       dtype=self.models.dtype(row), vae_tiled=vae_tiled),
                    family=row.id.value, seed=seed, frames=len(frames), fps=self.fps,
                    duration_s=round(len(frames) / self.fps, 4), fps_conditioned=traits.fps_input,
                    motion=dict(self.motion), source=_source_record(source), denoiser_calls=calls,
                    denoiser_evaluations=steps * (2 if guided else 1), prompt=prompt,
                    negative_used=False if negative_given and (prompt is None or not guided) else None)
                results.append(VariantImage(style=self.style_name, engine=self.engine, index=k, seed=seed,
                                            image=frames[0], parameters=record.parameters(),
                                            video=VideoFrames(frames, self.fps, source)))
        return results

    def _clip(self, kwargs: dict[str, Any], seed: int, context: ItemContext | None, stage: str, k: int,
              total: int) -> list[Image.Image]:
        """One clip's frames (clip ``k`` of ``total`` for the progress reports)."""
        steps = self.style.steps

        def on_step(pipe: Any, step: int, _timestep: Any, callback_kwargs: dict) -> dict:
            if context is not None:  # only memory: the claim keeper publishes the latest at its renewal
                context.progress(stage, round=k + 1, rounds=total, step=step + 1, steps=steps)
            return callback_kwargs

        def call(start: int, stop: int) -> torch.Tensor:
            if context is not None:
                context.progress(stage, round=k + 1, rounds=total, step=0, steps=steps)
            return self.pipe(**kwargs, generator=generators([seed]),
                             callback_on_step_end=on_step if context is not None else None).frames

        with torch.inference_mode():
            out, _, _ = run_in_batches(
                1, call, 1, style_name=self.style_name, stage="animate",
                too_small=f"CUDA out of memory on one clip; lower styles.{self.style_name}.frames or .size, "
                          f"set .offload: model, or use a GPU with more memory")
        return to_pil(out[0])


def _source_record(source: ClipSource) -> dict[str, Any]:
    if source.kind == "photo":
        return {"kind": "photo"}
    return {"kind": source.kind, "style": source.style, "index": source.index, "seed": source.seed}
