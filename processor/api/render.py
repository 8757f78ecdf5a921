"""A job as the API shows it: ``JobState`` (from the bucket) -> ``JobOut`` (the response body),
with the URLs of its files. Every route, the pages and the webhooks render jobs here."""

from __future__ import annotations

import logging

from starlette.requests import Request

from processor.api.schemas import CancelOut, FailureOut, JobOut, Links, Progress, VariantOut
from processor.config.sections import ApiSettings
from processor.manifest import FailureRecord
from processor.queue.jobs import JobState, JobStatus
from processor.queue.protocol import BucketQueue

log = logging.getLogger("processor.api")


class JobRenderer:
    """Renders jobs for one API (its settings and its bucket, which may sign file URLs)."""

    def __init__(self, api: ApiSettings, queue: BucketQueue) -> None:
        self.api = api
        self.queue = queue

    def base_url(self, request: Request) -> str:
        """Where clients reach this API: ``api.public_url``, else the request's own base URL."""
        return (self.api.public_url or str(request.base_url)).rstrip("/")

    @staticmethod
    def links(base: str, job: str, status: JobStatus | None = None, *, waiting: bool = False) -> Links:
        root = f"{base}/v1/jobs/{job}"
        return Links(self=root, events=root + "/events",
                     retry=root + "/retry" if status is JobStatus.failed or waiting else None)

    def file_name(self, state: JobState, key: str) -> str | None:
        """The plain name of ``key`` in the job's output folder; None (logged) for any other key:
        whoever can write the bucket can write a manifest, and the API must not sign or serve
        whatever key one names (the same rule as ``processor results``)."""
        name = self.queue.layout.for_input(state.input_key).output_name(key)
        if name is None:
            log.warning("manifest_key_refused", extra={"job": state.id, "key": key})
        return name

    def file_url(self, base: str, state: JobState, key: str, *, download: bool = False) -> str | None:
        """A URL for one of the job's files, or None for a key outside its output folder.
        ``download``: a URL whose answer says ``Content-Disposition: attachment`` (a browser saves
        it instead of showing it)."""
        name = self.file_name(state, key)
        if name is None:
            return None
        if self.api.presign:
            # Signing is an optimisation with a safe fallback: whatever stops it (a COS store with an
            # IAM API key cannot sign), the file is streamed through the API instead.
            try:
                signed = self.queue.presigned_url(key, self.api.url_ttl_s, attachment=download)
            except Exception as exc:  # noqa: BLE001 - any signing failure falls back to streaming
                log.debug("presign_failed", extra={"error": type(exc).__name__})
                signed = None
            if signed:
                return signed
        return f"{base}/v1/jobs/{state.id}/files/{name}" + ("?download=1" if download else "")

    def render(self, base: str, state: JobState) -> JobOut:
        """The job as every route (and the webhook) shows it; URLs under ``base``."""
        out = JobOut(id=state.id, status=state.status, input=state.input_key, filename=state.filename,
                     submitted_at=state.submitted_at,
                     links=self.links(base, state.id, state.status, waiting=state.waiting is not None),
                     detail=state.detail)
        if state.progress is not None:
            p = state.progress
            out.progress = Progress(stage=p.stage, round=p.round, rounds=p.rounds, step=p.step, steps=p.steps)
        if state.manifest is not None:
            for v in state.manifest.variants:
                url, download = self.file_url(base, state, v.key), self.file_url(base, state, v.key, download=True)
                if url is None or download is None:
                    continue
                shown = VariantOut(url=url, download=download, style=v.style, index=v.index, seed=v.seed,
                                   width=v.width, height=v.height)
                if v.video is not None:  # a clip: the MP4 plays, its WebP preview is the poster
                    shown = shown.model_copy(update={
                        "kind": "video", "preview": self.file_url(base, state, v.video.preview),
                        "frames": v.video.frames, "fps": v.video.fps, "duration_s": v.video.duration_s})
                out.variants.append(shown)
            overlay = next((v.background.mask_overlay for v in state.manifest.variants
                            if v.background is not None and v.background.mask_overlay), None)
            if overlay:
                out.mask_overlay = self.file_url(base, state, overlay)
            if state.manifest.contact_sheet:
                out.contact_sheet = self.file_url(base, state, state.manifest.contact_sheet)
                out.contact_sheet_download = self.file_url(base, state, state.manifest.contact_sheet, download=True)
            out.manifest = state.manifest.model_dump(mode="json", by_alias=True)
        if state.failure is not None:
            out.failure = _failure(state.failure)
        if state.waiting is not None:
            out.waiting = _failure(state.waiting)
        if state.cancel is not None:
            c = state.cancel
            out.cancel = CancelOut(requested_at=c.requested_at, cancelled_at=c.cancelled_at, stage=c.stage,
                                   round=c.round, rounds=c.rounds, step=c.step, steps=c.steps)
        return out


def _failure(f: FailureRecord) -> FailureOut:
    return FailureOut(error=f.error, message=f.message, hint=f.hint, permanent=f.permanent, attempts=f.attempts)
