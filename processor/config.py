"""One typed Settings tree.

Precedence: keyword arguments > environment ``PROCESSOR_<SECTION>__<KEY>`` > ``config.yaml`` >
defaults. The file is ``--config PATH``, else ``$PROCESSOR_CONFIG``, else ``./config.yaml`` (optional).
Unknown keys and bad values raise ``ConfigError`` naming the key and where it came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from processor.errors import ConfigError

ENV_PREFIX = "PROCESSOR_"
CONFIG_ENV = "PROCESSOR_CONFIG"
DEFAULT_CONFIG = Path("config.yaml")

#: Seconds a claim stays valid without renewal.
DEFAULT_CLAIM_TTL_S = 600.0
#: Seconds between claim renewals (well inside the TTL so one slow renewal does not lose it).
DEFAULT_CLAIM_RENEW_S = 120.0
#: Bytes: inputs larger than this are refused before download.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Pixels: a decoded image larger than this is refused before its pixels are allocated.
DEFAULT_MAX_PIXELS = 40_000_000
#: Pixels: the shorter side of an input must be at least this.
DEFAULT_MIN_SIDE = 64
#: Seconds between the daemon's full scans (incremental StartAfter scans in between).
DEFAULT_FULL_RESCAN_S = 300.0


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

    @field_validator("inputs", "outputs", "failed", "state")
    @classmethod
    def _normalise(cls, value: str) -> str:
        value = value.strip("/")
        if not value or any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError("a prefix is a non-empty path like 'inputs/' without '.' or '..' parts")
        return value + "/"

    @model_validator(mode="after")
    def _disjoint(self) -> PrefixSettings:
        names = {"inputs": self.inputs, "outputs": self.outputs, "failed": self.failed, "state": self.state}
        for a, pa in names.items():
            for b, pb in names.items():
                if a != b and pa.startswith(pb):
                    raise ValueError(f"prefixes.{a} ({pa!r}) must not lie inside prefixes.{b} ({pb!r})")
        return self


class DecodeSettings(_Section):
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, gt=0)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)
    min_side: int = Field(default=DEFAULT_MIN_SIDE, ge=1)


class PipelineSettings(_Section):
    decode: DecodeSettings = DecodeSettings()
    #: Write a contact sheet (the original beside every variant) per input.
    contact_sheet: bool = True
    #: Pixels: the contact sheet's tile height.
    contact_sheet_height: int = Field(default=256, ge=32)


class ToonStyle(_Section):
    """Classical OpenCV cartoon: edge-preserving smoothing, colour quantisation, bold edges."""

    engine: Literal["toon"] = "toon"
    variants: int = Field(default=4, ge=1, le=16)
    #: Variant i uses seed + i; the seed picks its colour count, smoothing and edge weight.
    seed: int = 0
    #: Pixels: the image is processed at most this long on its long side (then kept at that size).
    max_side: int = Field(default=1024, ge=64)
    #: Colour levels the variants draw from (k-means clusters).
    colors: tuple[int, int] = (6, 14)
    #: Bilateral smoothing passes the variants draw from.
    smoothing: tuple[int, int] = (1, 4)
    #: Edge line thickness (pixels) the variants draw from.
    edge_width: tuple[int, int] = (1, 3)

    @field_validator("colors", "smoothing", "edge_width")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        lo, hi = value
        if lo < 1 or hi < lo:
            raise ValueError("a range is [low, high] with 1 <= low <= high")
        return value


#: Schedulers a diffusion style can name (``processor.pipeline.diffusion.SCHEDULERS`` maps them).
SchedulerName = Literal["dpmpp-2m-karras", "dpmpp-2m", "euler-a", "euler", "ddim", "unipc", "pndm"]


class DiffusionRound(_Section):
    """One img2img pass; round k starts from round k-1's output."""

    #: 0-1: how much of the image is re-noised (diffusers runs int(steps * strength) denoising steps).
    strength: float = Field(gt=0, le=1)
    #: Classifier-free guidance scale (CFG).
    guidance: float = Field(default=7.5, ge=0)


class LoraSettings(_Section):
    #: A local .safetensors file or folder, or a hub id.
    path: str
    #: Adapter weight (0 = off, 1 = as trained).
    scale: float = 1.0
    #: The file inside a folder / hub repo, when it holds more than one.
    weight_name: str | None = None


