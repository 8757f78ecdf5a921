"""The style sections (``styles.<name>``): engines, rounds, LoRA/LCM, ControlNets, IP-Adapters,
backgrounds, and the checks that span a style.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from processor.config.base import BackgroundMode, ModelLicense, PromptText, Section, Seed, VariantCount
from processor.names import is_plain_path


class ToonStyle(Section):
    """Classical OpenCV cartoon: edge-preserving smoothing, colour quantisation, bold edges."""

    engine: Literal["toon"] = "toon"
    variants: VariantCount = 4
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
    # A factory: BackgroundSettings is defined below, next to the diffusion styles.
    background: BackgroundSettings = Field(default_factory=lambda: BackgroundSettings())

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


#: Schedulers a diffusion style can name (``processor.pipeline.diffusion.SCHEDULERS`` maps them).
SchedulerName = Literal["dpmpp-2m-karras", "dpmpp-2m", "euler-a", "euler", "ddim", "unipc", "pndm", "lcm"]


class DiffusionRound(Section):
    """One img2img pass; round k starts from round k-1's output."""

    #: 0-1: how much of the image is re-noised (diffusers runs int(steps * strength) denoising steps).
    strength: float = Field(gt=0, le=1)
    #: Classifier-free guidance scale (CFG).
    guidance: float = Field(default=7.5, ge=0)


class LoraSettings(Section):
    #: A local .safetensors file or folder, a hub id, or ``bucket:<key>`` in the configured store
    #: (a .safetensors key, or a prefix holding pytorch_lora_weights.safetensors, as ``processor
    #: finetune`` writes under models/loras/<name>/).
    path: str
    #: Adapter weight (0 = off, 1 = as trained).
    scale: float = 1.0
    #: The file inside a folder / hub repo, when it holds more than one.
    weight_name: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
    #: A hub id only: the commit, branch or tag to fetch (pin it: a LoRA repo's main may change);
    #: the commit loaded is recorded in every variant (``parameters.lora.revision``).
    revision: str | None = None

    @model_validator(mode="after")
    def _revision_is_for_hub_ids(self) -> LoraSettings:
        if self.revision is not None and (self.path.startswith(("/", ".", "~", "bucket:"))
                                          or self.path.endswith(".safetensors")):
            raise ValueError(f"lora.revision {self.revision!r} pins a hub id, and lora.path {self.path!r} is a file, "
                             "folder or bucket key: drop revision (or give the hub id as path)")
        return self


#: CFG scale above which an LCM-distilled UNet over-saturates (LCM-LoRA is trained for 1-2).
MAX_LCM_GUIDANCE = 3.0


class LcmSettings(Section):
    """``styles.<name>.lcm``: a latent-consistency LoRA (``latent-consistency/lcm-lora-sdv1-5``
    for SD 1.x models, ``-sdxl`` for SDXL) that makes the style's model denoise in 2-8 steps. It
    switches the scheduler to LCM (``scheduler: lcm``); rounds then take guidance 1-2 (at most
    1 turns classifier-free guidance off: one UNet evaluation per step instead of two)."""

    #: A local .safetensors file or folder, or a hub id (safetensors only), as ``lora.path``.
    lora: str
    #: The file inside a folder / hub repo, when it holds more than one.
    weight_name: str | None = None
    #: Adapter weight (1 = as trained).
    scale: float = 1.0
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
    #: A hub id only: the commit, branch or tag to fetch, as ``lora.revision``; the commit loaded is
    #: recorded in every variant (``parameters.lcm.revision``).
    revision: str | None = None

    @model_validator(mode="after")
    def _revision_is_for_hub_ids(self) -> LcmSettings:
        if self.revision is not None and (self.lora.startswith(("/", ".", "~", "bucket:"))
                                          or self.lora.endswith(".safetensors")):
            raise ValueError(f"lcm.revision {self.revision!r} pins a hub id, and lcm.lora {self.lora!r} is a file, "
                             "folder or bucket key: drop revision (or give the hub id as lora)")
        return self

    def as_lora(self) -> LoraSettings:
        """The LoRA this loads (what ``ModelLoader.resolve_lora`` and ``lora_adapter`` take)."""
        return LoraSettings(path=self.lora, weight_name=self.weight_name, scale=self.scale, revision=self.revision)


