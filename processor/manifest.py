"""The wire format: ``manifest.json`` (the commit of one input), failure records and cancel records.

Each is a pydantic model with a schema version; ``processor schema`` and
``docs/manifest.schema.json`` / ``docs/failure.schema.json`` / ``docs/cancel.schema.json`` export
their JSON Schema.
Readers must check ``schema`` and ignore fields they do not know.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_SCHEMA: Final = "toy-cartoonizer/manifest/v1"
#: Bytes: the most of a manifest or failure record anyone reads from the bucket. Ours are a few
#: KiB (a manifest grows about 1 KiB a variant); a larger object was not written by this
#: processor and is treated as unreadable, never downloaded whole.
MAX_RECORD_BYTES = 1024 * 1024
FAILURE_SCHEMA: Final = "toy-cartoonizer/failure/v1"
CANCEL_SCHEMA: Final = "toy-cartoonizer/cancel/v1"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode("utf-8") + b"\n"


class Source(_Model):
    """The input version a result is about: key, ETag and what decode saw."""

    key: str
    etag: str
    size: int
    width: int | None = None
    height: int | None = None
    format: str | None = None
    #: What decode did to the pixels: EXIF rotation, colour conversion, first frame of many.
    notes: list[str] = Field(default_factory=list)
    #: The description of the photo's embedded ICC profile ("Display P3"), from which decode
    #: converted the pixels to sRGB; None: no profile (read as sRGB) or an unreadable one (a note says so).
    color_profile: str | None = None
    #: The photo's original file name, when its upload recorded one (``x-amz-meta-filename``:
    #: ``processor submit``, the HTTP API): for people; the key is what identifies the input.
    filename: str | None = None


class Segmentation(_Model):
    """Which segmenter made the subject mask (``pipeline.mask``), and why a configured model did not."""

    kind: Literal["grabcut", "onnx", "transformers"]
    #: The configured model: an ONNX file or hub repo, or a transformers segmenter.
    model: str | None = None
    #: The file inside the hub repo (ONNX from the hub).
    file: str | None = None
    #: The hub commit loaded; None for a local file or folder.
    revision: str | None = None
    #: sha256 of the ONNX file that ran.
    sha256: str | None = None
    #: ONNX: the model family (input size, normalisation) and the onnxruntime execution provider.
    family: str | None = None
    provider: str | None = None
    #: Set when a model is configured but GrabCut made the mask: why (missing file, wrong hash,
    #: not loadable).
    fallback: str | None = None


class Background(_Model):
    """What a style's background stage did to one variant (``styles.<name>.background``)."""

    mode: Literal["inpaint", "generate", "instruct"]
    #: The background prompt (inpaint, generate) or the edit instruction (instruct).
    prompt: str | None = None
    negative: str | None = None
    model: str | None = None
    #: The hub commit loaded, or None for a local folder.
    revision: str | None = None
    #: The seed of this variant's background (None when it fell back).
    seed: int | None = None
    #: Key of the input's subject mask (``outputs/<path>/mask.png``).
    mask: str | None = None
    #: Key of the mask drawn over the photo (``outputs/<path>/mask-overlay.jpg``: background tinted,
    #: subject outlined), to see why a background went wrong.
    mask_overlay: str | None = None
    #: Fraction of the image the subject mask covers.
    coverage: float
    #: ``grabcut``, ``onnx:<model>`` or ``model:<segmenter>``.
    segmenter: str | None = None
    #: The segmenter's details (kind, model, revision, fallback reason).
    segmentation: Segmentation | None = None
    #: False when the mask was unusable and the variant is the transform alone.
    applied: bool
    #: Why the background was left unchanged (coverage out of bounds), else None.
    fallback: str | None = None


class ControlPreprocessor(_Model):
    """The preprocessor model that made a ControlNet's map from the input photo."""

    #: As configured: hub id or path.
    model: str
    #: The hub commit loaded, or None for a local file or folder.
    revision: str | None = None
    #: ``safetensors`` as published, or ``converted-from-pickle`` by ``processor models pull``.
    weights: Literal["safetensors", "converted-from-pickle"] = "safetensors"


#: ``control[].kind``: ``processor.models.loader.ControlKind``'s values.
ControlKindName = Literal["controlnet", "t2i-adapter"]