class Img2ImgStyle(_Section):
    """Stable Diffusion img2img (SD 1.x / 2.x / SDXL, picked from the model) in one or more rounds."""

    engine: Literal["img2img"] = "img2img"
    #: Hub id (``nitrosocke/mo-di-diffusion``) or a local diffusers folder (``model_index.json`` inside).
    model: str
    #: A hub commit / tag / branch to pin (recommended: a commit hash).
    revision: str | None = None
    #: Style words appended to the prompt.
    trigger: str = ""
    #: The subject text before the trigger words (a sidecar's ``prompt`` sets it per image).
    prompt: str | None = None
    negative: str = ""
    rounds: list[DiffusionRound] = Field(default_factory=lambda: [DiffusionRound(strength=0.6)], min_length=1)
    #: Scheduler steps per round; a round denoises int(steps * strength) of them.
    steps: int = Field(default=30, ge=1, le=500)
    scheduler: SchedulerName = "dpmpp-2m-karras"
    variants: int = Field(default=4, ge=1, le=16)
    #: Variant i uses seed + i.
    seed: int = Field(default=0, ge=0)
    #: Pixels: the working long side (multiple of 8); default the model's native resolution
    #: (512 for SD 1.x, 768 for SD 2.x-v, 1024 for SDXL).
    size: int | None = Field(default=None, ge=64, le=4096)
    lora: LoraSettings | None = None

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


class InstructPix2PixStyle(_Section):
    """An instruct-pix2pix edit ("Put a waterfall in the background")."""

    engine: Literal["instruct-pix2pix"] = "instruct-pix2pix"
    model: str = "timbrooks/instruct-pix2pix"
    revision: str | None = None
    #: The edit, in words (a sidecar's ``instruction`` replaces it per image).
    instruction: str
    negative: str = ""
    #: How closely to follow the input image (instruct-pix2pix's image_guidance_scale; 1 = off).
    image_guidance: float = Field(default=1.5, ge=0)
    #: How closely to follow the instruction (text CFG scale).
    guidance: float = Field(default=7.5, ge=0)
    steps: int = Field(default=20, ge=1, le=500)
    scheduler: SchedulerName = "euler-a"
    variants: int = Field(default=4, ge=1, le=16)
    seed: int = Field(default=0, ge=0)
    size: int | None = Field(default=None, ge=64, le=4096)

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"size {value} must be a multiple of 8")
        return value


StyleSettings = Annotated[Union[ToonStyle, Img2ImgStyle, InstructPix2PixStyle], Field(discriminator="engine")]


def _default_styles() -> dict[str, Any]:
    return {"toon": ToonStyle()}


class RunSettings(_Section):
    #: Styles every input gets (names under ``styles``).
    styles: list[str] = ["toon"]
    #: Seconds between scans while the daemon has work.
    poll_interval_s: float = Field(default=10.0, gt=0)
    #: Seconds: the longest wait between scans while idle (doubles from poll_interval_s).
    idle_backoff_max_s: float = Field(default=300.0, gt=0)
    #: Seconds between the daemon's full scans; in between it lists only inputs after the last key
    #: seen (StartAfter). An upload that sorts before that key is found by the next full scan.
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

    @model_validator(mode="after")
    def _shard_in_range(self) -> RunSettings:
        if self.shard_index is not None and self.shard_index >= self.shard_count:
            raise ValueError(f"run.shard_index {self.shard_index} must be < run.shard_count {self.shard_count}")
        return self


class ClaimSettings(_Section):
    ttl_s: float = Field(default=DEFAULT_CLAIM_TTL_S, gt=0)
    renew_s: float = Field(default=DEFAULT_CLAIM_RENEW_S, gt=0)

    @model_validator(mode="after")
    def _renew_inside_ttl(self) -> ClaimSettings:
        if self.renew_s >= self.ttl_s:
            raise ValueError(f"claims.renew_s ({self.renew_s}) must be shorter than claims.ttl_s ({self.ttl_s})")
        return self


class PerformanceSettings(_Section):
    """GPU-path switches applied when a pipeline loads (``processor.accel`` says why each default)."""

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


class ModelSettings(_Section):
    """How diffusion weights are loaded (``processor.models``)."""

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

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            raise ValueError("device is auto, cpu, cuda, cuda:N or mps")
        return value


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``auto``: JSON lines when stderr is not a terminal, readable text when it is.
    format: Literal["auto", "json", "text"] = "auto"


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

    @model_validator(mode="after")
    def _styles_exist(self) -> Settings:
        missing = [name for name in self.run.styles if name not in self.styles]
        if missing:
            known = ", ".join(sorted(self.styles)) or "none"
            raise ValueError(f"run.styles names {missing} not defined under styles (defined: {known})")
        if not self.run.styles:
            raise ValueError("run.styles must name at least one style")
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
    """``PROCESSOR_<SECTION>__<KEY>`` variables; ``PROCESSOR_CONFIG`` (the file path) is not a key."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, value in os.environ.items():
            if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
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
        # Drop pydantic's union tag (e.g. 'toon') that follows a style name.
        key = ".".join(loc) or "(top level)"
        lines.append(f"  {key}: {err['msg']} (from {_source_of(loc, path, file_data)})")
    return f"invalid configuration ({len(lines)} problem{'s' if len(lines) != 1 else ''}):\n" + "\n".join(lines)


def _source_of(loc: list[str], path: Path, file_data: dict[str, Any]) -> str:
    env_name = ENV_PREFIX + "__".join(part.upper() for part in loc)
    if loc and env_name in os.environ:
        return f"environment {env_name}"
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
