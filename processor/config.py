"""One typed Settings tree.

Precedence: keyword arguments > environment ``PROCESSOR_<SECTION>__<KEY>`` > ``config.yaml`` >
defaults. The file is ``--config PATH``, else ``$PROCESSOR_CONFIG``, else ``./config.yaml`` (optional).
Unknown keys and bad values raise ``ConfigError`` naming the key and where it came from.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from processor.errors import ConfigError

ENV_PREFIX = "PROCESSOR_"
CONFIG_ENV = "PROCESSOR_CONFIG"
#: The default variables of the API's secrets (``api.keys_env``, ``api.webhook_secret_env``):
#: values, not settings keys, so never read into the settings tree (nor shown in its errors).
API_KEYS_ENV = "PROCESSOR_API_KEYS"
WEBHOOK_SECRET_ENV = "PROCESSOR_WEBHOOK_SECRET"
NOT_SETTINGS_ENV = frozenset({CONFIG_ENV, API_KEYS_ENV, WEBHOOK_SECRET_ENV})
DEFAULT_CONFIG = Path("config.yaml")

#: Seconds a claim stays valid without renewal.
DEFAULT_CLAIM_TTL_S = 600.0
#: Seconds between claim renewals (well inside the TTL so one slow renewal does not lose it).
DEFAULT_CLAIM_RENEW_S = 120.0
#: Seconds between progress-carrying claim renewals of an item being worked on: often enough for
#: a progress bar, and still one small PUT per running item per period, never one per step.
DEFAULT_CLAIM_PROGRESS_S = 2.0
#: TCP port of ``processor serve`` (the HTTP API).
DEFAULT_API_PORT = 8080
#: Seconds the longest ``Prefer: wait=N`` may hold a request open (larger N are cut to this).
DEFAULT_API_MAX_WAIT_S = 60.0
#: Seconds ``POST /generate_image_rest_direct`` waits for its images before answering 504.
DEFAULT_API_DIRECT_TIMEOUT_S = 600.0
#: Seconds between the bucket reads of a waiting request or an event stream.
DEFAULT_API_POLL_S = 0.5
#: Seconds a presigned variant URL stays valid.
DEFAULT_API_URL_TTL_S = 300
#: Seconds: the longest TTL any claim in the bucket is believed to have. A claim names its own TTL,
#: but whoever can write the bucket can write a claim: one that says a year (or garbage) would
#: otherwise hold its input forever. An hour: six times the default TTL.
DEFAULT_CLAIM_MAX_TTL_S = 3600.0
#: Bytes: inputs larger than this are refused before download.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Pixels: a decoded image larger than this is refused before its pixels are allocated.
DEFAULT_MAX_PIXELS = 40_000_000
#: Pixels: the shorter side of an input must be at least this.
DEFAULT_MIN_SIDE = 64
#: TCP port of /metrics, /healthz and /readyz (the deploy files name it ``metrics``).
DEFAULT_METRICS_PORT = 9108
#: Seconds without progress after which /healthz fails: longer than one item's slowest stage.
DEFAULT_METRICS_STALL_S = 900.0
#: zlib level of the variant PNGs. 1, not 6: on a 512 px image level 6 took 134 ms and level 1
#: 28 ms for a file 17 % larger (a synthetic photo; smooth cartoons differ less), and encoding four
#: variants is the upload stage's main cost, which must keep up with the GPU (docs/benchmarks.md).
DEFAULT_PNG_COMPRESS_LEVEL = 1
#: Seconds between the daemon's full scans (incremental StartAfter scans in between).
DEFAULT_FULL_RESCAN_S = 300.0
#: Attempts an input gets when a stage crashes on it (``StageFailed``). Three, not one: a crash
#: may be the worker's (a poisoned CUDA context, a bad deploy) rather than the input's, and another
#: attempt, usually on a healthy or restarted worker, tells the two apart. Not more: each attempt
#: of a diffusion style costs GPU minutes. A bad input (``InvalidInput``) always gets one.
DEFAULT_MAX_ATTEMPTS = 3
#: ``StageFailed`` items in a row, with no success between them, after which a worker stops as
#: unhealthy (exit 7) rather than burning the backlog's retry budgets; 0 turns the breaker off.
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5
#: Styles one input may ask for (``run.styles`` or a sidecar's ``styles``).
DEFAULT_MAX_STYLES_PER_INPUT = 8
#: Variants one input may ask for, all its styles together: each is a full diffusion run.
DEFAULT_MAX_VARIANTS_PER_INPUT = 32
#: Pixels: the contact sheet's encoded size (tiles shrink to fit), whatever the number of
#: variants or the input's aspect ratio. A 4:3 photo and 32 variants at 256 px tiles are 3.4 MP
#: (``processor.pipeline.encode._sheet_pixels``), so the cap only bites on odd shapes and sizes.
DEFAULT_CONTACT_SHEET_MAX_PIXELS = 16_000_000


# --- constraints shared by the style sections and per-input overrides (pipeline/sidecar.py) ---
# A sidecar (or the API) may override these style keys; one definition keeps their bounds equal.

#: The largest seed: 32 bits, as Stable Diffusion front ends use (variant i uses seed + i).
MAX_SEED = 2**32 - 1
#: Variants of one style for one input.
MAX_VARIANTS = 16
#: Characters of a prompt, negative prompt or instruction (the text encoder reads 77 tokens).
MAX_PROMPT_CHARS = 2000
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
VariantCount = Annotated[int, Field(ge=1, le=MAX_VARIANTS)]
PromptText = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
BackgroundMode = Literal["none", "inpaint", "generate", "instruct"]
#: A model's license, as its model card names it (``license:`` on a style and on its LoRA, LCM-LoRA,
#: ControlNet and background models). ``non-commercial`` covers every licence that forbids
#: commercial use (FLUX.1-dev's, CC BY-NC); ``other`` is anything else (read the card).
ModelLicense = Literal["apache-2.0", "mit", "openrail", "openrail++", "creativeml-openrail-m", "non-commercial",
                       "other"]
#: The licences ``run.allow_noncommercial: false`` refuses.
NONCOMMERCIAL_LICENSES = frozenset({"non-commercial"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Section):
    """Where the bucket is. Keys that do not apply to ``kind`` are ignored."""

    kind: Literal["local", "s3", "cos"] = "local"
    #: local: the directory that acts as the bucket.
    root: Path = Path("bucket")
    #: s3 / cos: bucket name.
    bucket: str | None = None
    #: s3 / cos: endpoint, e.g. http://127.0.0.1:8333 or https://s3.eu-de.cloud-object-storage.appdomain.cloud
    endpoint_url: str | None = None
    region: str | None = None
    #: s3: a named AWS profile (else the standard AWS variables / instance role).
    profile: str | None = None
    #: cos: the environment variable that holds the IAM API key (the key itself never goes in config).
    api_key_env: str = "COS_API_KEY"
    #: cos: the COS service instance CRN.
    instance_id: str | None = None
    #: cos: the IAM token endpoint.
    auth_endpoint: str = "https://iam.cloud.ibm.com/identity/token"
    #: Attempts per store request before a transient error is raised (tenacity, exponential + jitter).
    max_attempts: int = Field(default=6, ge=1)
    #: Seconds: the longest single back-off sleep between attempts.
    max_backoff_s: float = Field(default=20.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL; write it with its scheme, e.g. "
                             f"https://{value.strip().split('://')[-1].lstrip('/') or 's3.example.com'}")
        return value.strip()

    @model_validator(mode="after")
    def _bucket_for_remote(self) -> StoreSettings:
        if self.kind in ("s3", "cos") and not self.bucket:
            raise ValueError(f"store.bucket is required when store.kind is {self.kind!r}")
        if self.kind == "cos" and not self.endpoint_url:
            raise ValueError("store.endpoint_url is required when store.kind is 'cos'")
        return self


class PrefixSettings(_Section):
    inputs: str = "inputs/"
    outputs: str = "outputs/"
    failed: str = "failed/"
    state: str = ".processor/"
    #: Per-input style pictures (a sidecar's ``style_image``) are read from under here only.
    styles: str = "styles/"

    @field_validator("inputs", "outputs", "failed", "state", "styles")
    @classmethod
    def _normalise(cls, value: str) -> str:
        value = value.strip("/")
        if not value or any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError("a prefix is a non-empty path like 'inputs/' without '.' or '..' parts")
        return value + "/"

    @model_validator(mode="after")
    def _disjoint(self) -> PrefixSettings:
        names = {"inputs": self.inputs, "outputs": self.outputs, "failed": self.failed, "state": self.state,
                 "styles": self.styles}
        for a, pa in names.items():
            for b, pb in names.items():
                if a != b and pa.startswith(pb):
                    raise ValueError(f"prefixes.{a} ({pa!r}) must not lie inside prefixes.{b} ({pb!r})")
        return self


class DecodeSettings(_Section):
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, gt=0)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)
    min_side: int = Field(default=DEFAULT_MIN_SIDE, ge=1)


#: Fraction of the image: a subject mask covering less than this is "nothing found".
DEFAULT_MIN_COVERAGE = 0.02
#: Fraction of the image: a subject mask covering more than this is "everything is subject".
DEFAULT_MAX_COVERAGE = 0.90


#: The ONNX segmenter families (``processor.pipeline.onnx_segmenter.FAMILIES``).
OnnxFamily = Literal["u2net", "isnet", "birefnet"]


class OnnxSegmenterSettings(_Section):
    """A salient-object / matting model in ONNX form (``processor.pipeline.onnx_segmenter``).

    ONNX files hold a graph and tensors, no pickle, so they keep the safe-weights rule."""

    #: A local ``.onnx`` file, or a hub repo id whose ``file`` is fetched by ``processor models pull``.
    model: str
    #: The file inside the hub repo (ignored for a local file), e.g. ``onnx/model.onnx``.
    file: str = "model.onnx"
    revision: str | None = None
    #: Input size and normalisation: ``u2net`` (rembg u2net/u2netp/silueta, 320 px), ``isnet``
    #: (isnet-general-use, RMBG-1.4-style, 1024 px), ``birefnet`` (1024 px, logits).
    family: OnnxFamily = "u2net"
    #: Pixels: the model's square input side (default: the family's).
    input_size: int | None = Field(default=None, ge=32, le=4096)
    #: Saliency (0-1) at or above which a pixel is subject.
    threshold: float = Field(default=0.5, gt=0, lt=1)
    #: ``auto``: the CUDA execution provider when onnxruntime has it, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _onnx_file(self) -> OnnxSegmenterSettings:
        target = self.model if self.model.endswith(".onnx") else self.file
        if not target.endswith(".onnx"):
            raise ValueError(f"onnx segmenter file {target!r} must be an .onnx file (set pipeline.mask.onnx.file)")
        return self


class MaskSettings(_Section):
    """The subject mask background styles use (``processor.pipeline.mask``), one per input."""

    #: An ONNX salient-object model (the rembg family, BiRefNet). When set and its file is present
    #: it makes the masks; when it is missing or cannot load, GrabCut does, and the reason is
    #: recorded in every variant's ``background.segmentation.fallback``.
    onnx: OnnxSegmenterSettings | None = None
    #: None: the classical segmenter (OpenCV GrabCut seeded from a border colour model; no weights).
    #: Else a transformers semantic-segmentation model (hub id or local folder, safetensors only);
    #: every pixel whose label is not in ``background_labels`` is subject.
    segmenter: str | None = None
    segmenter_revision: str | None = None
    #: Labels of the segmenter that count as background (ADE20K scene classes by default; compared
    #: case- and space-insensitively). "person" is not among them: a toy figure may be labelled so.
    background_labels: list[str] = Field(default_factory=lambda: [
        "background", "wall", "floor", "ceiling", "table", "desk", "counter", "countertop", "sky", "road",
        "sidewalk", "grass", "earth", "sand", "field", "water", "sea", "mountain", "tree", "plant", "building",
        "windowpane", "door", "curtain", "rug", "cabinet", "shelf", "bookcase", "book", "bed", "sofa", "chair",
        "armchair", "cushion", "pillow", "painting", "mirror", "lamp", "computer", "screen",
    ])
    #: A mask covering less than this fraction of the image falls back to no background change.
    min_coverage: float = Field(default=DEFAULT_MIN_COVERAGE, ge=0, lt=1)
    #: A mask covering more than this fraction of the image falls back to no background change.
    max_coverage: float = Field(default=DEFAULT_MAX_COVERAGE, gt=0, le=1)
    #: Pixels: the Gaussian sigma of the feathered edge (default: 1% of the image's short side).
    feather_px: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> MaskSettings:
        if self.onnx is not None and self.segmenter:
            raise ValueError("set pipeline.mask.onnx or pipeline.mask.segmenter, not both")
        if self.min_coverage >= self.max_coverage:
            raise ValueError(f"min_coverage ({self.min_coverage}) must be below max_coverage ({self.max_coverage})")
        return self


class ClipScoreSettings(_Section):
    """``pipeline.clip_score``: score every variant by CLIP image similarity to its photo
    (``processor.pipeline.clipscore``): a transformers ``CLIPModel`` folder or hub id, loaded once
    per worker like every other model (safetensors only, pinned revision, offline mode) and fetched
    by ``processor models pull``."""

    #: A hub id (``openai/clip-vit-large-patch14``) or a local folder holding a transformers
    #: ``CLIPModel`` (``config.json``, ``model.safetensors``, ``preprocessor_config.json``).
    model: str
    #: The hub commit, branch or tag to load; the commit loaded is recorded in every variant.
    revision: str | None = None


class PipelineSettings(_Section):
    decode: DecodeSettings = DecodeSettings()
    #: Write a contact sheet (the original beside every variant) per input.
    contact_sheet: bool = True
    #: Pixels: the contact sheet's tile height.
    contact_sheet_height: int = Field(default=256, ge=32, le=2048)
    #: Pixels: the most the contact sheet may have; its tiles shrink to fit.
    contact_sheet_max_pixels: int = Field(default=DEFAULT_CONTACT_SHEET_MAX_PIXELS, ge=100_000, le=100_000_000)
    #: zlib level of the variant and mask PNGs (0-9): higher is smaller and slower to write.
    png_compress_level: int = Field(default=DEFAULT_PNG_COMPRESS_LEVEL, ge=0, le=9)
    #: The subject mask for styles with a ``background`` (computed once per input).
    mask: MaskSettings = MaskSettings()
    #: Score every variant by the photo's edges it kept inside the subject mask (weight-free,
    #: ``processor.pipeline.structure``), or over the whole image where no mask is at hand.
    structure_score: bool = True
    #: Compute a subject mask for the score when no background stage made one. Off by default:
    #: a GrabCut mask costs CPU time on the upload thread for every input, which toon-only
    #: workers would otherwise pay; their scores then cover the whole image (``region``).
    structure_mask: bool = False
    #: CLIP image similarity of each variant to its photo (inside the subject's box when a subject
    #: mask is at hand, as the structure score); None: not scored, and no CLIP model loads.
    clip_score: ClipScoreSettings | None = None


class ToonStyle(_Section):
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


class DiffusionRound(_Section):
    """One img2img pass; round k starts from round k-1's output."""

    #: 0-1: how much of the image is re-noised (diffusers runs int(steps * strength) denoising steps).
    strength: float = Field(gt=0, le=1)
    #: Classifier-free guidance scale (CFG).
    guidance: float = Field(default=7.5, ge=0)