#: Scheduler steps a turbo (adversarially distilled: SD-Turbo, SDXL-Turbo) style may take per round.
MAX_TURBO_STEPS = 4


class RefinerSettings(Section):
    """``styles.<name>.refiner``: an SDXL refiner (``stabilityai/stable-diffusion-xl-refiner-1.0``)
    run as one last img2img round over every variant. It shares the base model's VAE and second
    text encoder (diffusers' base + refiner pattern), so only its UNet is extra memory."""

    #: Hub id or a local diffusers folder (an SDXL img2img pipeline, model_index.json inside).
    model: str
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    #: 0-1: how much of the base's output the refiner re-noises (low: it adds detail, keeps the look).
    strength: float = Field(default=0.3, gt=0, le=1)
    #: Scheduler steps; the refiner denoises int(steps * strength) of them.
    steps: int = Field(default=20, ge=1, le=500)
    #: Classifier-free guidance scale of the refiner round.
    guidance: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _denoises(self) -> RefinerSettings:
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"refiner: strength {self.strength} with steps {self.steps} gives 0 denoising steps; "
                             f"raise steps or strength")
        return self


#: Control image types a style can ask for (``styles.<name>.control[].type``): canny is OpenCV
#: edges (no weights); lineart, softedge and depth are made by a preprocessor model.
ControlType = Literal["canny", "lineart", "softedge", "depth"]
#: Canny hysteresis thresholds (OpenCV, 0-255 gradient units): the common ControlNet defaults.
DEFAULT_CANNY_LOW = 100
DEFAULT_CANNY_HIGH = 200


#: The weights file a lineart / softedge preprocessor repo holds when ``weight_name`` is not given:
#: the names in ``lllyasviel/Annotators`` (pickles there: ``processor models pull`` converts them).
DEFAULT_PREPROCESSOR_WEIGHTS = {"lineart": "sk_model.pth", "softedge": "ControlNetHED.pth"}


class PreprocessorSettings(Section):
    """``styles.<name>.control[].preprocessor``: the model that turns the photo into the map a
    lineart, softedge or depth ControlNet reads (``processor.pipeline.control_preprocess``)."""

    #: lineart / softedge: a hub repo (``lllyasviel/Annotators``), a local folder or a
    #: .safetensors file. depth: a transformers depth-estimation folder or hub id
    #: (``depth-anything/Depth-Anything-V2-Small-hf``, ``Intel/dpt-hybrid-midas``).
    model: str
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    #: lineart / softedge: the weights file in the repo or folder (default ``sk_model.pth`` for
    #: lineart, ``ControlNetHED.pth`` for softedge: pickles, converted by ``processor models pull``).
    weight_name: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None


class ControlSettings(Section):
    """``styles.<name>.control``: a ControlNet or T2I-Adapter that holds the variant to a map made
    from the input photo (canny: OpenCV edges, no weights), so high strengths (img2img) or a fresh
    picture (txt2img) keep the toy's shape. Which of the two ``model`` is comes from its
    config.json (``_class_name``), read at worker start."""

    type: ControlType = "canny"
    #: The ControlNet (``lllyasviel/sd-controlnet-canny``) or T2I-Adapter
    #: (``TencentARC/t2iadapter_canny_sd15v2``, txt2img styles only): hub id or a local folder
    #: (config.json and diffusion_pytorch_model.safetensors), matching the style model's family.
    model: str
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
    #: How strongly the map steers the UNet (controlnet_conditioning_scale or
    #: adapter_conditioning_scale; 0 = off).
    scale: float = Field(default=1.0, ge=0, le=2)
    #: 0-1: the fraction of the denoising steps the map steers (later steps run free, for detail);
    #: an SDXL T2I-Adapter's adapter_conditioning_factor; below 1 is refused for an SD 1.x adapter.
    guidance_end: float = Field(default=1.0, gt=0, le=1)
    #: Canny thresholds (0-255): edges below ``low`` are dropped, above ``high`` always kept.
    low: int = Field(default=DEFAULT_CANNY_LOW, ge=0, le=255)
    high: int = Field(default=DEFAULT_CANNY_HIGH, ge=1, le=255)
    #: lineart / softedge / depth: the model that makes the map (canny needs none).
    preprocessor: PreprocessorSettings | None = None

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ControlSettings:
        if self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high} (canny thresholds, 0-255)")
        return self

    @model_validator(mode="after")
    def _preprocessor_fits_type(self) -> ControlSettings:
        if self.type == "canny":
            if self.preprocessor is not None:
                raise ValueError("type canny makes its map with OpenCV and takes no preprocessor; drop "
                                 "control.preprocessor, or set control.type to lineart, softedge or depth")
            return self
        if self.preprocessor is None:
            example = {"lineart": "lllyasviel/Annotators", "softedge": "lllyasviel/Annotators",
                       "depth": "depth-anything/Depth-Anything-V2-Small-hf"}[self.type]
            raise ValueError(f"type {self.type} needs control.preprocessor, the model that makes its map from "
                             f"the photo, e.g. preprocessor: {{model: {example}}}")
        thresholds = {"low", "high"} & self.model_fields_set
        if thresholds:
            raise ValueError(f"{' and '.join(sorted(thresholds))}: canny thresholds do not apply to type "
                             f"{self.type}; drop them")
        return self