class Control(_Model):
    """A ControlNet or T2I-Adapter that steered a variant (``styles.<name>.control``) and its
    conditioning image."""

    #: The map type: ``canny``, ``lineart``, ``softedge`` or ``depth``.
    type: str
    model: str
    #: What ``model`` is: a ControlNet (ran beside the UNet per evaluation) or a T2I-Adapter (ran
    #: once per pipeline call). Manifests from before adapters were offered have only ControlNets.
    kind: ControlKindName = "controlnet"
    #: The hub commit loaded, or None for a local folder.
    revision: str | None = None
    #: controlnet_conditioning_scale or adapter_conditioning_scale.
    scale: float
    #: Fraction of the denoising steps the map steered.
    guidance_end: float
    #: Key of the conditioning image made from the input (``outputs/<path>/control-<type>.png``).
    image: str
    #: The map's own settings (canny: ``low``, ``high``).
    settings: dict[str, Any] = Field(default_factory=dict)
    #: The model that made the map (lineart, softedge, depth; ``control.preprocessor``); None for canny.
    preprocessor: ControlPreprocessor | None = None


class Structure(_Model):
    """How much of the photo's structure a variant kept (``processor.pipeline.structure``): Canny
    edge agreement within ``tolerance_px``, inside the subject mask."""

    #: 0-1: harmonic mean of precision and recall (1: every outline kept where it was).
    f1: float
    #: Share of the variant's edges near an edge of the photo.
    precision: float
    #: Share of the photo's edges the variant kept.
    recall: float
    #: ``subject`` (inside the subject mask) or ``image`` (no usable mask: the whole picture).
    region: Literal["subject", "image"]
    tolerance_px: int


class ClipSimilarity(_Model):
    """How much a variant still looks like its photo to CLIP (``processor.pipeline.clipscore``):
    the cosine similarity of the two image embeddings."""

    #: -1 to 1 (1: the same picture to CLIP).
    similarity: float
    #: ``subject`` (both cropped to the subject's box) or ``image`` (no usable mask: whole pictures).
    region: Literal["subject", "image"]
    #: The CLIP model as configured (``pipeline.clip_score.model``).
    model: str
    #: The hub commit loaded, or None for a local folder.
    revision: str | None = None


class LicenseRecord(_Model):
    """A model that made a variant and the licence its config declares (``license:``)."""

    #: What the model was to the variant: the style's own ``model``, or its ``lora``, ``lcm``,
    #: ``control``, ``background`` or ``ip_adapter`` model.
    role: Literal["model", "refiner", "lora", "lcm", "control", "background", "ip_adapter"]
    model: str
    #: As declared (``creativeml-openrail-m``, ``non-commercial``, ...); None: not declared.
    license: str | None = None


class ClipSourceRecord(_Model):
    """The picture a clip was animated from."""

    #: ``photo`` (the input itself) or ``variant`` (a still style's variant: ``image_from``).
    kind: Literal["photo", "variant"]
    style: str | None = None
    index: int | None = None
    seed: int | None = None
    #: Key of that variant's file (``outputs/<path>/<style>-<nn>.png``).
    key: str | None = None


class VideoRecord(_Model):
    """A clip (``engine: animate``): the variant's ``key`` is its MP4; this says what it holds."""

    frames: int
    fps: int
    duration_s: float
    #: The MP4's video: H.264 in 4:2:0 (``yuv420p``), its index first (plays while downloading).
    codec: Literal["h264"] = "h264"
    pixel_format: Literal["yuv420p"] = "yuv420p"
    #: Key of the animated WebP preview with the same frames (``<style>-<nn>.webp``), and its sha256.
    preview: str
    preview_sha256: str
    source: ClipSourceRecord


class Variant(_Model):
    """One output of one style, with how it was made and the hash of its bytes: a PNG, or for a
    clip (``video``) an MP4."""

    key: str
    style: str
    engine: str
    index: int
    seed: int
    width: int
    height: int
    sha256: str
    #: The engine's own parameters for this variant (colour count, rounds, prompt, ...).
    parameters: dict[str, Any] = Field(default_factory=dict)
    #: Set when the style changes the background (its remaining keys: size, steps, guidance, ...).
    background: Background | None = None
    #: The ControlNets or T2I-Adapters that steered this variant, in config order (empty: none).
    control: list[Control] = Field(default_factory=list)
    #: Structure kept from the photo (``pipeline.structure_score``); None when not scored.
    structure: Structure | None = None
    #: CLIP image similarity to the photo (``pipeline.clip_score``); None when not scored.
    clip: ClipSimilarity | None = None
    #: The models that made this variant, with their declared licences (empty: none, e.g. toon).
    licenses: list[LicenseRecord] = Field(default_factory=list)
    #: Set for a clip (``engine: animate``): frames, fps, duration, preview and source picture.
    video: VideoRecord | None = None


class WorkerInfo(_Model):
    """The worker that wrote a manifest or failure record."""

    id: str
    version: str
    device: str
    host: str | None = None