class LoraSettings(_Section):
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


class LcmSettings(_Section):
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


class RefinerSettings(_Section):
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


class PreprocessorSettings(_Section):
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


class ControlSettings(_Section):
    """``styles.<name>.control``: a ControlNet that holds the variant to a map made from the input
    photo (canny: OpenCV edges, no weights), so high strengths restyle the toy without losing its
    shape."""

    type: ControlType = "canny"
    #: The ControlNet: hub id (``lllyasviel/sd-controlnet-canny``) or a local folder (config.json
    #: and diffusion_pytorch_model.safetensors), matching the style model's family (SD 1.x / SDXL).
    model: str
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None
    #: How strongly the map steers the UNet (controlnet_conditioning_scale; 0 = off).
    scale: float = Field(default=1.0, ge=0, le=2)
    #: 0-1: the fraction of the denoising steps the map steers (later steps run free, for detail).
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


#: ``ip_adapter.scale`` keys of a per-block mapping (InstantStyle): the UNet's block groups.
IP_ADAPTER_BLOCK_GROUPS = ("down", "mid", "up")
#: The largest IP-Adapter scale: past 2 the style image swamps the prompt and the photo.
MAX_IP_ADAPTER_SCALE = 2.0
_IP_BLOCK = re.compile(r"block_[0-9]+")


