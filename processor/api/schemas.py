"""The API's request and response bodies (typed; published in its OpenAPI document,
``processor.api.openapi``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from processor.config.base import BackgroundMode, PromptText, Seed, VariantCount
from processor.queue.jobs import JobStatus
from processor.queue.webhook_records import WebhookEvent


class Links(BaseModel):
    self: str
    events: str
    retry: str | None = None


class JobCreated(BaseModel):
    id: str
    status: JobStatus
    links: Links


class Progress(BaseModel):
    """What the worker holding the job is doing (from its claim; renewed every claims.progress_s)."""

    #: ``claimed`` (in the worker's queue), ``download``, ``caption``, ``style:<name>``, ``upload``.
    stage: str
    round: int | None = None
    rounds: int | None = None
    step: int | None = None
    steps: int | None = None


class VariantOut(BaseModel):
    url: str
    #: The same file, answered with ``Content-Disposition: attachment`` (a browser saves it).
    download: str
    style: str
    index: int
    seed: int
    width: int
    height: int
    #: ``image`` (``url`` is a PNG) or ``video`` (``url`` is an H.264 MP4: ``engine: animate``).
    kind: Literal["image", "video"] = "image"
    #: A clip's animated WebP preview (the same frames; the ``<video>`` poster), its frame count,
    #: frames per second and seconds.
    preview: str | None = None
    frames: int | None = None
    fps: int | None = None
    duration_s: float | None = None


class FailureOut(BaseModel):
    error: str
    message: str
    #: What to change so that the input succeeds.
    hint: str
    #: True when the photo itself is bad (a retry of the same bytes fails again).
    permanent: bool
    attempts: int


class CancelOut(BaseModel):
    """How a cancelled job stopped (its cancel record, ``docs/cancel.schema.json``)."""

    requested_at: datetime
    cancelled_at: datetime | None = None
    #: ``queued`` (removed before a worker took it: its input is gone), ``claimed`` (taken, not
    #: started), or the worker's stage (``style:<name>``) with its ``step`` of ``steps``.
    stage: str | None = None
    round: int | None = None
    rounds: int | None = None
    step: int | None = None
    steps: int | None = None


class JobOut(BaseModel):
    id: str
    status: JobStatus
    #: The input's key in the bucket.
    input: str
    #: The photo's original file name, when its upload recorded one (``processor submit``, a form
    #: upload's file name); null otherwise.
    filename: str | None = None
    submitted_at: datetime
    progress: Progress | None = None
    variants: list[VariantOut] = Field(default_factory=list)
    contact_sheet: str | None = None
    contact_sheet_download: str | None = None
    #: The subject mask drawn over the photo (background tinted, subject outlined), when a style
    #: changed the background: where to look when a background went wrong.
    mask_overlay: str | None = None
    #: The manifest (``docs/manifest.schema.json``), when done.
    manifest: dict[str, Any] | None = None
    #: The failure record (``docs/failure.schema.json``), when failed.
    failure: FailureOut | None = None
    #: How the job stopped, when cancelled.
    cancel: CancelOut | None = None
    #: Why a done job has no manifest, or a failed one no failure record (the bucket says it
    #: ended, but that record is gone or unreadable), and what to do; null otherwise.
    detail: str | None = None
    #: A queued job that a worker took and could not run: a style it asks for cannot load there
    #: (``StyleUnavailable``, the operator's to fix). It waits for a worker that can; null otherwise.
    waiting: FailureOut | None = None
    links: Links


class JobList(BaseModel):
    jobs: list[JobOut]
    #: Pass as ``cursor`` for the next page; null on the last page.
    next_cursor: str | None = None


class DirectRequest(BaseModel):
    """The original prototype's request body, unchanged."""

    initial_image: str
    prompt: str = ""
    negative_prompt: str = ""
    final_images_to_return: int = Field(default=1, ge=1, le=16)
    seed: int | None = None


class DirectResponse(BaseModel):
    #: Base64 PNGs, one per variant.
    generated_images: list[str]
    #: The first of them, when one was asked for: the key the prototype's first (Flask) server answered.
    generated_image: str | None = None
    #: The style that made them (also the ``X-Processor-Style`` header): ``api.direct_style``, else
    #: the first of ``run.styles``.
    style: str
    #: Request fields that style does not use (a toon style takes no prompt): sent, and ignored.
    ignored: list[str] = Field(default_factory=list)


