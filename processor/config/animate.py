"""``engine: animate``: the toy brought to life, a short clip from the photo (or from a still
style's variant) by an image-to-video model, and the checks that span styles for it.

Which model family runs (Stable Video Diffusion, Wan 2.x image-to-video, LTX-Video) is read from
the model's ``model_index.json`` at start (``processor.models.families``); so is which keys it
takes. The keys every family takes are here with their bounds; a family's own knobs default to
None, meaning the family's default (its ``VideoTraits.defaults``), and a knob the family does not
take is refused at start naming the key (``processor.pipeline.animate``). The clip's frames,
working size and SVD's ``decode_chunk_size`` are bounded again by ``pipeline.video``
(``animate_problem``), which a sidecar's ``frames`` must fit as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from processor.config.base import MAX_FRAMES, FrameCount, FramesPerSecond, PromptText, VariantCount
from processor.config.styles import ChainVariants, DiffusionStyle, ImageSource, StyleBase

#: Scheduler steps of a clip when the style sets none (SVD's and LTX's examples use 25 to 50).
DEFAULT_ANIMATE_STEPS = 25
#: Clips per input and style when the style sets none: each is many images' worth of denoising.
DEFAULT_ANIMATE_VARIANTS = 1


class AnimateStyle(DiffusionStyle):
    """A clip of ``frames`` frames at ``fps`` from the photo, or from the first (or every) variant
    of the still style ``image_from``, by an image-to-video model."""

    engine: Literal["animate"] = "animate"
    variants: VariantCount = DEFAULT_ANIMATE_VARIANTS
    #: Frames of each clip; default the model's own (SVD 14, SVD-XT 25, Wan 81, Wan 2.2 TI2V and
    #: LTX-Video 121). Wan takes 4k + 1, LTX-Video 8k + 1.
    frames: FrameCount | None = None
    #: Frames per second of the MP4; default the family's (SVD 7, Wan 16, Wan 2.2 TI2V 24, LTX 25).
    #: SVD and LTX-Video are told it (their motion follows it); Wan is not.
    fps: FramesPerSecond | None = None
    steps: int = Field(default=DEFAULT_ANIMATE_STEPS, ge=1, le=500)
    #: Wan, LTX-Video: words appended to the prompt (the caption path of img2img).
    trigger: str = ""
    #: Wan, LTX-Video: the subject when an input has neither a per-image prompt nor a caption.
    prompt: PromptText | None = None
    #: Wan, LTX-Video: the negative prompt of their classifier-free guidance. SVD reads no text:
    #: there it (or a sidecar's) is recorded unused.
    negative: PromptText = ""
    #: Wan, LTX-Video: classifier-free guidance (default Wan 5.0, LTX 3.0; 1 or less: off).
    guidance: float | None = Field(default=None, ge=0)
    #: SVD: how much the toy moves (default 127; the model saw 0-255).
    motion_bucket_id: int | None = Field(default=None, ge=0, le=255)
    #: SVD: noise added to the photo's latent (default 0.02; more: freer motion, less likeness).
    noise_aug_strength: float | None = Field(default=None, ge=0, le=1)
    #: SVD: guidance ramped from ``min_guidance`` on the first frame to ``max_guidance`` on the last
    #: (defaults 1.0 and 3.0).
    min_guidance: float | None = Field(default=None, ge=0)
    max_guidance: float | None = Field(default=None, ge=0)
    #: SVD: frames its VAE decodes at once (default 8): lower saves GPU memory, costs time.
    decode_chunk_size: int | None = Field(default=None, ge=1, le=MAX_FRAMES)
    #: LTX-Video 0.9.1+: the timestep of its timestep-conditioned VAE decode (default 0.0; 0.03 the
    #: card's) and its noise (default: the timestep).
    decode_timestep: float | None = Field(default=None, ge=0, le=1)
    decode_noise_scale: float | None = Field(default=None, ge=0, le=1)
    #: A still style (img2img, txt2img, edit, instruct-pix2pix, toon) whose variant is animated
    #: instead of the photo; it runs first for every input of this style, in the same pass.
    image_from: str | None = None
    #: ``first``: its first variant; ``all``: each of its variants, ``variants`` clips apiece.
    image_from_variants: ChainVariants = "first"
    #: This model's own offload (``none``, ``model``, ``sequential``), instead of
    #: ``models.performance.offload``: a 14B video model on a GPU smaller than it while the worker's
    #: image models stay on the GPU. None: the worker's setting.
    offload: Literal["none", "model", "sequential"] | None = None
    #: This model's VAE tiling (``auto``, ``on``, ``off``) instead of ``models.performance.vae_tiling``.
    vae_tiling: Literal["auto", "on", "off"] | None = None

    def image_source(self) -> ImageSource | None:
        return ImageSource(self.image_from, self.image_from_variants) if self.image_from else None

    def takes_prompt(self) -> bool:
        """A clip's prompt is built from the caption like img2img's when the style has trigger words
        or a prompt (the families that read text); an SVD style has neither, and no caption runs for it."""
        return bool(self.trigger.strip()) or self.prompt is not None

    @model_validator(mode="after")
    def _ordered_guidance(self) -> AnimateStyle:
        if self.min_guidance is not None and self.max_guidance is not None and self.min_guidance > self.max_guidance:
            raise ValueError(f"min_guidance {self.min_guidance} is above max_guidance {self.max_guidance}; the "
                             "guidance ramps up from min_guidance on the first frame to max_guidance on the last")
        if self.image_from_variants == "all" and self.image_from is None:
            raise ValueError("image_from_variants: all needs image_from (the still style whose variants to animate)")
        return self


def animate_problem(styles: Mapping[str, StyleBase], video: Any) -> str | None:
    """What is wrong with the animate styles among ``styles`` under ``pipeline.video`` (``video``):
    an ``image_from`` naming no style, itself, or another animate style; frames, size or
    ``decode_chunk_size`` over their limits. None: nothing. The text starts with the key."""
    for name, style in styles.items():
        if not isinstance(style, AnimateStyle):
            continue
        key = f"styles.{name}"
        if style.image_from is not None:
            source = styles.get(style.image_from)
            if source is None:
                known = ", ".join(sorted(n for n, s in styles.items() if not isinstance(s, AnimateStyle))) or "none"
                return (f"{key}.image_from names {style.image_from!r}, which is not defined under styles; name a "
                        f"still style (defined: {known})")
            if isinstance(source, AnimateStyle):
                return (f"{key}.image_from names {style.image_from!r}, an animate style; image_from names a still "
                        f"style (engine img2img, txt2img, edit, instruct-pix2pix or toon), whose variant is animated")
        for field, value, limit, limit_key in (
                ("frames", style.frames, video.max_frames, "max_frames"),
                ("size", style.size, video.max_size, "max_size"),
                ("decode_chunk_size", style.decode_chunk_size, video.max_decode_chunk_size, "max_decode_chunk_size")):
            if value is not None and value > limit:
                return (f"{key}.{field} {value} is over pipeline.video.{limit_key} ({limit}); lower it, or raise "
                        f"the limit")
    return None