class IpAdapterEncoderSettings(_Section):
    """The CLIP image encoder an IP-Adapter reads the style image with (a
    ``CLIPVisionModelWithProjection`` folder: config.json and safetensors)."""

    #: Hub id or local folder (default: the IP-Adapter's own ``model``).
    model: str | None = None
    #: The folder inside it (default: ``<ip_adapter.subfolder>/image_encoder``, h94/IP-Adapter's layout).
    subfolder: str | None = None
    #: A hub commit / tag to pin (default: the IP-Adapter's ``revision`` when the model is the same).
    revision: str | None = None


class IpAdapterSettings(_Section):
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
        if any(part in (".", "..") for part in value.split("/")):
            raise ValueError(f"subfolder {value!r} must stay inside the model (no '.' or '..' parts)")
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


class BackgroundSettings(_Section):
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


class Img2ImgStyle(_Section):
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
        return [value] if isinstance(value, dict) else value

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
        if not key or key.endswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"style_image {value!r}: bucket:<key> names one object, e.g. bucket:styles/look.png "
                             f"(no empty, '.' or '..' parts)")


class InstructPix2PixStyle(_Section):
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


class Txt2ImgStyle(_Section):
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

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"size {value} must be a multiple of 8")
        return value


class EditStyle(_Section):
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