def one_or_many(value: Any) -> Any:
    """``control`` as one mapping or a list of them: always a list."""
    return [value] if isinstance(value, dict) else value


#: ``ip_adapter.scale`` keys of a per-block mapping (InstantStyle): the UNet's block groups.
IP_ADAPTER_BLOCK_GROUPS = ("down", "mid", "up")
#: The largest IP-Adapter scale: past 2 the style image swamps the prompt and the photo.
MAX_IP_ADAPTER_SCALE = 2.0
_IP_BLOCK = re.compile(r"block_[0-9]+")


class IpAdapterEncoderSettings(Section):
    """The CLIP image encoder an IP-Adapter reads the style image with (a
    ``CLIPVisionModelWithProjection`` folder: config.json and safetensors)."""

    #: Hub id or local folder (default: the IP-Adapter's own ``model``).
    model: str | None = None
    #: The folder inside it (default: ``<ip_adapter.subfolder>/image_encoder``, h94/IP-Adapter's layout).
    subfolder: str | None = None
    #: A hub commit / tag to pin (default: the IP-Adapter's ``revision`` when the model is the same).
    revision: str | None = None


class IpAdapterSettings(Section):
    """``styles.<name>.ip_adapter``: an IP-Adapter that steers the style by ``style_image``, a
    picture of the look wanted (``h94/IP-Adapter``: ``models/ip-adapter_sd15.safetensors`` for
    SD 1.x, ``sdxl_models/ip-adapter_sdxl_vit-h.safetensors`` for SDXL)."""

    #: Hub id or a local folder holding ``<subfolder>/<weight_name>``.
    model: str
    #: The folder inside ``model`` holding the weights ("" for the top).
    subfolder: str = "models"
    #: The weights file: safetensors only (a .bin would be unpickled).
    weight_name: str = "ip-adapter_sd15.safetensors"
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    image_encoder: IpAdapterEncoderSettings = IpAdapterEncoderSettings()
    #: How strongly the style image steers: one number for every attention layer (0 = off, 1 = as
    #: trained), or per block (InstantStyle), e.g. ``{up: {block_0: [0.0, 1.0, 0.0]}}`` for the
    #: SDXL style layer alone; unnamed blocks get 0.
    scale: float | dict[str, Any] = 0.6
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None

    @field_validator("weight_name")
    @classmethod
    def _safetensors(cls, value: str) -> str:
        if not value.endswith(".safetensors") or "/" in value:
            raise ValueError(f"weight_name {value!r} must be a .safetensors file name (the folder goes in "
                             f"subfolder); pickle weights are never loaded")
        return value

    @field_validator("subfolder")
    @classmethod
    def _inside(cls, value: str) -> str:
        value = value.strip("/")
        if value and not is_plain_path(value):
            raise ValueError(f"subfolder {value!r} must stay inside the model (no empty, '.' or '..' parts)")
        return value

    @field_validator("scale")
    @classmethod
    def _scale_shape(cls, value: float | dict[str, Any]) -> float | dict[str, Any]:
        ip_adapter_scale_problem(value)
        return value


