"""The API's response bodies (typed; FastAPI publishes them in its OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from processor.queue.jobs import JobStatus


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


class FailureOut(BaseModel):
    error: str
    message: str
    #: What to change so that the input succeeds.
    hint: str
    #: True when the photo itself is bad (a retry of the same bytes fails again).
    permanent: bool
    attempts: int


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
    #: The manifest (``docs/manifest.schema.json``), when done.
    manifest: dict[str, Any] | None = None
    #: The failure record (``docs/failure.schema.json``), when failed.
    failure: FailureOut | None = None
    #: Why a done job has no manifest, or a failed one no failure record (the bucket says it
    #: ended, but that record is gone or unreadable), and what to do; null otherwise.
    detail: str | None = None
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