def _default_styles() -> dict[str, Any]:
    return {"toon": ToonStyle()}


class RunSettings(_Section):
    #: Styles every input gets (names under ``styles``).
    styles: list[str] = ["toon"]
    #: Order of each style's variants in the manifest and on the contact sheet: ``none`` (by
    #: index), ``structure`` (best structure score first; needs pipeline.structure_score) or
    #: ``clip`` (most CLIP-similar to the photo first; needs pipeline.clip_score).
    order_variants_by: Literal["none", "structure", "clip"] = "none"
    #: Seconds between scans while the daemon has work.
    poll_interval_s: float = Field(default=10.0, gt=0)
    #: Seconds: the longest wait between scans while idle (doubles from poll_interval_s).
    idle_backoff_max_s: float = Field(default=300.0, gt=0)
    #: Seconds between the daemon's full scans; in between it lists only inputs after the last key
    #: seen (StartAfter). An upload that sorts before that key is found by the next full scan, or by
    #: the next scan when `processor submit` / `processor retry` wrote the rescan hint (rescan.py).
    full_rescan_s: float = Field(default=DEFAULT_FULL_RESCAN_S, gt=0)
    #: Inputs downloaded and decoded ahead of the one computing.
    prefetch: int = Field(default=2, ge=0, le=64)
    #: Finished items waiting for upload before compute waits (bounds memory).
    upload_queue: int = Field(default=2, ge=1, le=64)
    #: ``claims`` (leases in the bucket), ``shards`` (static hash sharding), ``auto`` (claims,
    #: or shards when the store's conditional create is not atomic).
    coordination: Literal["auto", "claims", "shards"] = "claims"
    #: Shard count for ``shards`` coordination (a Kubernetes Indexed Job's completions).
    shard_count: int = Field(default=1, ge=1)
    #: This worker's shard; default from ``$JOB_COMPLETION_INDEX``.
    shard_index: int | None = Field(default=None, ge=0)
    #: Identifies this worker in claims and manifests; default host name + pid.
    worker_id: str | None = None
    #: Attempts per input version when a stage crashes on it (``StageFailed``); a bad input gets one.
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    #: ``StageFailed`` items in a row after which the worker exits as unhealthy (exit 7); 0: never.
    max_consecutive_failures: int = Field(default=DEFAULT_MAX_CONSECUTIVE_FAILURES, ge=0)
    #: Styles one input may ask for (a sidecar's ``styles``; ``run.styles`` itself).
    max_styles_per_input: int = Field(default=DEFAULT_MAX_STYLES_PER_INPUT, ge=1, le=64)
    #: Variants one input may ask for, summed over its styles (a sidecar's ``variants`` counts once per style).
    max_variants_per_input: int = Field(default=DEFAULT_MAX_VARIANTS_PER_INPUT, ge=1, le=1024)
    #: Run styles whose models declare a ``non-commercial`` license. Off by default: a worker that
    #: serves others must not run such weights unless its operator says so, once, here; with it off
    #: such a style in run.styles stops the worker at start (exit 3) and a sidecar naming one fails.
    allow_noncommercial: bool = False

    @model_validator(mode="after")
    def _shard_in_range(self) -> RunSettings:
        if self.shard_index is not None and self.shard_index >= self.shard_count:
            raise ValueError(f"run.shard_index {self.shard_index} must be < run.shard_count {self.shard_count}")
        return self