class CaptionInfo(_Model):
    """How the input was captioned (``caption.*``); each variant's ``parameters`` hold the final
    ``prompt`` and ``negative`` its style built from it."""

    #: ``fast``, ``classic``, ``best``, ``negative``, ``blip``.
    mode: str
    #: The caption kept for the prompt (``keep`` applied); None when a per-image prompt replaced it.
    text: str | None = None
    #: The interrogator's whole output.
    raw: str | None = None
    #: ``negative`` mode: the terms appended to the negative prompt.
    negative: str | None = None
    #: ``sidecar`` or ``metadata`` when that input's own prompt replaced the caption.
    replaced_by: str | None = None
    #: ``first-clause`` or ``full``.
    keep: str | None = None
    clip_model: str | None = None
    #: The hub commit of the CLIP weights (None for a local folder).
    clip_revision: str | None = None
    caption_model: str | None = None
    caption_revision: str | None = None
    #: Seconds spent captioning this input.
    seconds: float = 0.0


class Manifest(_Model):
    """``outputs/<path>/manifest.json``: the commit of one input version (written last)."""

    schema_: Literal["toy-cartoonizer/manifest/v1"] = Field(default=MANIFEST_SCHEMA, alias="schema")
    status: Literal["done"] = "done"
    source: Source
    variants: list[Variant]
    contact_sheet: str | None = None
    #: Seconds spent per stage (download, decode, caption, <style>, encode, upload).
    timings: dict[str, float] = Field(default_factory=dict)
    worker: WorkerInfo
    #: Which attempt committed: 1, or n + 1 after n attempts failed (``run.max_attempts``).
    attempt: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    #: The input's caption, when a style built its prompt from one (``caption.mode``).
    caption: CaptionInfo | None = None
    #: The OpenTelemetry trace (32 hex digits) of the worker's work on this input, when tracing was
    #: on (``tracing.enabled``): find its spans in the tracing backend with it.
    trace_id: str | None = None


class FailureRecord(_Model):
    """``failed/<path>.json``: why one input version failed, what to change, and whether it is
    retried (``final``)."""

    schema_: Literal["toy-cartoonizer/failure/v1"] = Field(default=FAILURE_SCHEMA, alias="schema")
    status: Literal["failed"] = "failed"
    source: Source
    #: The exception class, e.g. ``ImageTooLarge``.
    error: str
    message: str
    #: What the user should change so that the input succeeds.
    hint: str
    #: True when the input itself is bad (retrying the same bytes never helps).
    permanent: bool = True
    #: Failed attempts at this input version, counted against ``run.max_attempts``; 0 after
    #: ``processor retry`` requeued it (the budget starts over).
    attempts: int = 1
    worker: WorkerInfo
    created_at: datetime = Field(default_factory=utcnow)
    #: False while a worker will try this input version again (a stage crashed on attempt
    #: ``attempts`` < ``max_attempts``, or ``processor retry`` requeued it): no ``failed`` done
    #: marker is written, so the next scan offers it. True once nobody will: the input is bad
    #: (``permanent``) or the budget is spent. Records older than this field were all final.
    final: bool = True
    #: ``run.max_attempts`` of the worker that wrote the record (None in older records).
    max_attempts: int | None = None
    #: When ``processor retry`` last requeued this input (None when it never did).
    requeued_at: datetime | None = None
    #: The OpenTelemetry trace of the attempt that wrote this record, when tracing was on.
    trace_id: str | None = None


class CancelRecord(_Model):
    """``<state>/cancel/<path>.json``: a request to cancel one input version (``requested``) and,
    once it took effect, the record of it (``cancelled``): where the job was when it stopped
    (``processor.queue.cancel``)."""

    schema_: Literal["toy-cartoonizer/cancel/v1"] = Field(default=CANCEL_SCHEMA, alias="schema")
    status: Literal["requested", "cancelled"] = "requested"
    #: The input version cancelled: a new upload under the same key is new work, never cancelled by this.
    source: Source
    #: When that version was uploaded: a queued job's input is deleted, and its job keeps this date.
    submitted_at: datetime | None = None
    requested_at: datetime = Field(default_factory=utcnow)
    #: The API client that asked (None: an open server's anonymous caller).
    requested_by: str | None = None
    cancelled_at: datetime | None = None
    #: Where the job stopped: ``queued`` (removed before a worker took it), ``claimed`` (taken, not
    #: started) or the stage of the worker's progress (``style:<name>``, ``caption``).
    stage: str | None = None
    #: The progress within ``stage`` when the worker stopped (None: the engine reports none).
    round: int | None = None
    rounds: int | None = None
    step: int | None = None
    steps: int | None = None
    #: The worker that stopped it; None when the API removed a queued job.
    worker: WorkerInfo | None = None
    #: The OpenTelemetry trace of the worker's attempt, when tracing was on.
    trace_id: str | None = None


def json_schemas() -> dict[str, dict[str, Any]]:
    return {
        "manifest.schema.json": Manifest.model_json_schema(by_alias=True),
        "failure.schema.json": FailureRecord.model_json_schema(by_alias=True),
        "cancel.schema.json": CancelRecord.model_json_schema(by_alias=True),
    }
