"""The non-style sections of the settings tree: store, prefixes, run, claims, models, caption, log,
tracing, metrics, api (the pipeline section is ``processor.config.pipeline``'s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from processor.config.base import (
    API_KEYS_ENV,
    DEFAULT_API_DIRECT_TIMEOUT_S,
    DEFAULT_API_MAX_WAIT_S,
    DEFAULT_API_POLL_S,
    DEFAULT_API_PORT,
    DEFAULT_API_URL_TTL_S,
    DEFAULT_CLAIM_MAX_TTL_S,
    DEFAULT_CLAIM_PROGRESS_S,
    DEFAULT_CLAIM_RENEW_S,
    DEFAULT_CLAIM_TTL_S,
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_FULL_RESCAN_S,
    DEFAULT_HINT_POLL_S,
    DEFAULT_IDLE_BACKOFF_MAX_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_MAX_STYLES_PER_INPUT,
    DEFAULT_MAX_VARIANTS_PER_INPUT,
    DEFAULT_METRICS_PORT,
    DEFAULT_METRICS_STALL_S,
    DEFAULT_RELIST_S,
    WEBHOOK_SECRET_ENV,
    Section,
)
from processor.names import is_plain_path


class StoreSettings(Section):
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
    #: Seconds a one-shot command (status, results, retry, submit, doctor, run --once at start)
    #: waits on a store that does not answer, retries included, before it gives up (exit 8); the
    #: daemons (run, serve) keep the retries above.
    command_timeout_s: float = Field(default=DEFAULT_COMMAND_TIMEOUT_S, ge=5)

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


class PrefixSettings(Section):
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
        if not is_plain_path(value):
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


class RunSettings(Section):
    #: Styles every input gets (names under ``styles``).
    styles: list[str] = Field(default_factory=lambda: ["toon"])
    #: Order of each style's variants in the manifest and on the contact sheet: ``none`` (by
    #: index), ``structure`` (best structure score first; needs pipeline.structure_score) or
    #: ``clip`` (most CLIP-similar to the photo first; needs pipeline.clip_score).
    order_variants_by: Literal["none", "structure", "clip"] = "none"
    #: Seconds between scans while the daemon has work.
    poll_interval_s: float = Field(default=10.0, gt=0)
    #: Seconds: the longest wait between scans while idle (doubles from poll_interval_s); the worst
    #: pickup of an input that no hint announced.
    idle_backoff_max_s: float = Field(default=DEFAULT_IDLE_BACKOFF_MAX_S, gt=0)
    #: Where an idle daemon learns of new inputs between scans (``processor.queue.hints``):
    #: ``bucket`` (the rescan hint the API and ``processor submit`` write, HEADed every
    #: ``hint_poll_s``), ``local`` (the local store's inputs folder, watched by the OS), ``seaweedfs``
    #: (the filer's metadata subscription; needs ``seaweedfs_filer``), ``sqs`` (S3 event notifications
    #: in an SQS queue; needs ``sqs_queue_url``). Unset: bucket, and local on the local store; ``[]``:
    #: scans alone.
    hints: list[Literal["bucket", "local", "seaweedfs", "sqs"]] | None = None
    #: Seconds between the ``bucket`` hint source's HEADs of the rescan hint.
    hint_poll_s: float = Field(default=DEFAULT_HINT_POLL_S, gt=0, allow_inf_nan=False)
    #: ``seaweedfs`` hints: the filer's ``host:port`` (``host:port.grpcport`` when gRPC is not port + 10000).
    seaweedfs_filer: str | None = None
    #: ``sqs`` hints: the URL of the queue the bucket's ``s3:ObjectCreated:*`` notifications go to.
    sqs_queue_url: str | None = None
    #: Processes that compute items of CPU-only styles (toon, masks) at once; unset: the node's
    #: cores. Styles that load a PyTorch model compute one item at a time in the worker itself.
    cpu_workers: int | None = Field(default=None, ge=1, le=256)
    #: Seconds between the daemon's full scans; in between it lists only inputs after the last key
    #: seen (StartAfter). An upload that sorts before that key is found by the next full scan, or by
    #: the next scan when `processor submit` / `processor retry` wrote the rescan hint (rescan.py).
    full_rescan_s: float = Field(default=DEFAULT_FULL_RESCAN_S, gt=0)
    #: Seconds between the daemon's listings of the whole inputs prefix (no done markers) between full
    #: scans: what finds, without a hint, an upload that sorts before the last key seen; 0: only full scans.
    relist_s: float = Field(default=DEFAULT_RELIST_S, ge=0, allow_inf_nan=False)
    #: Inputs downloaded and decoded ahead of the one computing.
    prefetch: int = Field(default=2, ge=0, le=64)
    #: Inputs a diffusion style (img2img) renders in one pipeline call when they are already
    #: prepared: the compute stage takes those waiting, never waits for more. Each input's rows keep
    #: their own prompt and seeded generators; 1: one input at a time (docs/benchmarks.md,
    #: "Inputs in one call").
    batch_inputs: int = Field(default=1, ge=1, le=64)
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


class ClaimSettings(Section):
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


class PerformanceSettings(Section):
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


class ModelSettings(Section):
    """How diffusion weights are loaded (``processor.models.loader``)."""

    #: ``auto`` (CUDA when PyTorch sees a GPU, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
    device: str = "auto"
    #: ``auto``: float32 on the CPU; on CUDA the dtype the model's family wants (bfloat16 for FLUX.1,
    #: SD 3.5, FLUX.1 Kontext and Qwen-Image-Edit, float16 for the rest: ``processor.models.families``).
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


class CaptionSettings(Section):
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


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``auto``: JSON lines when stderr is not a terminal, readable text when it is.
    format: Literal["auto", "json", "text"] = "auto"


class TracingSettings(Section):
    """Optional OpenTelemetry traces of the worker's items and the API's requests (``processor.tracing``;
    needs the ``otel`` extra)."""

    enabled: bool = False
    #: ``otlp``: OTLP over HTTP, where the standard ``OTEL_EXPORTER_OTLP_*`` variables say;
    #: ``console``: spans printed to stderr (to try it out).
    exporter: Literal["otlp", "console"] = "otlp"
    #: Fraction of traces kept (0-1); a trace the caller sampled is kept whatever this says.
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class MetricsSettings(Section):
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


#: Bytes of request bodies all of one API replica's requests may hold at once (the sum of every
#: upload in flight): past it, a request is answered 503 with Retry-After. Parsing a JSON body
#: costs about three times its size at its peak, so this bounds the replica's upload memory to
#: about 3 x this plus its idle 100 MiB: under the API pod's 1 GiB limit with a margin. At least
#: the largest single request (two base64 photos at the upload cap: 134 MiB at the defaults).
DEFAULT_API_BODY_BUDGET_BYTES = 160 * 1024 * 1024
#: Event streams one API replica serves at once, in all and per client.
DEFAULT_API_MAX_STREAMS = 64
DEFAULT_API_MAX_STREAMS_PER_CLIENT = 8
#: Seconds an event stream lasts at most; the client reconnects (EventSource does it by itself).
DEFAULT_API_STREAM_MAX_S = 300.0
#: Seconds after which a request's Idempotency-Key whose job was never written (its writer died
#: between the key's record and the photo) is taken over by a repeat of the request. Far longer
#: than writing a job takes, retries included.
DEFAULT_API_IDEMPOTENCY_TAKEOVER_S = 60.0
#: Seconds a client has to send a request's headers (slow clients hold a connection otherwise).
DEFAULT_API_HEADER_TIMEOUT_S = 10.0
#: Connections one API replica keeps open at once; past it new requests are answered 503.
DEFAULT_API_MAX_CONNECTIONS = 256


class ApiSettings(Section):
    """``processor serve``: the HTTP API in front of the bucket (``processor.api``)."""

    #: Address to listen on (127.0.0.1: this machine only; 0.0.0.0 in a pod).
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_API_PORT, ge=0, le=65535)
    #: The environment variable holding the API's clients, comma-separated: ``token``,
    #: ``name:token`` or ``name:token:admin`` (``processor.api.clients``). Unset or empty: ``serve``
    #: makes one admin token at start and prints the URL that logs a browser in with it.
    keys_env: str = API_KEYS_ENV
    #: Serve without any token (everyone is an admin). Only for a trusted machine: the server then
    #: answers only requests whose Host is its own (``allowed_hosts``) and refuses other sites'
    #: Origins, so web pages and DNS rebinding cannot reach it through a browser.
    open: bool = False
    #: Host names an open server answers besides loopback (localhost, 127.0.0.1, ::1), the address
    #: it listens on and the host of ``public_url``.
    allowed_hosts: list[str] = Field(default_factory=list)
    body_budget_bytes: int = Field(default=DEFAULT_API_BODY_BUDGET_BYTES, gt=0)
    max_streams: int = Field(default=DEFAULT_API_MAX_STREAMS, ge=1)
    max_streams_per_client: int = Field(default=DEFAULT_API_MAX_STREAMS_PER_CLIENT, ge=1)
    stream_max_s: float = Field(default=DEFAULT_API_STREAM_MAX_S, gt=0)
    idempotency_takeover_s: float = Field(default=DEFAULT_API_IDEMPOTENCY_TAKEOVER_S, gt=0)
    header_timeout_s: float = Field(default=DEFAULT_API_HEADER_TIMEOUT_S, gt=0)
    max_connections: int = Field(default=DEFAULT_API_MAX_CONNECTIONS, ge=1)
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
        if not is_plain_path(value):
            raise ValueError("submit_prefix is a folder like 'api/' without '.' or '..' parts")
        return value + "/"
