"""The settings' building blocks: the section base class, defaults and bounds every section shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "PROCESSOR_"
CONFIG_ENV = "PROCESSOR_CONFIG"
#: The default variables of the API's secrets (``api.keys_env``, ``api.webhook_secret_env``):
#: values, not settings keys, so never read into the settings tree (nor shown in its errors).
API_KEYS_ENV = "PROCESSOR_API_KEYS"
WEBHOOK_SECRET_ENV = "PROCESSOR_WEBHOOK_SECRET"
#: The token ``processor submit --api`` sends (a client's, of those in PROCESSOR_API_KEYS).
API_TOKEN_ENV = "PROCESSOR_API_TOKEN"
NOT_SETTINGS_ENV = frozenset({CONFIG_ENV, API_KEYS_ENV, WEBHOOK_SECRET_ENV, API_TOKEN_ENV})
DEFAULT_CONFIG = Path("config.yaml")

#: Seconds a claim stays valid without renewal.
DEFAULT_CLAIM_TTL_S = 600.0
#: Seconds between claim renewals (well inside the TTL so one slow renewal does not lose it).
DEFAULT_CLAIM_RENEW_S = 120.0
#: Seconds between progress-carrying claim renewals of an item being worked on: often enough for
#: a progress bar, and still one small PUT per running item per period, never one per step.
DEFAULT_CLAIM_PROGRESS_S = 2.0
#: Seconds a one-shot command waits on a store that does not answer before it gives up: a person
#: is waiting, and a refused port already fails at once; a daemon retries far longer.
DEFAULT_COMMAND_TIMEOUT_S = 30.0
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
#: Seconds: the longest wait between an idle daemon's scans (its back-off doubles up to this). It
#: bounds the pickup of an input no hint announced: 30 s costs two requests (a HEAD and a LIST)
#: 120 times an idle hour.
DEFAULT_IDLE_BACKOFF_MAX_S = 30.0
#: Seconds between an idle daemon's listings of the whole inputs prefix (without done markers)
#: between full scans: the worst pickup of an upload no hint announced that sorts before the last
#: key seen. ⌈N / 1000⌉ LISTs for N inputs, 120 times an idle hour.
DEFAULT_RELIST_S = 30.0
#: Seconds between the ``bucket`` hint source's HEADs of the rescan hint: how soon a worker in
#: another pod learns of a job the API wrote (3,600 HEADs an idle hour).
DEFAULT_HINT_POLL_S = 1.0
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
#: Frames of one clip (``engine: animate``): LTX-Video's longest recommended clip (8 x 32 + 1).
MAX_FRAMES = 257
#: Frames per second of a clip.
MAX_FPS = 60
#: ``pipeline.video.max_frames``: the longest clip a style or sidecar may ask for, every family's
#: default clip included (Wan 2.2 TI2V and LTX-Video: 121 frames).
DEFAULT_VIDEO_MAX_FRAMES = 121
#: Pixels: ``pipeline.video.max_size``, the longest working side of a clip (Wan's 720p: 1280).
DEFAULT_VIDEO_MAX_SIZE = 1280
#: ``pipeline.video.max_decode_chunk_size``: frames SVD's VAE may decode at once (SVD-XT's clip).
DEFAULT_VIDEO_MAX_DECODE_CHUNK = 25
#: x264's constant rate factor for the MP4s (0 lossless .. 51; 18 looks lossless to most eyes).
DEFAULT_MP4_CRF = 18
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
VariantCount = Annotated[int, Field(ge=1, le=MAX_VARIANTS)]
PromptText = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
FrameCount = Annotated[int, Field(ge=2, le=MAX_FRAMES)]
FramesPerSecond = Annotated[int, Field(ge=1, le=MAX_FPS)]
BackgroundMode = Literal["none", "inpaint", "generate", "instruct"]
#: A model's license, as its model card names it (``license:`` on a style and on its LoRA, LCM-LoRA,
#: ControlNet and background models). ``non-commercial`` covers every licence that forbids
#: commercial use (FLUX.1-dev's, CC BY-NC); ``other`` is anything else (read the card).
ModelLicense = Literal["apache-2.0", "mit", "openrail", "openrail++", "creativeml-openrail-m", "non-commercial",
                       "other"]
#: The licences ``run.allow_noncommercial: false`` refuses.
NONCOMMERCIAL_LICENSES = frozenset({"non-commercial"})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ModelRef:
    """A model as the config names it: where it is, the revision pinned, the licence declared, and
    the file inside it where the folder or repo holds several. The value every section that names
    weights gives (``.ref``), and what the loader, the licence check and ``models pull`` take."""

    #: Hub id, local folder or file, or ``bucket:<key>`` (LoRAs).
    model: str
    #: A hub commit / tag / branch (None: the default branch, or a local path).
    revision: str | None = None
    #: As declared in config (``license:``); None: not declared.
    license: str | None = None
    #: The weights file inside ``model`` (LoRAs, IP-Adapters, preprocessors).
    weight_name: str | None = None


class ModelReference(Section):
    """The keys of a section that names one model: ``model``, ``revision``, ``license``."""

    #: Hub id or a local folder.
    model: str
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    #: The model's license (its model card); recorded in every variant, checked by run.allow_noncommercial.
    license: ModelLicense | None = None

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model, self.revision, self.license)