class ClaimSettings(_Section):
    # allow_inf_nan=False: "inf" or "nan" from YAML or the environment would never expire.
    ttl_s: float = Field(default=DEFAULT_CLAIM_TTL_S, gt=0, allow_inf_nan=False)
    renew_s: float = Field(default=DEFAULT_CLAIM_RENEW_S, gt=0, allow_inf_nan=False)
    #: Cap on the TTL read from any claim in the bucket (``processor.queue.claims``).
    max_ttl_s: float = Field(default=DEFAULT_CLAIM_MAX_TTL_S, gt=0, allow_inf_nan=False)
    #: Seconds between the claim rewrites that publish a running item's progress (what
    #: ``GET /v1/jobs/{id}`` shows); a renewal made early, so at most one write per this period.
    progress_s: float = Field(default=DEFAULT_CLAIM_PROGRESS_S, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _renew_inside_ttl(self) -> ClaimSettings:
        if self.renew_s >= self.ttl_s:
            raise ValueError(f"claims.renew_s ({self.renew_s}) must be shorter than claims.ttl_s ({self.ttl_s})")
        if self.ttl_s > self.max_ttl_s:
            raise ValueError(f"claims.ttl_s ({self.ttl_s}) must not exceed claims.max_ttl_s ({self.max_ttl_s}): "
                             "other workers would take this worker's claims over while it still renews them")
        return self


class PerformanceSettings(_Section):
    """GPU-path switches applied when a pipeline loads (``processor.models.accel`` says why each default)."""

    #: ``sdpa``: PyTorch scaled_dot_product_attention (flash / memory-efficient kernels on CUDA);
    #: ``eager``: diffusers' plain matmul-softmax attention.
    attention: Literal["sdpa", "eager"] = "sdpa"
    #: NHWC memory format for the UNet; default (null): on for CUDA, off for the CPU.
    channels_last: bool | None = None
    #: torch.compile the UNet (warm-up at start, recorded; each new input shape compiles again).
    compile_unet: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    #: Decode a batch of variants one image at a time (lower peak memory).
    vae_slicing: bool = True
    #: Tiled VAE decode for large images; ``auto``: when the long side exceeds 2x the native size.
    vae_tiling: Literal["auto", "on", "off"] = "auto"
    #: For GPUs smaller than the model: ``model`` keeps one whole module (text encoder, UNet or
    #: transformer, VAE) on the GPU at a time; ``sequential`` streams weights layer by layer
    #: (least memory, several times slower). On the CPU both are a no-op, noted in the manifest.
    offload: Literal["none", "model", "sequential"] = "none"


class ModelSettings(_Section):
    """How diffusion weights are loaded (``processor.models.loader``)."""

    #: ``auto`` (CUDA when PyTorch sees a GPU, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
    device: str = "auto"
    #: ``auto``: float16 on CUDA, float32 on CPU.
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    #: Attention kernel, channels_last, torch.compile, VAE slicing/tiling.
    performance: PerformanceSettings = PerformanceSettings()
    #: Never touch the network: a model missing from the cache stops the worker at start
    #: (``HF_HUB_OFFLINE=1`` does the same).
    offline: bool = False
    #: The Hugging Face cache folder (default: $HF_HOME/hub); a mounted volume in Kubernetes.
    cache_dir: Path | None = None
    #: ``processor models pull`` only (an init container / image build): convert components that a
    #: repo ships as pickle ``*.bin`` only into safetensors, loading them with PyTorch's restricted
    #: unpickler (same as ``--convert-pickle``). The worker never converts or unpickles.
    convert_pickle: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            raise ValueError("device is auto, cpu, cuda, cuda:N or mps")
        return value


#: How each input is captioned before its prompt is built (``processor.pipeline.caption``).
CaptionMode = Literal["fast", "classic", "best", "negative", "blip", "none"]
#: The prompt template's default: the caption (or per-image prompt), then the style's trigger words.
DEFAULT_PROMPT_TEMPLATE = "{caption}, {trigger}"
_TEMPLATE_FIELDS = {"caption", "trigger"}


class CaptionSettings(_Section):
    """Captions with the CLIP Interrogator; only styles that take a prompt (img2img) use them."""

    #: ``fast``/``classic``/``best``: the caption model's caption plus CLIP-ranked style terms
    #: (clip-interrogator's modes); ``negative``: the caption, and the CLIP terms least like the
    #: image appended to the negative prompt; ``blip``: the caption model alone; ``none``: no caption.
    mode: CaptionMode = "none"
    #: An open_clip name ``ARCH/TAG`` (``ViT-L-14/openai``), ``hf-hub:org/repo``, or
    #: ``local-dir:/path`` (``open_clip_config.json`` and safetensors weights inside).
    clip_model: str = "ViT-L-14/openai"
    #: Hub commit / tag to pin for the CLIP weights.
    clip_revision: str | None = None
    #: A BLIP / BLIP-2 / GIT hub id or local folder, or a clip-interrogator short name (``blip-large``).
    caption_model: str = "Salesforce/blip-image-captioning-large"
    caption_revision: str | None = None
    #: ``first-clause``: the text up to the first comma (the notebook); ``full``: all of it.
    keep: Literal["first-clause", "full"] = "first-clause"
    #: Fields: ``{caption}`` (the caption, or a per-image prompt) and ``{trigger}`` (the style's words).
    template: str = DEFAULT_PROMPT_TEMPLATE
    #: Move the caption models to the CPU after each caption, so diffusion gets the whole GPU.
    offload: bool = False
    #: The local label-embedding cache; default ``$XDG_CACHE_HOME/toy-cartoonizer/label-tables``.
    cache_dir: Path | None = None
    #: A folder of label lists (``artists.txt``, ``flavors.txt``, ``mediums.txt``, ``movements.txt``,
    #: ``negative.txt``, ``trendings.txt``) replacing clip-interrogator's; missing files keep its list.
    labels_dir: Path | None = None
    #: Tokens the caption model may generate.
    max_caption_tokens: int = Field(default=32, ge=1, le=256)
    #: Most CLIP-ranked terms appended in fast / best / negative mode.
    max_flavors: int = Field(default=32, ge=1, le=128)
    #: Labels per CLIP text batch while computing label tables (lower for small GPUs).
    chunk_size: int = Field(default=2048, ge=1)

    @field_validator("template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        import string

        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"template {value!r} is not a format string: {exc}") from None
        unknown = fields - _TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"template fields are {{caption}} and {{trigger}}; unknown: {sorted(unknown)}")
        return value

    @field_validator("clip_model")
    @classmethod
    def _clip_name(cls, value: str) -> str:
        if not value.startswith(("local-dir:", "hf-hub:")) and value.count("/") != 1:
            raise ValueError("clip_model is ARCH/TAG (ViT-L-14/openai), hf-hub:org/repo or local-dir:/path")
        return value


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``auto``: JSON lines when stderr is not a terminal, readable text when it is.
    format: Literal["auto", "json", "text"] = "auto"