def _scale_number(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"scale{where}: {value!r} is not a number")
    if not 0 <= value <= MAX_IP_ADAPTER_SCALE:
        raise ValueError(f"scale{where}: {value} must be between 0 and {MAX_IP_ADAPTER_SCALE}")


def ip_adapter_scale_problem(value: Any) -> None:
    """Raise ``ValueError`` naming the part of ``ip_adapter.scale`` that is not a number in
    [0, 2] or a mapping ``{down|mid|up: number | {block_<i>: number | [number, ...]}}``. Which
    blocks exist and how many layers each has depends on the UNet; the engine checks that at load."""
    if not isinstance(value, dict):
        _scale_number(value, "")
        return
    if not value:
        raise ValueError("scale: an empty mapping; give a number or name blocks, e.g. {up: {block_0: [0.0, 1.0, 0.0]}}")
    for group, blocks in value.items():
        if group not in IP_ADAPTER_BLOCK_GROUPS:
            raise ValueError(f"scale.{group}: unknown block group; use {', '.join(IP_ADAPTER_BLOCK_GROUPS)}")
        if group == "mid":  # one attention block: a number (or a list of one, as diffusers allows)
            _scale_number(blocks[0] if isinstance(blocks, list) and len(blocks) == 1 else blocks, ".mid")
            continue
        if not isinstance(blocks, dict):
            _scale_number(blocks, f".{group}")
            continue
        for block, layers in blocks.items():
            if not isinstance(block, str) or not _IP_BLOCK.fullmatch(block):
                raise ValueError(f"scale.{group}.{block}: a block is named block_<index> (block_0, block_1, ...)")
            for i, layer in enumerate(layers if isinstance(layers, list) else [layers]):
                _scale_number(layer, f".{group}.{block}" + (f"[{i}]" if isinstance(layers, list) else ""))
            if isinstance(layers, list) and not layers:
                raise ValueError(f"scale.{group}.{block}: an empty list; give one number per attention layer")


class BackgroundSettings(Section):
    """``styles.<name>.background``: what happens behind the subject after the style's transform.

    ``inpaint`` repaints the background region with an inpainting model (9-channel UNet);
    ``generate`` draws a new background text-to-image and composites the subject onto it, then a
    low-strength img2img pass harmonises light and colour; ``instruct`` applies an instruct-pix2pix
    edit and restores the subject from the mask. The subject itself is kept pixel for pixel.
    """

    mode: BackgroundMode = "none"
    #: The background to paint (inpaint, generate) or the edit instruction (instruct).
    prompt: PromptText | None = None
    negative: PromptText = ""
    #: inpaint: an inpainting checkpoint (required). generate: a text-to-image checkpoint (default:
    #: the style's own model, sharing its weights). instruct: an instruct-pix2pix checkpoint
    #: (default: the style's model when it is one, else timbrooks/instruct-pix2pix).
    model: str | None = None
    revision: str | None = None
    #: background.model's license (default: the style's own, when the background runs on its model).
    license: ModelLicense | None = None
    #: Variant i's background uses seed + i (default: the variant's own seed).
    seed: Seed | None = None
    steps: int = Field(default=25, ge=1, le=500)
    guidance: float = Field(default=7.5, ge=0)
    #: instruct: how closely to keep the image (instruct-pix2pix image_guidance_scale).
    image_guidance: float = Field(default=1.5, ge=0)
    #: generate: img2img strength of the harmonising pass over the composite (0 = no pass).
    harmonize: float = Field(default=0.25, ge=0, lt=1)
    #: Default: euler-a for instruct (as instruct-pix2pix was trained), dpmpp-2m-karras otherwise.
    scheduler: SchedulerName | None = None
    #: Pixels: the working long side (multiple of 8); default the model's native resolution.
    #: The result is resized back to the variant's exact size.
    size: int | None = Field(default=None, ge=64, le=4096)

    @model_validator(mode="after")
    def _complete(self) -> BackgroundSettings:
        if self.mode != "none" and not (self.prompt and self.prompt.strip()):
            raise ValueError(f"background.prompt is required when background.mode is {self.mode!r}")
        if self.mode == "inpaint" and not self.model:
            raise ValueError("background.model is required for mode 'inpaint': an inpainting checkpoint "
                             "(9-channel UNet), e.g. stable-diffusion-v1-5/stable-diffusion-inpainting")
        if self.size is not None and self.size % 8:
            raise ValueError(f"background.size {self.size} must be a multiple of 8")
        return self


