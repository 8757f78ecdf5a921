"""The style sections (``styles.<name>``): one engine each, one base for the diffusion styles,
and the checks that span a style.

A style answers what it runs through typed methods, never by attribute probing: ``addons()`` (the
add-on keys it has set: LoRA, LCM, ControlNets, IP-Adapter, refiner, turbo), ``weights()`` (every
model it loads, with its role: licences, ``models pull``) and ``background_ref()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from processor.config.addons import (
    MAX_LCM_GUIDANCE,
    BackgroundSettings,
    ControlSettings,
    IpAdapterSettings,
    LcmSettings,
    LoraSettings,
    RefinerSettings,
    SchedulerName,
    one_or_many,
)
from processor.config.base import ModelRef, ModelReference, PromptText, Section, Seed, VariantCount
from processor.names import is_plain_path


class StyleOption(str, Enum):
    """The add-on keys of a style that only some model families run (``processor.models.families``
    says which); the value is the key as written under ``styles.<name>``."""

    LORA = "lora"
    LCM = "lcm"
    CONTROL = "control"
    IP_ADAPTER = "ip_adapter"
    REFINER = "refiner"
    TURBO = "turbo"


#: ``image_from_variants``: animate a still style's first variant, or each of them.
ChainVariants = Literal["first", "all"]


@dataclass(frozen=True)
class ImageSource:
    """The still style whose variants a style animates instead of the photo (``image_from``)."""

    style: str
    variants: ChainVariants = "first"


#: What a model is to the style that runs it (``processor.manifest.LicenseRecord.role``).
WeightsRole = Literal["model", "refiner", "lora", "lcm", "control", "ip_adapter", "background"]


@dataclass(frozen=True)
class WeightsUse:
    """One model a style loads, and what it is to the style."""

    role: WeightsRole
    ref: ModelRef


@dataclass(frozen=True)
class StyleAddons:
    """The add-ons a style has set (none unset: every style type answers the same shape)."""

    lora: LoraSettings | None = None
    lcm: LcmSettings | None = None
    control: tuple[ControlSettings, ...] = ()
    ip_adapter: IpAdapterSettings | None = None
    #: The picture the IP-Adapter reads (None: each input brings its own).
    style_image: str | None = None
    refiner: RefinerSettings | None = None
    turbo: bool = False

    def options(self) -> list[StyleOption]:
        """The family-dependent keys set, in the order the style reference lists them."""
        used = {StyleOption.LORA: self.lora is not None, StyleOption.LCM: self.lcm is not None,
                StyleOption.CONTROL: bool(self.control), StyleOption.IP_ADAPTER: self.ip_adapter is not None,
                StyleOption.REFINER: self.refiner is not None, StyleOption.TURBO: self.turbo}
        return [option for option, on in used.items() if on]


#: The instruct-pix2pix checkpoint a background ``instruct`` uses when neither it nor its style names one.
DEFAULT_INSTRUCT_MODEL = "timbrooks/instruct-pix2pix"


class StyleBase(Section):
    """What every style has and answers, whatever its engine."""

    #: Background modes that run on the style's own model when ``background.model`` is not set.
    BACKGROUND_ON_OWN_MODEL: ClassVar[frozenset[str]] = frozenset()

    variants: VariantCount = 4
    #: Variant i uses seed + i.
    seed: Seed = 0

    def diffusion_model(self) -> ModelRef | None:
        """The style's own diffusion model (None: the toon filter has none)."""
        return None

    def background_settings(self) -> BackgroundSettings | None:
        """``background`` (None: this style type has no background stage)."""
        return None

    def addons(self) -> StyleAddons:
        return StyleAddons()

    def image_source(self) -> ImageSource | None:
        """The still style this style starts from instead of the photo (None: the photo)."""
        return None

    def takes_prompt(self) -> bool:
        """Whether the style builds a prompt from a caption (it has trigger words: img2img, txt2img)."""
        return "trigger" in type(self).model_fields

    def background_ref(self) -> ModelRef | None:
        """The model the background runs on, or None when the style has no background.

        ``background.model`` when set; else the style's own model (shared weights) when it fits the
        mode (``BACKGROUND_ON_OWN_MODEL``); else ``DEFAULT_INSTRUCT_MODEL`` for ``instruct``. The
        licence is ``background.license``, else the style's own when the background runs on its model.
        """
        bg = self.background_settings()
        if bg is None or bg.mode == "none":
            return None
        own = self.diffusion_model()
        if bg.model:
            model, revision = bg.model, bg.revision
        elif own is not None and bg.mode in self.BACKGROUND_ON_OWN_MODEL:
            model, revision = own.model, own.revision
        elif bg.mode == "instruct":
            model, revision = DEFAULT_INSTRUCT_MODEL, None
        else:
            raise ValueError(f"background mode {bg.mode!r} needs background.model")
        declared: str | None = bg.license
        if declared is None and own is not None and (model, revision) == (own.model, own.revision):
            declared = own.license  # the background runs on the style's own weights
        return ModelRef(model, revision, declared)

    def weights(self) -> list[WeightsUse]:
        """Every model the style loads, in order: its model, refiner, LoRA, LCM-LoRA, ControlNets
        or T2I-Adapters and their preprocessors, IP-Adapter, background. The toon filter loads none
        but a background's."""
        uses: list[WeightsUse] = []
        own = self.diffusion_model()
        if own is not None:
            uses.append(WeightsUse("model", own))
        addons = self.addons()
        if addons.refiner is not None:
            uses.append(WeightsUse("refiner", addons.refiner.ref))
        if addons.lora is not None:
            uses.append(WeightsUse("lora", addons.lora.ref))
        if addons.lcm is not None:
            uses.append(WeightsUse("lcm", addons.lcm.ref))
        for control in addons.control:
            uses.append(WeightsUse("control", control.ref))
            if control.preprocessor is not None:  # the model that makes the ControlNet's map
                uses.append(WeightsUse("control", control.preprocessor.ref))
        if addons.ip_adapter is not None:
            uses.append(WeightsUse("ip_adapter", addons.ip_adapter.ref))
        background = self.background_ref()
        if background is not None:
            uses.append(WeightsUse("background", background))
        return uses