class MetricsSettings(_Section):
    """Prometheus ``/metrics`` and the probes ``/healthz``, ``/readyz`` of ``processor run``."""

    #: TCP port; 0 turns the endpoint off.
    port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)
    #: Address to listen on: 0.0.0.0 (every IPv4 interface, what a pod needs), 127.0.0.1, ``::``.
    host: str = "0.0.0.0"
    #: Seconds without progress (an item finished, a scan, a compute started) after which
    #: /healthz fails, so the kubelet restarts a wedged worker. Idle waits do not count.
    stall_s: float = Field(default=DEFAULT_METRICS_STALL_S, gt=0)

    @property
    def port_is_default(self) -> bool:
        """No source (config file, ``PROCESSOR_METRICS__PORT``, ``--metrics-port``) named the port.

        Then a taken port is not fatal: a second worker on the host serves on a free port instead.
        A port someone chose (a pod's probes and scrapers target it) that is taken stays an error.
        """
        return "port" not in self.model_fields_set


class ApiSettings(_Section):
    """``processor serve``: the HTTP API in front of the bucket (``processor.api``)."""

    #: Address to listen on (127.0.0.1: this machine only; 0.0.0.0 in a pod).
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_API_PORT, ge=0, le=65535)
    #: The environment variable holding the accepted bearer tokens, comma-separated. Unset or
    #: empty: the API is open (a warning is logged at start).
    keys_env: str = API_KEYS_ENV
    #: Bytes: the largest photo an upload may carry; the upload is cut off when it passes this.
    #: Default: pipeline.decode.max_bytes (what a worker would accept anyway).
    max_upload_bytes: int | None = Field(default=None, gt=0)
    #: The URL clients reach the API at (https://toys.example.com), for the links in answers;
    #: default: the URL of each request.
    public_url: str | None = None
    #: Folder under the inputs prefix that API uploads go to (inputs/api/<id>.<ext>).
    submit_prefix: str = "api/"
    #: The style ``POST /generate_image_rest_direct`` applies (default: the first of run.styles).
    direct_style: str | None = None
    max_wait_s: float = Field(default=DEFAULT_API_MAX_WAIT_S, ge=0)
    direct_timeout_s: float = Field(default=DEFAULT_API_DIRECT_TIMEOUT_S, gt=0)
    poll_s: float = Field(default=DEFAULT_API_POLL_S, gt=0)
    #: S3 / COS: variants are short-lived presigned URLs (the client fetches them from the store);
    #: false, or the local store: they are streamed through the API.
    presign: bool = True
    url_ttl_s: int = Field(default=DEFAULT_API_URL_TTL_S, ge=1, le=7 * 24 * 3600)
    #: Hosts webhooks may be sent to (exact names; ``*.example.com`` matches subdomains). Empty:
    #: webhooks are refused. Private and loopback addresses are refused unless named here.
    webhook_allow: list[str] = Field(default_factory=list)
    #: The environment variable holding the webhook signing secret (Standard Webhooks, whsec_...).
    webhook_secret_env: str = WEBHOOK_SECRET_ENV
    #: Origins allowed to call the API from a browser (CORS); empty: none.
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("submit_prefix")
    @classmethod
    def _folder(cls, value: str) -> str:
        value = value.strip("/")
        if not value or any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError("submit_prefix is a folder like 'api/' without '.' or '..' parts")
        return value + "/"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    store: StoreSettings = StoreSettings()
    prefixes: PrefixSettings = PrefixSettings()
    run: RunSettings = RunSettings()
    claims: ClaimSettings = ClaimSettings()
    pipeline: PipelineSettings = PipelineSettings()
    styles: dict[str, StyleSettings] = Field(default_factory=_default_styles)
    models: ModelSettings = ModelSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    caption: CaptionSettings = CaptionSettings()
    api: ApiSettings = ApiSettings()

    @model_validator(mode="after")
    def _styles_exist(self) -> Settings:
        missing = [name for name in self.run.styles if name not in self.styles]
        if missing:
            known = ", ".join(sorted(self.styles)) or "none"
            raise ValueError(f"run.styles names {missing} not defined under styles (defined: {known})")
        if not self.run.styles:
            raise ValueError("run.styles must name at least one style")
        problem = work_bound_problem(self.run.styles, self.styles, self.run)
        if problem:
            raise ValueError(f"run.styles {problem}")
        if self.api.direct_style is not None and self.api.direct_style not in self.styles:
            raise ValueError(f"api.direct_style {self.api.direct_style!r} is not defined under styles")
        if not self.run.allow_noncommercial:
            from processor.licenses import noncommercial_problem

            problem = noncommercial_problem(self.run.styles, self.styles)
            if problem:
                raise ValueError(f"run.styles {problem}")
        if self.run.order_variants_by == "structure" and not self.pipeline.structure_score:
            raise ValueError("run.order_variants_by: structure needs pipeline.structure_score: true "
                             "(or set order_variants_by: none)")
        if self.run.order_variants_by == "clip" and self.pipeline.clip_score is None:
            raise ValueError("run.order_variants_by: clip needs pipeline.clip_score: {model: <CLIP model>} "
                             "(or set order_variants_by: structure or none)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _FilteredEnv(settings_cls), _YamlSource(settings_cls))


class _FilteredEnv(PydanticBaseSettingsSource):
    """``PROCESSOR_<SECTION>__<KEY>`` variables; ``PROCESSOR_CONFIG`` (the file path) and the API's
    secret variables are not keys."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, value in os.environ.items():
            if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS_ENV:
                continue
            path = name[len(ENV_PREFIX) :].lower().split("__")
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"environment variable {name} conflicts with another PROCESSOR_ variable")
            node[path[-1]] = _parse_env_value(value)
        return data


def _parse_env_value(value: str) -> Any:
    """Lists and numbers arrive as YAML scalars/flow sequences: ``[toon, anime]``, ``30``."""
    try:
        return yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        return value


_yaml_data: dict[str, Any] = {}


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _yaml_data


def resolve_config_path(path: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """The config file to read and whether the user asked for it explicitly."""
    if path is not None:
        return Path(path), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), True
    return DEFAULT_CONFIG, False


def read_config_file(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"config file {path} does not exist (from --config or ${CONFIG_ENV})")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (store:, run:, ...)")
    return data


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration; every problem is a ``ConfigError`` naming key and source."""
    global _yaml_data
    config_path, required = resolve_config_path(path)
    _yaml_data = read_config_file(config_path, required)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_path, _yaml_data)) from None
    finally:
        _yaml_data = {}


