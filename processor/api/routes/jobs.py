"""``/v1/jobs``: submit a photo, list jobs, read one, cancel one, retry a failed one. The bucket
work is ``BucketQueue``'s; these routes read requests, map outcomes to statuses and render jobs.
Each declares the statuses it answers (``processor.api.openapi``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from processor.api.deps import (
    ApiContext,
    Caller,
    Context,
    Queue,
    Renderer,
    check_visible,
    no_job,
    state_or_404,
    visible_state_or_404,
    wait_for_end,
)
from processor.api.openapi import AUTH_AND_STORE, BODY, problems, request_bodies
from processor.api.problems import Problem
from processor.api.schemas import JobCreated, JobForm, JobJson, JobList, JobOut
from processor.api.upload import IMAGE_FIELD, form_limit, json_body_limit, parse_json_object, read_capped, read_form
from processor.api.validate import LIST_FIELDS, build_submission, decode_base64_image
from processor.queue.idempotency import IdempotencyConflict, IdempotencyPending
from processor.queue.jobs import MAX_PAGE, JobStatus, NotCancellable, NotFailed, UnknownJob
from processor.queue.submit import Submission

#: The longest Idempotency-Key accepted (Stripe's limit).
MAX_IDEMPOTENCY_KEY = 255
#: Seconds a repeat of a request waits for the first request with its Idempotency-Key to write
#: its job before it is answered 409 (ask again later).
IDEMPOTENCY_WAIT_S = 10.0
#: Seconds a client told so is asked to wait before repeating the request.
IDEMPOTENCY_RETRY_AFTER_S = 2
JSON_HINT = 'Send {"image": "<base64>", ...}.'

router = APIRouter()


@router.post("/v1/jobs", status_code=202, response_model=JobCreated,
             openapi_extra=request_bodies(multipart=JobForm, json=JobJson),
             responses={200: {"model": JobOut, "description": "The job ended within `Prefer: wait=N` seconds."},
                         202: {"description": "Accepted: the job is queued (or, for a repeated Idempotency-Key, "
                               "the first request's job as it is now)."},
                         **problems(*AUTH_AND_STORE, *BODY, 400, 409, 415, 422)})
async def submit(request: Request, context: Context, caller: Caller) -> Response:
    """Submit a photo: a form with the file in ``image``, or JSON with it base64. Headers:
    ``Idempotency-Key`` (a repeat returns the first job), ``Prefer: wait=N`` (answer when the job
    ends, within N seconds)."""
    api, limit, renderer = context.settings.api, context.upload_limit, context.renderer
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise Problem(422, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                      field="Idempotency-Key", hint="Send a short unique string per job, e.g. a UUID.")
    wait = prefer_wait(request.headers.get("prefer"), api.max_wait_s)
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    look: bytes | None = None
    filename: str | None = None
    if media == "multipart/form-data":
        # Two files may come: the photo and the picture of the look, each capped at ``limit``.
        if declared and declared.isdigit() and int(declared) > form_limit(limit):
            raise Problem(413, f"the request is {int(declared):,} bytes; the photo may be at most {limit:,} "
                          "(api.max_upload_bytes)", field=IMAGE_FIELD,
                          hint="Downscale the photo, or raise api.max_upload_bytes.")
        form = await read_form(request.stream(), content_type, limit)
        fields: dict[str, Any] = {}
        for name, values in form.fields.items():
            fields[name] = values if name in LIST_FIELDS else values[-1]
        image, look, filename = form.image, form.style_image, form.image_filename
    elif media == "application/json":
        # Room for two base64 pictures (the photo and style_image); each is capped at ``limit``.
        body = await read_capped(request.stream(), json_body_limit(2 * limit), "the JSON body")
        data = parse_json_object(body, hint=JSON_HINT)
        del body  # the parsed strings are what is left to hold: not the body as well
        image = decode_base64_image(data.pop(IMAGE_FIELD, None), limit) if IMAGE_FIELD in data else None
        fields = data
    else:
        raise Problem(415, f"Content-Type {media or '(none)'!r} is not a form or JSON", field="Content-Type",
                      hint="Send multipart/form-data with the photo in 'image', or application/json with "
                      "the photo base64 in 'image'.")
    if fields.get("webhook") is not None and context.dispatcher is None:
        why = ("" if api.webhook_allow else " (api.webhook_allow is empty)") + (
            "" if context.webhook_secret else f" ({api.webhook_secret_env} is unset)")
        raise Problem(422, "webhooks are off on this server" + why,
                      field="webhook", hint="Leave webhook out and poll GET /v1/jobs/{id} or its events; or ask "
                      "the operator to set the allow-list and the signing secret.")
    submission = await run_in_threadpool(build_submission, image, fields, context.settings, limit=limit,
                                         resolve=context.resolve, style_image=look, filename=filename)
    job, created = await write(context, submission, idempotency_key, caller.name)
    context.metrics.submitted(created)
    base = renderer.base_url(request)
    headers = {"Location": f"{base}/v1/jobs/{job}"}
    if wait:
        state = await wait_for_end(context.queue, job, wait, clock=context.clock, poll_s=api.poll_s,
                                   watch=context.watch)
        if state.status.ended:
            return JSONResponse(renderer.render(base, state).model_dump(mode="json"), status_code=200,
                                headers=headers)
    status = JobStatus.queued
    if not created:  # a repeat: answer with the job as it is now
        status = (await state_or_404(context.queue, job)).status
    accepted = JobCreated(id=job, status=status, links=renderer.links(base, job, status))
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)


async def write(context: ApiContext, submission: Submission, idempotency_key: str | None,
                client: str) -> tuple[str, bool]:
    """``BucketQueue.submit`` for ``client`` (the owner of the job and the scope of its key): a
    repeat of a request whose first is still writing its job waits for it, for at most
    ``IDEMPOTENCY_WAIT_S`` (409 with Retry-After after that)."""
    deadline = context.clock() + IDEMPOTENCY_WAIT_S
    while True:
        try:
            return await run_in_threadpool(context.queue.submit, submission, idempotency_key=idempotency_key,
                                           scope=client, owner=client or None)
        except IdempotencyConflict as exc:
            conflict = Problem(422, "this Idempotency-Key was used for a different request", field="Idempotency-Key",
                               hint="Use a new key for a new job; repeat a request unchanged to get its job back.")
            if exc.job_id is not None:
                conflict.extra["job"] = exc.job_id
            raise conflict from None
        except IdempotencyPending as exc:
            if context.clock() >= deadline:
                raise Problem(409, "the first request with this Idempotency-Key is still writing its job",
                              field="Idempotency-Key", job=exc.job_id,
                              hint=f"Repeat the request unchanged in {IDEMPOTENCY_RETRY_AFTER_S} s to get its job.",
                              headers={"Retry-After": str(IDEMPOTENCY_RETRY_AFTER_S)}) from None
            await asyncio.sleep(context.settings.api.poll_s)


@router.get("/v1/jobs", response_model=JobList, responses=problems(*AUTH_AND_STORE, 422))
async def list_jobs(request: Request, queue: Queue, renderer: Renderer, caller: Caller, cursor: str | None = None,
                    limit: int = Query(50, ge=1, le=MAX_PAGE)) -> JobList:
    try:
        page = await run_in_threadpool(queue.page, cursor, limit, owner=None if caller.admin else caller.name)
    except UnknownJob:
        raise Problem(422, "cursor is not a job id", field="cursor",
                      hint="Pass the next_cursor of the previous page, or no cursor for the first.") from None
    base = renderer.base_url(request)
    return JobList(jobs=[renderer.render(base, s) for s in page.jobs], next_cursor=page.next_cursor)


@router.get("/v1/jobs/{job}", response_model=JobOut, responses=problems(*AUTH_AND_STORE, 404))
async def get_job(request: Request, job: str, queue: Queue, renderer: Renderer, caller: Caller) -> JobOut:
    return renderer.render(renderer.base_url(request), await visible_state_or_404(queue, job, caller))


@router.delete("/v1/jobs/{job}", response_model=JobOut, status_code=202, responses={
    200: {"model": JobOut, "description": "Cancelled: a queued job was removed (or the job was cancelled before)."},
    202: {"description": "The cancel is requested: the worker running the job stops at its next step and "
          "records it `cancelled`. Follow the job (its events, or GET) to see it end."},
    **problems(*AUTH_AND_STORE, 403, 404, 409)})
async def cancel(request: Request, job: str, queue: Queue, renderer: Renderer, caller: Caller) -> Response:
    """Cancel a queued or running job (``processor.queue.cancel``). A done or failed job is a 409:
    its result stands (delete its files from the bucket if they are not wanted)."""
    check_visible(queue, job, caller)
    try:
        state = await run_in_threadpool(queue.cancel, job, by=caller.name or None)
    except UnknownJob:
        raise no_job(job) from None
    except NotCancellable as exc:
        raise Problem(409, f"job {job} is {exc.status.value}; only a queued or running job can be cancelled",
                      field="id", hint="Its result stands: download it, or delete its files from the bucket if you "
                      "no longer want them.") from None
    if state.status in (JobStatus.done, JobStatus.failed):  # it ended before the request reached its worker
        raise Problem(409, f"job {job} ended {state.status.value} before it could be cancelled", field="id",
                      hint="Its result stands: download it, or delete its files from the bucket.")
    body = renderer.render(renderer.base_url(request), state).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if state.status is JobStatus.cancelled else 202)


@router.post("/v1/jobs/{job}/retry", response_model=JobOut, status_code=202,
             responses=problems(*AUTH_AND_STORE, 403, 404, 409))
async def retry(request: Request, job: str, queue: Queue, renderer: Renderer, caller: Caller) -> JobOut:
    await visible_state_or_404(queue, job, caller)  # 404 first
    try:
        state = await run_in_threadpool(queue.retry, job)
    except NotFailed as exc:
        raise Problem(409, f"job {job} is {exc.status.value}; only a failed job can be retried", field="id",
                      hint="Wait for the job to end; retry it only when its status is failed.") from None
    except UnknownJob:  # deleted between the two reads
        raise no_job(job) from None
    return renderer.render(renderer.base_url(request), state)


def prefer_wait(header: str | None, max_wait_s: float) -> float:
    """Seconds of ``Prefer: wait=N`` (RFC 7240), capped at ``api.max_wait_s``; 0 without one."""
    if not header:
        return 0.0
    for pref in header.split(","):
        name, _, value = pref.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(0.0, min(float(value.strip().strip('"')), max_wait_s))
            except ValueError:
                raise Problem(422, f"Prefer: wait={value!r} is not a number of seconds", field="Prefer",
                              hint="Send 'Prefer: wait=10'.") from None
    return 0.0