class Img2ImgStyle(Section):
    """Stable Diffusion img2img (SD 1.x / 2.x / SDXL, picked from the model) in one or more rounds."""

    engine: Literal["img2img"] = "img2img"
    #: Hub id (``nitrosocke/mo-di-diffusion``) or a local diffusers folder (``model_index.json`` inside).
    model: str
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
    #: Style words appended to the prompt.
    trigger: str = ""
    #: The subject before the trigger words when an input has neither a per-image prompt (sidecar
    #: ``prompt``, ``x-amz-meta-prompt``) nor a caption (``caption.mode``).
    prompt: PromptText | None = None
    negative: PromptText = ""
    rounds: list[DiffusionRound] = Field(default_factory=lambda: [DiffusionRound(strength=0.6)], min_length=1)
    #: Scheduler steps per round; a round denoises int(steps * strength) of them.
    steps: int = Field(default=30, ge=1, le=500)
    scheduler: SchedulerName = "dpmpp-2m-karras"
    variants: VariantCount = 4
    #: Variant i uses seed + i.
    seed: Seed = 0
    #: The first N rounds run once, as one chain seeded with ``seed``; only the remaining rounds
    #: run per variant, starting from that shared image (the notebook's cost profile: less UNet
    #: work, variants less different from each other). 0: every variant runs its own chain.
    shared_rounds: int = Field(default=0, ge=0)
    #: Pixels: the working long side (multiple of 8); default the model's native resolution
    #: (512 for SD 1.x, 768 for SD 2.x-v, 1024 for SDXL).
    size: int | None = Field(default=None, ge=64, le=4096)
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

    @field_validator("control", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return one_or_many(value)

    @model_validator(mode="after")
    def _every_round_denoises(self) -> Img2ImgStyle:
        for i, r in enumerate(self.rounds):
            if int(self.steps * r.strength) < 1:
                raise ValueError(
                    f"rounds[{i}]: strength {r.strength} with steps {self.steps} gives 0 denoising steps; "
                    f"raise steps or strength"
                )
        if self.size is not None and self.size % 8:
            raise ValueError(f"size {self.size} must be a multiple of 8")
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


class InstructPix2PixStyle(Section):
    """An instruct-pix2pix edit ("Put a waterfall in the background")."""

    engine: Literal["instruct-pix2pix"] = "instruct-pix2pix"
    model: str = "timbrooks/instruct-pix2pix"
    revision: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
    #: The edit, in words (a sidecar's ``instruction`` replaces it per image).
    instruction: PromptText
    negative: PromptText = ""
    #: How closely to follow the input image (instruct-pix2pix's image_guidance_scale; 1 = off).
    image_guidance: float = Field(default=1.5, ge=0)
    #: How closely to follow the instruction (text CFG scale).
    guidance: float = Field(default=7.5, ge=0)
    steps: int = Field(default=20, ge=1, le=500)
    scheduler: SchedulerName = "euler-a"
    variants: VariantCount = 4
    seed: Seed = 0
    size: int | None = Field(default=None, ge=64, le=4096)
    background: BackgroundSettings = BackgroundSettings()

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"size {value} must be a multiple of 8")
        return value

    @model_validator(mode="after")
    def _background_needs_a_model(self) -> InstructPix2PixStyle:
        if self.background.mode == "generate" and not self.background.model:
            raise ValueError("background.model is required for mode 'generate' on an instruct-pix2pix style "
                             "(a text-to-image checkpoint; its own model cannot draw from text alone)")
        return self