def _describe(exc: ValidationError, path: Path, file_data: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"] if not str(part).startswith("function-")]
        # Drop pydantic's union tag (the engine, 'toon') that follows a style name: the key the
        # user wrote is styles.toon.variants, not styles.toon.toon.variants.
        if len(loc) > 2 and loc[0] == "styles" and loc[2] in _ENGINE_TAGS:
            del loc[2]
        msg = err["msg"]
        # A cross-field check on the whole tree has no location; by convention its message
        # starts with the key it is about ("run.styles names ..."), which finds the source.
        named = _KEY_FIRST.match(msg.removeprefix("Value error, "))
        if not loc and named:
            loc = named.group(1).split(".")
            msg = msg.removeprefix("Value error, ")
            lines.append(f"  {msg} (from {_source_of(loc, path, file_data)})")
            continue
        key = ".".join(loc) or "(top level)"
        source = _source_of(loc, path, file_data)
        if err["type"] == "list_type" and source.startswith("environment"):
            msg += "; in an environment variable write a list as [a, b]"
        lines.append(f"  {key}: {msg} (from {source})")
    return f"invalid configuration ({len(lines)} problem{'s' if len(lines) != 1 else ''}):\n" + "\n".join(lines)


#: Discriminator tags pydantic puts in a style's error location.
_ENGINE_TAGS = {"toon", "img2img", "instruct-pix2pix", "txt2img", "edit"}
_KEY_FIRST = re.compile(r"([a-z_]+\.[a-z_]+) ")


def _source_of(loc: list[str], path: Path, file_data: dict[str, Any]) -> str:
    env_name = ENV_PREFIX + "__".join(part.upper() for part in loc)
    if loc and env_name in os.environ:
        return f"environment {env_name}"
    # An unknown section or key set from a deeper variable (PROCESSOR_NOPE__KEY for section 'nope').
    below = sorted(n for n in os.environ if n.startswith(env_name + "__"))
    if loc and below:
        return f"environment {', '.join(below)}"
    node: Any = file_data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            break
    else:
        return str(path)
    if loc and isinstance(file_data, dict) and loc[0] in file_data:
        return str(path)
    return "defaults"