class StyleOut(BaseModel):
    """One style the server's configuration defines, and whether a job can get it now."""

    name: str
    engine: str
    #: In run.styles: what a job that names no styles gets.
    default: bool
    #: Offered: this service runs its weights' licence and, while workers run, one of them can load
    #: it. A job may name a style that is not offered; it waits for a worker that can.
    offered: bool
    #: The running workers that can run it.
    workers: list[str] = Field(default_factory=list)
    #: Why it is not offered; null when it is.
    reason: str | None = None


class StylesOut(BaseModel):
    """``GET /v1/styles``."""

    styles: list[StyleOut]
    #: Running workers (their capabilities records are live); null when the records could not be read.
    workers: int | None
    #: "no worker is running: jobs will wait until one starts", while none runs; null otherwise.
    warning: str | None = None


class WorkerStyleOut(BaseModel):
    name: str
    #: ``ready`` (its own, loaded), ``loading``, ``loadable`` (on first use) or ``unavailable``.
    state: str
    reason: str | None = None


class WorkerOut(BaseModel):
    """One running worker, from its capabilities record."""

    id: str
    version: str
    device: str
    #: ``starting`` (loading its styles), ``ready`` or ``stopping``.
    phase: str
    started_at: datetime
    #: Seconds since it last rewrote its record (the store's clock).
    last_seen_s: float
    run_styles: list[str]
    #: The optional extras installed where it runs.
    extras: list[str]
    styles: list[WorkerStyleOut]


class WorkersOut(BaseModel):
    """``GET /v1/workers``."""

    workers: list[WorkerOut]
    #: Records of workers that stopped without removing theirs (aged out) and records that are not ours.
    stale: int = 0
    unreadable: int = 0


class StreamEnded(BaseModel):
    """The data of an event stream's ``expired`` event (where the job was when the stream reached
    its lifetime), and of its ``failed`` event for a job whose input was deleted while streamed."""

    id: str
    status: JobStatus
    detail: str


class FieldError(BaseModel):
    field: str | None
    message: str


class ProblemOut(BaseModel):
    """Every error (``application/problem+json``, RFC 9457; ``processor.api.problems``)."""

    model_config = ConfigDict(extra="allow")

    #: ``about:blank``: the status says what kind of problem it is.
    type: str = "about:blank"
    #: The status phrase.
    title: str
    status: int
    #: What was wrong.
    detail: str
    #: The request field or header at fault, when there is one.
    field: str | None = None
    #: What to change.
    hint: str | None = None
    #: One entry per bad field.
    errors: list[FieldError] | None = None


class JobFields(BaseModel):
    """The optional fields of ``POST /v1/jobs`` (``processor.api.validate.FIELDS``). Limits the
    server's config sets (which styles exist, what a style takes) are checked too: a value out of
    them is a 422 problem naming the field."""

    model_config = ConfigDict(extra="forbid")

    #: Styles for this photo instead of the server's (run.styles): repeated form fields, a list, or
    #: comma-separated.
    styles: list[str] | str | None = None
    variants: VariantCount | None = None
    seed: Seed | None = None
    #: Replaces the caption in the styles that build a prompt.
    prompt: PromptText | None = None
    negative: PromptText | None = None
    #: An instruct-pix2pix edit instruction.
    instruction: PromptText | None = None
    background_mode: BackgroundMode | None = None
    background_prompt: PromptText | None = None
    #: Where to POST the job when it ends (a host on api.webhook_allow), signed (Standard Webhooks).
    webhook: str | None = Field(default=None, json_schema_extra={"format": "uri"})
    #: The ends of the job the webhook is sent for; default: all of them.
    webhook_events: list[WebhookEvent] | WebhookEvent | None = None


class JobJson(JobFields):
    """``POST /v1/jobs`` as ``application/json``."""

    #: The photo's bytes, base64 (RFC 4648), or a ``data:`` URL.
    image: str = Field(json_schema_extra={"contentEncoding": "base64"})
    #: A picture of the look: base64, or the key of a picture under prefixes.styles.
    style_image: str | None = None


class JobForm(JobFields):
    """``POST /v1/jobs`` as ``multipart/form-data``."""

    #: The photo file (JPEG, PNG, WebP, HEIC, AVIF, ...).
    image: bytes
    #: A picture of the look: a file, or the key of a picture under prefixes.styles.
    style_image: bytes | str | None = None
