"""``POST /generate_image_rest_direct``: the original prototype's synchronous route, served
through the queue like every other submission."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from processor.api.deps import Caller, Context, wait_for_end
from processor.api.openapi import AUTH_AND_STORE, BODY, problems, request_bodies
from processor.api.problems import Problem
from processor.api.schemas import DirectRequest, DirectResponse
from processor.api.upload import json_body_limit, parse_json_object, read_capped
from processor.api.validate import build_submission, decode_base64_image
from processor.queue.jobs import JobStatus

#: Our request fields -> the prototype's names for them, so its problems name its own fields.
PROTOTYPE_FIELDS = {"image": "initial_image", "negative": "negative_prompt", "variants": "final_images_to_return"}
DIRECT_HINT = "Send {initial_image (base64), prompt, negative_prompt, final_images_to_return, seed}."

router = APIRouter()


@router.post("/generate_image_rest_direct", response_model=DirectResponse,
             openapi_extra=request_bodies(json=DirectRequest),
             responses=problems(*AUTH_AND_STORE, *BODY, 415, 422, 502, 504))
async def direct(request: Request, context: Context, caller: Caller) -> DirectResponse:
    """The original prototype's synchronous route, served through the queue: it submits a job
    with ``final_images_to_return`` variants of ``api.direct_style`` and waits for it."""
    settings, limit, queue = context.settings, context.upload_limit, context.queue
    api = settings.api
    body = await read_capped(request.stream(), json_body_limit(limit), "the JSON body")
    parsed = parse_json_object(body, hint=DIRECT_HINT)
    del body  # the parsed strings are what is left to hold: not the body as well
    try:
        req = DirectRequest.model_validate(parsed)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise Problem(422, f"{errors[0]['field']}: {errors[0]['message']}", field=errors[0]["field"],
                      hint=DIRECT_HINT,
                      errors=errors) from None
    image = decode_base64_image(req.initial_image, limit)
    fields: dict[str, Any] = {"styles": [api.direct_style or settings.run.styles[0]],
                              "variants": req.final_images_to_return}
    if req.prompt:
        fields["prompt"] = req.prompt
    if req.negative_prompt:
        fields["negative"] = req.negative_prompt
    if req.seed is not None:
        fields["seed"] = req.seed
    try:
        submission = await run_in_threadpool(build_submission, image, fields, settings, limit=limit)
    except Problem as exc:  # name the prototype's fields, not ours
        exc.field = PROTOTYPE_FIELDS.get(exc.field or "", exc.field)
        raise
    job, _ = await run_in_threadpool(queue.submit, submission, scope=caller.name, owner=caller.name or None)
    context.metrics.submitted(True)
    state = await wait_for_end(queue, job, api.direct_timeout_s, clock=context.clock, poll_s=api.poll_s,
                               watch=context.watch)
    if state.status is JobStatus.failed and state.failure is not None:
        f = state.failure
        raise Problem(422 if f.permanent else 502, f"{f.error}: {f.message}", hint=f.hint, job=job)
    if state.status.ended and state.manifest is None:
        raise Problem(502, f"job {job} ended {state.status.value}: {state.detail or 'without a result'}",
                      hint="Submit the photo again.", job=job)
    if state.status is not JobStatus.done or state.manifest is None:
        raise Problem(504, f"job {job} did not finish within {api.direct_timeout_s:g} s (api.direct_timeout_s)",
                      hint=f"Poll GET /v1/jobs/{job}, or raise api.direct_timeout_s.", job=job)
    images = []
    for v in state.manifest.variants:
        name = context.renderer.file_name(state, v.key)
        if name is None:
            continue  # not a file of this job's folder (JobRenderer.file_name)
        data = (await run_in_threadpool(queue.output, job, name)).body
        images.append(base64.b64encode(data).decode())
    return DirectResponse(generated_images=images)