class Txt2ImgStyle(Section):
    """A fresh picture from the caption and trigger words alone (no photo pixels go in): for photos
    img2img cannot rescue, as the notebook also tried. SD 1.x / 2.x / SDXL, picked from the model."""

    engine: Literal["txt2img"] = "txt2img"
    #: Hub id or local diffusers folder of a text-to-image checkpoint (4-channel UNet).
    model: str
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
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
    #: Variant i uses seed + i.
    seed: Seed = 0
    #: Pixels: the picture's long side (multiple of 8), its aspect the photo's; default the model's
    #: native resolution (512 for SD 1.x, 1024 for SDXL).
    size: int | None = Field(default=None, ge=64, le=4096)
    #: ControlNets or T2I-Adapters that keep the toy's outline from the photo (one mapping, or a
    #: list of one kind): the maps are made from the photo at the picture's size.
    control: list[ControlSettings] = Field(default_factory=list)

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"size {value} must be a multiple of 8")
        return value

    @field_validator("control", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return one_or_many(value)


class EditStyle(Section):
    """An instruction-following editor (FLUX.1 Kontext or Qwen-Image-Edit, picked from the model's
    ``model_index.json``): the same ``instruction`` and ``guidance`` keys as instruct-pix2pix; the
    model's own scheduler."""

    engine: Literal["edit"] = "edit"
    #: Hub id (``black-forest-labs/FLUX.1-Kontext-dev``) or a local diffusers folder.
    model: str
    revision: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
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
    variants: VariantCount = 4
    seed: Seed = 0
    #: Pixels: the working long side (multiple of 16); default 1024, Kontext's training size.
    size: int | None = Field(default=None, ge=64, le=4096)
    #: A LoRA trained for the editor (a Kontext style LoRA on FLUX.1 Kontext, a Qwen-Image-Edit
    #: LoRA), the same keys as on img2img styles; recorded per variant and in ``Lora hashes``.
    lora: LoraSettings | None = None
    background: BackgroundSettings = BackgroundSettings()

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, value: int | None) -> int | None:
        if value is not None and value % 16:
            raise ValueError(f"size {value} must be a multiple of 16 (VAE 8x times 2x2 latent patches)")
        return value


#: The instruct-pix2pix checkpoint a background ``instruct`` uses when neither it nor its style names one.
DEFAULT_INSTRUCT_MODEL = "timbrooks/instruct-pix2pix"


def background_model(style: Any) -> tuple[str, str | None] | None:
    """(model, revision) a style's background runs on, or None when it has no background.

    ``background.model`` when set; else the style's own model (shared weights) when it fits the
    mode (any text-to-image model for ``generate``, an instruct-pix2pix model for ``instruct``); else
    ``DEFAULT_INSTRUCT_MODEL`` for ``instruct``.
    """
    bg = getattr(style, "background", None)
    if bg is None or bg.mode == "none":
        return None
    if bg.model:
        return bg.model, bg.revision
    own = getattr(style, "model", None)
    if bg.mode == "generate" and own and style.engine == "img2img":
        return own, style.revision
    if bg.mode == "instruct":
        if own and style.engine == "instruct-pix2pix":
            return own, style.revision
        return DEFAULT_INSTRUCT_MODEL, None
    raise ValueError(f"background mode {bg.mode!r} needs background.model")


def work_bound_problem(names: list[str], styles: dict[str, Any], run: Any, variants: int | None = None) -> str | None:
    """What is wrong with asking for styles ``names`` for one input (each with ``variants``, else
    its own count) under ``run.max_styles_per_input`` / ``run.max_variants_per_input``; None: fine.
    The text follows the key that asked ("run.styles ...", "sidecar styles ...")."""
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        return f"name {twice} more than once; name each style once"
    if len(names) > run.max_styles_per_input:
        return (f"name {len(names)} styles; at most {run.max_styles_per_input} per input "
                f"(run.max_styles_per_input)")
    total = sum(variants if variants is not None else styles[n].variants for n in names if n in styles)
    if total > run.max_variants_per_input:
        return (f"ask for {total} variants in all; at most {run.max_variants_per_input} per input "
                f"(run.max_variants_per_input): fewer styles or fewer variants")
    return None


StyleSettings = Annotated[
    ToonStyle | Img2ImgStyle | InstructPix2PixStyle | Txt2ImgStyle | EditStyle, Field(discriminator="engine")
]


def default_styles() -> dict[str, Any]:
    """The styles a config without ``styles:`` has: the weight-free toon filter."""
    return {"toon": ToonStyle()}
