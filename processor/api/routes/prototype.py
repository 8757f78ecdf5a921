"""``POST /generate_image_rest_direct``: the original prototype's synchronous route, served
through the queue like every other submission.

Its request and response stay the prototype's, and its clients keep working unchanged: the later
(FastAPI) client reads ``generated_images``; the first (Flask) server answered one image as
``generated_image``, which its client reads, so a request for one image (``final_images_to_return``
1, the default and what that client sends) gets both keys. The answer says which style made the
images (``style``, and the ``X-Processor-Style`` header) and which request fields that style does
not use (``ignored``, and ``X-Processor-Ignored``): a toon style takes no prompt. Such a prompt is
ignored rather than refused, because every prototype client sends one: a 422 would break them all
on a server that runs only the toon style.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
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
#: The response header naming the style that made the images.
STYLE_HEADER = "X-Processor-Style"
#: The response header listing request fields that style does not use (absent when none).
IGNORED_HEADER = "X-Processor-Ignored"
#: The route answers with the variants only: the job skips the outputs made for people reviewing
#: it (its manifest lists no contact sheet and no structure scores), which cost CPU per job.
VARIANTS_ONLY = {"contact_sheet": False, "structure_score": False}

router = APIRouter()


@router.post("/generate_image_rest_direct", response_model=DirectResponse,
             openapi_extra=request_bodies(json=DirectRequest),
             responses=problems(*AUTH_AND_STORE, *BODY, 415, 422, 502, 503, 504))
async def direct(request: Request, response: Response, context: Context, caller: Caller) -> DirectResponse:
    """The original prototype's synchronous route, served through the queue: it submits a job
    with ``final_images_to_return`` variants of ``api.direct_style`` (default: the first of
    run.styles) and waits for it. The answer names that style, and the request fields it ignored
    (a toon style takes no prompt); for one image it also carries the first server's
    ``generated_image``."""
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
    style_name = api.direct_style or settings.run.styles[0]
    ignored = ignored_fields(req, settings.styles[style_name])
    fields: dict[str, Any] = {"styles": [style_name], "variants": req.final_images_to_return}
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
    submission = replace(submission, sidecar=submission.sidecar | VARIANTS_ONLY)
    job, _ = await run_in_threadpool(queue.submit, submission, scope=caller.name, owner=caller.name or None)
    context.metrics.submitted(True)
    state = await wait_for_end(queue, job, api.direct_timeout_s, clock=context.clock, poll_s=api.poll_s,
                               watch=context.watch, stop=lambda s: s.waiting is not None)
    if state.waiting is not None:  # the worker that took it cannot load the style: the operator's to fix
        w = state.waiting
        raise Problem(503, f"{w.error}: {w.message}", hint=w.hint, job=job)
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
    response.headers[STYLE_HEADER] = style_name
    if ignored:
        response.headers[IGNORED_HEADER] = ", ".join(ignored)
    return DirectResponse(generated_images=images, style=style_name, ignored=ignored,
                          generated_image=images[0] if req.final_images_to_return == 1 and images else None)


def ignored_fields(req: DirectRequest, style: Any) -> list[str]:
    """The request's fields that ``style`` does not use: ``prompt`` unless it builds a prompt
    (img2img, txt2img, a clip model that reads text), ``negative_prompt`` unless it has one."""
    uses = {"prompt": style.takes_prompt(), "negative_prompt": "negative" in type(style).model_fields}
    given = {"prompt": req.prompt, "negative_prompt": req.negative_prompt}
    return [name for name in ("prompt", "negative_prompt") if given[name] and not uses[name]]