class ToonStyle(StyleBase):
    """Classical OpenCV cartoon: edge-preserving smoothing, colour quantisation, bold edges."""

    engine: Literal["toon"] = "toon"
    #: Variant i uses seed + i; the seed picks its colour count, smoothing and edge weight.
    seed: Seed = 0
    #: Pixels: the image is processed at most this long on its long side (then kept at that size).
    max_side: int = Field(default=1024, ge=64)
    #: Colour levels the variants draw from (k-means clusters).
    colors: tuple[int, int] = (6, 14)
    #: Bilateral smoothing passes the variants draw from.
    smoothing: tuple[int, int] = (1, 4)
    #: Edge line thickness (pixels) the variants draw from.
    edge_width: tuple[int, int] = (1, 3)
    background: BackgroundSettings = BackgroundSettings()

    def background_settings(self) -> BackgroundSettings:
        return self.background

    @model_validator(mode="after")
    def _background_needs_a_model(self) -> ToonStyle:
        if self.background.mode == "generate" and not self.background.model:
            raise ValueError("background.model is required for mode 'generate' on a toon style "
                             "(it has no diffusion model to share)")
        return self

    @field_validator("colors", "smoothing", "edge_width")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        lo, hi = value
        if lo < 1 or hi < lo:
            raise ValueError("a range is [low, high] with 1 <= low <= high")
        return value


class DiffusionStyle(StyleBase, ModelReference):
    """The base of every diffusion style: its model (``model``, ``revision``, ``license``: a hub id
    such as ``nitrosocke/mo-di-diffusion`` or a local diffusers folder with ``model_index.json``),
    variants, seed and working size."""

    #: Pixels: ``size`` is a multiple of this (the VAE factor; flow transformers: 16), and why.
    SIZE_MULTIPLE: ClassVar[int] = 8
    SIZE_REASON: ClassVar[str] = ""

    #: Pixels: the working long side; default the model's native resolution (512 for SD 1.x, 768
    #: for SD 2.x-v, 1024 for SDXL, FLUX.1, SD 3 and the editors).
    size: int | None = Field(default=None, ge=64, le=4096)

    def diffusion_model(self) -> ModelRef:
        return self.ref

    @field_validator("size")
    @classmethod
    def _size_multiple(cls, value: int | None) -> int | None:
        if value is not None and value % cls.SIZE_MULTIPLE:
            raise ValueError(f"size {value} must be a multiple of {cls.SIZE_MULTIPLE}{cls.SIZE_REASON}")
        return value


class DiffusionRound(Section):
    """One img2img pass; round k starts from round k-1's output."""

    #: 0-1: how much of the image is re-noised (a UNet model denoises int(steps * strength) steps,
    #: a flow transformer steps - int(steps - steps * strength): ``processor.models.families``).
    strength: float = Field(gt=0, le=1)
    #: Classifier-free guidance scale (CFG).
    guidance: float = Field(default=7.5, ge=0)


