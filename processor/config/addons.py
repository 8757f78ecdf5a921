"""What a style loads beside its own model (``styles.<name>.lora``, ``lcm``, ``refiner``,
``control[]`` and its ``preprocessor``, ``ip_adapter``) and what it paints behind the subject
(``background``). Every section that names weights gives them as one ``ModelRef`` (``.ref``).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from processor.config.base import (
    BackgroundMode,
    ModelLicense,
    ModelRef,
    ModelReference,
    PromptText,
    Section,
    Seed,
)
from processor.names import is_plain_path

#: Schedulers a diffusion style can name (``processor.pipeline.sampling.SCHEDULERS`` maps them).
SchedulerName = Literal["dpmpp-2m-karras", "dpmpp-2m", "euler-a", "euler", "ddim", "unipc", "pndm", "lcm"]

#: Path prefixes of a LoRA that is a file, a folder or a bucket key (not a hub id).
_NOT_HUB_PREFIXES = ("/", ".", "~", "bucket:")


class AdapterWeights(Section):
    """The keys a LoRA-like adapter shares (``lora``, ``lcm``): its file, scale, licence and pin.
    Subclasses name the key that says where the weights are (``SOURCE_KEY``)."""

    #: The YAML section and the key holding the weights' location, for messages.
    SECTION: ClassVar[str] = "lora"
    SOURCE_KEY: ClassVar[str] = "path"

    #: Adapter weight (0 = off, 1 = as trained).
    scale: float = 1.0
    #: The file inside a folder / hub repo, when it holds more than one.
    weight_name: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
    #: A hub id only: the commit, branch or tag to fetch (pin it: an adapter repo's main may change);
    #: the commit loaded is recorded in every variant (``parameters.<section>.revision``).
    revision: str | None = None

    @property
    def source(self) -> str:
        """Where the weights are: a local file or folder, a hub id or ``bucket:<key>``."""
        raise NotImplementedError

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.source, self.revision, self.license, self.weight_name)

    @model_validator(mode="after")
    def _revision_is_for_hub_ids(self) -> AdapterWeights:
        source = self.source
        if self.revision is not None and (source.startswith(_NOT_HUB_PREFIXES) or source.endswith(".safetensors")):
            key = f"{self.SECTION}.{self.SOURCE_KEY}"
            raise ValueError(f"{self.SECTION}.revision {self.revision!r} pins a hub id, and {key} {source!r} is a "
                             f"file, folder or bucket key: drop revision (or give the hub id as {self.SOURCE_KEY})")
        return self


class LoraSettings(AdapterWeights):
    #: A local .safetensors file or folder, a hub id, or ``bucket:<key>`` in the configured store
    #: (a .safetensors key, or a prefix holding pytorch_lora_weights.safetensors, as ``processor
    #: finetune`` writes under models/loras/<name>/).
    path: str

    @property
    def source(self) -> str:
        return self.path


#: CFG scale above which an LCM-distilled UNet over-saturates (LCM-LoRA is trained for 1-2).
MAX_LCM_GUIDANCE = 3.0


class LcmSettings(AdapterWeights):
    """``styles.<name>.lcm``: a latent-consistency LoRA (``latent-consistency/lcm-lora-sdv1-5``
    for SD 1.x models, ``-sdxl`` for SDXL) that makes the style's model denoise in 2-8 steps. It
    switches the scheduler to LCM (``scheduler: lcm``); rounds then take guidance 1-2 (at most
    1 turns classifier-free guidance off: one UNet evaluation per step instead of two)."""

    SECTION: ClassVar[str] = "lcm"
    SOURCE_KEY: ClassVar[str] = "lora"

    #: A local .safetensors file or folder, or a hub id (safetensors only), as ``lora.path``.
    lora: str

    @property
    def source(self) -> str:
        return self.lora

    def as_lora(self) -> LoraSettings:
        """The LoRA this loads (what ``ModelLoader.resolve_lora`` and ``lora_adapter`` take)."""
        return LoraSettings(path=self.lora, weight_name=self.weight_name, scale=self.scale, revision=self.revision)


class RefinerSettings(ModelReference):
    """``styles.<name>.refiner``: an SDXL refiner (``stabilityai/stable-diffusion-xl-refiner-1.0``)
    run as one last img2img round over every variant. It shares the base model's VAE and second
    text encoder (diffusers' base + refiner pattern), so only its UNet is extra memory. ``model``
    is a hub id or a local diffusers folder (an SDXL img2img pipeline, model_index.json inside)."""

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


class PreprocessorSettings(ModelReference):
    """``styles.<name>.control[].preprocessor``: the model that turns the photo into the map a
    lineart, softedge or depth ControlNet reads (``processor.pipeline.control_preprocess``).
    ``model`` is, for lineart / softedge, a hub repo (``lllyasviel/Annotators``), a local folder
    or a .safetensors file; for depth, a transformers depth-estimation folder or hub id
    (``depth-anything/Depth-Anything-V2-Small-hf``, ``Intel/dpt-hybrid-midas``)."""

    #: lineart / softedge: the weights file in the repo or folder (default ``sk_model.pth`` for
    #: lineart, ``ControlNetHED.pth`` for softedge: pickles, converted by ``processor models pull``).
    weight_name: str | None = None

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model, self.revision, self.license, self.weight_name)


class ControlSettings(ModelReference):
    """``styles.<name>.control``: a ControlNet or T2I-Adapter that holds the variant to a map made
    from the input photo (canny: OpenCV edges, no weights), so high strengths (img2img) or a fresh
    picture (txt2img) keep the toy's shape. Which of the two ``model`` is comes from its
    config.json (``_class_name``), read at worker start. ``model`` is the ControlNet
    (``lllyasviel/sd-controlnet-canny``) or T2I-Adapter (``TencentARC/t2iadapter_canny_sd15v2``,
    txt2img styles only): hub id or a local folder (config.json and
    diffusion_pytorch_model.safetensors), matching the style model's family."""

    type: ControlType = "canny"
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


class IpAdapterSettings(ModelReference):
    """``styles.<name>.ip_adapter``: an IP-Adapter that steers the style by ``style_image``, a
    picture of the look wanted (``h94/IP-Adapter``: ``models/ip-adapter_sd15.safetensors`` for
    SD 1.x, ``sdxl_models/ip-adapter_sdxl_vit-h.safetensors`` for SDXL). ``model`` is a hub id
    or a local folder holding ``<subfolder>/<weight_name>``."""

    #: The folder inside ``model`` holding the weights ("" for the top).
    subfolder: str = "models"
    #: The weights file: safetensors only (a .bin would be unpickled).
    weight_name: str = "ip-adapter_sd15.safetensors"
    image_encoder: IpAdapterEncoderSettings = IpAdapterEncoderSettings()
    #: How strongly the style image steers: one number for every attention layer (0 = off, 1 = as
    #: trained), or per block (InstantStyle), e.g. ``{up: {block_0: [0.0, 1.0, 0.0]}}`` for the
    #: SDXL style layer alone; unnamed blocks get 0.
    scale: float | dict[str, Any] = 0.6

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model, self.revision, self.license, self.weight_name)

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