#: Scheduler steps a turbo (adversarially distilled: SD-Turbo, SDXL-Turbo) style may take per round.
MAX_TURBO_STEPS = 4


class Img2ImgStyle(DiffusionStyle):
    """img2img in one or more rounds, on any family the model is (SD 1.x / 2.x, SDXL, FLUX.1, SD 3;
    ``processor.models.families`` reads it from the model)."""

    BACKGROUND_ON_OWN_MODEL: ClassVar[frozenset[str]] = frozenset({"generate"})

    engine: Literal["img2img"] = "img2img"
    #: Style words appended to the prompt.
    trigger: str = ""
    #: The subject before the trigger words when an input has neither a per-image prompt (sidecar
    #: ``prompt``, ``x-amz-meta-prompt``) nor a caption (``caption.mode``).
    prompt: PromptText | None = None
    negative: PromptText = ""
    rounds: list[DiffusionRound] = Field(default_factory=lambda: [DiffusionRound(strength=0.6)], min_length=1)
    #: Scheduler steps per round; a round denoises int(steps * strength) of them (a UNet model).
    steps: int = Field(default=30, ge=1, le=500)
    scheduler: SchedulerName = "dpmpp-2m-karras"
    #: The first N rounds run once, as one chain seeded with ``seed``; only the remaining rounds
    #: run per variant, starting from that shared image (the notebook's cost profile: less UNet
    #: work, variants less different from each other). 0: every variant runs its own chain.
    shared_rounds: int = Field(default=0, ge=0)
    lora: LoraSettings | None = None
    #: ControlNets that keep the input's structure (one mapping, or a list for several).
    control: list[ControlSettings] = Field(default_factory=list)
    #: Few-step sampling with an LCM-LoRA (sets ``scheduler: lcm``).
    lcm: LcmSettings | None = None
    #: SDXL only: a refiner run as the last round (``RefinerSettings``).
    refiner: RefinerSettings | None = None
    #: A turbo model (SD-Turbo, SDXL-Turbo): 1-4 steps at guidance 0 on trailing timesteps
    #: (scheduler default euler-a).
    turbo: bool = False
    #: A picture of the look wanted: a local path or ``bucket:<key>`` in the configured store,
    #: decoded like an input at start; it steers every round through ``ip_adapter``. An input's
    #: own picture (its sidecar's ``style_image``) replaces it for that input; without one here,
    #: every input of the style must bring its own.
    style_image: str | None = None
    ip_adapter: IpAdapterSettings | None = None
    background: BackgroundSettings = BackgroundSettings()

    def background_settings(self) -> BackgroundSettings:
        return self.background

    def addons(self) -> StyleAddons:
        return StyleAddons(lora=self.lora, lcm=self.lcm, control=tuple(self.control), ip_adapter=self.ip_adapter,
                           style_image=self.style_image, refiner=self.refiner, turbo=self.turbo)

    @field_validator("control", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return one_or_many(value)

    @model_validator(mode="after")
    def _every_round_denoises(self) -> Img2ImgStyle:
        # The UNet rule, the stricter of the two (a flow transformer denoises at least as many
        # steps): the family is known only once the model is read, so a style that passes here
        # denoises on every family.
        for i, r in enumerate(self.rounds):
            if int(self.steps * r.strength) < 1:
                raise ValueError(
                    f"rounds[{i}]: strength {r.strength} with steps {self.steps} gives 0 denoising steps; "
                    f"raise steps or strength"
                )
        return self

    @model_validator(mode="after")
    def _lcm_sampling(self) -> Img2ImgStyle:
        if self.lcm is None:
            return self
        self.scheduler = "lcm"  # the LoRA is distilled for the LCM sampler; any other gives noise
        for i, r in enumerate(self.rounds):
            if r.guidance > MAX_LCM_GUIDANCE:
                raise ValueError(f"rounds[{i}]: guidance {r.guidance} is too high for lcm (trained for 1-2; "
                                 f"at most {MAX_LCM_GUIDANCE}); lower it, or drop lcm")
        return self

    @model_validator(mode="after")
    def _turbo_sampling(self) -> Img2ImgStyle:
        if not self.turbo:
            return self
        if self.lcm is not None:
            raise ValueError("turbo and lcm are two few-step methods; a style uses one (drop lcm or turbo)")
        if self.refiner is not None:
            raise ValueError("turbo models are distilled to finish in 1-4 steps; drop the refiner or turbo")
        if self.steps > MAX_TURBO_STEPS:
            raise ValueError(f"steps {self.steps} is too many for turbo (distilled for 1-{MAX_TURBO_STEPS}); "
                             f"set steps to at most {MAX_TURBO_STEPS}")
        if "scheduler" not in self.model_fields_set:
            self.scheduler = "euler-a"  # what SD-Turbo / SDXL-Turbo ship; Karras sigmas misplace 1-4 steps
        for i, r in enumerate(self.rounds):
            if r.guidance != 0:
                raise ValueError(f"rounds[{i}]: guidance {r.guidance} for turbo; turbo models are distilled "
                                 f"without classifier-free guidance: set guidance: 0")
        return self

    @model_validator(mode="after")
    def _style_image_and_adapter(self) -> Img2ImgStyle:
        # ip_adapter alone is allowed: each input then brings its own picture (sidecar style_image).
        if self.style_image is not None and self.ip_adapter is None:
            raise ValueError("style_image needs ip_adapter (the model that reads it); add ip_adapter or drop "
                             "style_image")
        if self.style_image is not None:
            style_image_problem(self.style_image)
        return self

    @model_validator(mode="after")
    def _a_round_per_variant(self) -> Img2ImgStyle:
        if self.shared_rounds >= len(self.rounds):
            raise ValueError(
                f"shared_rounds {self.shared_rounds} must be less than the number of rounds ({len(self.rounds)}): "
                f"at least the last round runs per variant, or every variant would be the same image; "
                f"lower shared_rounds to at most {len(self.rounds) - 1} or add rounds"
            )
        return self


def style_image_problem(value: str) -> None:
    """Raise ``ValueError`` when ``style_image`` is neither a path nor a ``bucket:<key>`` of a file."""
    if not value.strip():
        raise ValueError("style_image is empty; give a path or bucket:<key>")
    if value.startswith("bucket:"):
        key = value[len("bucket:"):].lstrip("/")
        if not is_plain_path(key):
            raise ValueError(f"style_image {value!r}: bucket:<key> names one object, e.g. bucket:styles/look.png "
                             f"(no empty, '.' or '..' parts)")


class InstructPix2PixStyle(DiffusionStyle):
    """An instruct-pix2pix edit ("Put a waterfall in the background")."""

    BACKGROUND_ON_OWN_MODEL: ClassVar[frozenset[str]] = frozenset({"instruct"})

    engine: Literal["instruct-pix2pix"] = "instruct-pix2pix"
    model: str = "timbrooks/instruct-pix2pix"
    #: The edit, in words (a sidecar's ``instruction`` replaces it per image).
    instruction: PromptText
    negative: PromptText = ""
    #: How closely to follow the input image (instruct-pix2pix's image_guidance_scale; 1 = off).
    image_guidance: float = Field(default=1.5, ge=0)
    #: How closely to follow the instruction (text CFG scale).
    guidance: float = Field(default=7.5, ge=0)
    steps: int = Field(default=20, ge=1, le=500)
    scheduler: SchedulerName = "euler-a"
    background: BackgroundSettings = BackgroundSettings()

    def background_settings(self) -> BackgroundSettings:
        return self.background

    @model_validator(mode="after")
    def _background_needs_a_model(self) -> InstructPix2PixStyle:
        if self.background.mode == "generate" and not self.background.model:
            raise ValueError("background.model is required for mode 'generate' on an instruct-pix2pix style "
                             "(a text-to-image checkpoint; its own model cannot draw from text alone)")
        return self


class Txt2ImgStyle(DiffusionStyle):
    """A fresh picture from the caption and trigger words alone (no photo pixels go in): for photos
    img2img cannot rescue, as the notebook also tried. SD 1.x / 2.x / SDXL (a text-to-image
    checkpoint, 4-channel UNet), picked from the model. ``size`` is the picture's long side, its
    aspect the photo's."""

    engine: Literal["txt2img"] = "txt2img"
    #: Style words appended to the prompt.
    trigger: str = ""
    #: The subject when an input has neither a per-image prompt nor a caption.
    prompt: PromptText | None = None
    negative: PromptText = ""
    #: Scheduler steps (every one denoises: there is no strength).
    steps: int = Field(default=30, ge=1, le=500)
    #: Classifier-free guidance scale (CFG).
    guidance: float = Field(default=7.5, ge=0)
    scheduler: SchedulerName = "dpmpp-2m-karras"
    #: The notebook drew three pictures from its augmented caption.
    variants: VariantCount = 3
    #: ControlNets or T2I-Adapters that keep the toy's outline from the photo (one mapping, or a
    #: list of one kind): the maps are made from the photo at the picture's size.
    control: list[ControlSettings] = Field(default_factory=list)

    def addons(self) -> StyleAddons:
        return StyleAddons(control=tuple(self.control))

    @field_validator("control", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return one_or_many(value)


class EditStyle(DiffusionStyle):
    """An instruction-following editor (FLUX.1 Kontext or Qwen-Image-Edit, picked from the model's
    ``model_index.json``; ``model`` e.g. ``black-forest-labs/FLUX.1-Kontext-dev``): the same
    ``instruction`` and ``guidance`` keys as instruct-pix2pix; the model's own scheduler. ``size``
    defaults to 1024, Kontext's training size."""

    SIZE_MULTIPLE: ClassVar[int] = 16
    SIZE_REASON: ClassVar[str] = " (VAE 8x times 2x2 latent patches)"

    engine: Literal["edit"] = "edit"
    #: The edit, in words (a sidecar's ``instruction`` replaces it per image).
    instruction: PromptText
    #: Kontext: its distilled guidance (default 2.5, the model card's). Qwen-Image-Edit: its
    #: ``true_cfg_scale``, classifier-free guidance against ``negative`` (default 4.0, the card's;
    #: 1 or less turns it off and halves the transformer calls).
    guidance: float | None = Field(default=None, ge=0)
    #: Qwen-Image-Edit's negative prompt for true CFG (default " ", the model card's). Kontext has
    #: none: there it is unused and its variants record ``negative_used: false``.
    negative: PromptText | None = None
    steps: int = Field(default=28, ge=1, le=500)
    #: A LoRA trained for the editor (a Kontext style LoRA on FLUX.1 Kontext, a Qwen-Image-Edit
    #: LoRA), the same keys as on img2img styles; recorded per variant and in ``Lora hashes``.
    lora: LoraSettings | None = None
    background: BackgroundSettings = BackgroundSettings()

    def background_settings(self) -> BackgroundSettings:
        return self.background

    def addons(self) -> StyleAddons:
        return StyleAddons(lora=self.lora)


def background_model(style: StyleBase) -> tuple[str, str | None] | None:
    """(model, revision) a style's background runs on, or None when it has no background
    (``StyleBase.background_ref``)."""
    ref = style.background_ref()
    return (ref.model, ref.revision) if ref is not None else None


def with_sources(names: Sequence[str], styles: Mapping[str, StyleBase]) -> list[str]:
    """``names`` in the order they run: each style that animates a still style (``image_from``)
    comes after that still style, which runs for the input too when ``names`` lacks it."""
    ordered: list[str] = []
    for name in names:
        style = styles.get(name)
        source = style.image_source() if style is not None else None
        if source is not None and source.style in styles and source.style not in ordered:
            ordered.append(source.style)
        if name not in ordered:
            ordered.append(name)
    return ordered


def outputs_of(name: str, styles: Mapping[str, StyleBase], variants: int | None = None) -> int:
    """The variants (clips) style ``name`` makes for one input, each style with ``variants`` (else
    its own count): a style animating each variant of a still style makes its count per variant."""
    style = styles[name]
    own = variants if variants is not None else style.variants
    source = style.image_source()
    if source is not None and source.variants == "all" and source.style in styles:
        own *= variants if variants is not None else styles[source.style].variants
    return own


def work_bound_problem(names: list[str], styles: Mapping[str, StyleBase], run: Any,
                       variants: int | None = None) -> str | None:
    """What is wrong with asking for styles ``names`` for one input (each with ``variants``, else
    its own count) under ``run.max_styles_per_input`` / ``run.max_variants_per_input``; None: fine.
    The still styles an animate style starts from (``image_from``) count too. The text follows the
    key that asked ("run.styles ...", "sidecar styles ...")."""
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        return f"name {twice} more than once; name each style once"
    running = with_sources(names, styles)
    if len(running) > run.max_styles_per_input:
        added = len(running) - len(names)
        also = f" (and {added} still style{'s' if added > 1 else ''} they animate)" if added else ""
        return (f"name {len(names)} styles{also}; at most {run.max_styles_per_input} per input "
                f"(run.max_styles_per_input)")
    total = sum(outputs_of(n, styles, variants) for n in running if n in styles)
    if total > run.max_variants_per_input:
        return (f"ask for {total} variants in all; at most {run.max_variants_per_input} per input "
                f"(run.max_variants_per_input): fewer styles or fewer variants")
    return None


