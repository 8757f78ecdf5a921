"""The FastAPI app: routes, auth, problem responses. Every bucket access goes through ``JobQueue``.

``create_app(settings, store)`` builds it (tests build one per store); ``processor serve`` runs
it under uvicorn. Stateless: replicas share nothing but the bucket.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from processor.api.jobs import (
    IdempotencyConflict,
    JobQueue,
    JobState,
    JobStatus,
    NotFailed,
    UnknownJob,
)
from processor.api.metrics import ApiMetrics
from processor.api.pages import COOKIE, SAFE_METHODS, add_pages, same_origin
from processor.api.problems import MEDIA_TYPE, Problem
from processor.api.schemas import (
    DirectRequest,
    DirectResponse,
    FailureOut,
    JobCreated,
    JobList,
    JobOut,
    Links,
    Progress,
    VariantOut,
)
from processor.api.upload import IMAGE_FIELD, json_body_limit, read_capped, read_form
from processor.api.validate import Resolver, build_submission, decode_base64_image
from processor.api.webhooks import WebhookDispatcher, read_secret
from processor.config import Settings
from processor.errors import ObjectNotFound, StoreAccessError, StoreError
from processor.store.base import ObjectStore, attachment_header

log = logging.getLogger("processor.api")

#: Seconds between keep-alive comments on a quiet event stream (proxies drop idle connections).
SSE_KEEPALIVE_S = 15.0
#: The longest Idempotency-Key accepted (Stripe's limit).
MAX_IDEMPOTENCY_KEY = 255


def read_keys(settings: Settings, environ: dict[str, str] | None = None) -> list[str]:
    """The bearer tokens from the variable named by ``api.keys_env`` (comma-separated)."""
    raw = (environ if environ is not None else os.environ).get(settings.api.keys_env, "")
    return [k.strip() for k in raw.split(",") if k.strip()]


def create_app(settings: Settings, store: ObjectStore, *, keys: list[str] | None = None,
               resolve: Resolver | None = None, clock: Callable[[], float] = time.monotonic,
               self_url: str | None = None, webhook_secret: str | None = None) -> FastAPI:
    """The API over ``store``. ``keys``: accepted tokens (default: from the environment; empty:
    open). ``resolve``: host name → addresses, for the webhook check (tests inject one).
    ``self_url``: where this server listens, for the links in webhooks when ``api.public_url``
    is unset. ``webhook_secret``: default from ``api.webhook_secret_env``; without one, requests
    with a ``webhook`` are refused (unsigned webhooks could be forged)."""
    jobs = JobQueue(store, settings)
    tokens = [k.encode() for k in (keys if keys is not None else read_keys(settings))]
    if not tokens:
        log.warning("api_open", extra={"detail": f"{settings.api.keys_env} is unset or empty: the API accepts "
                                       "requests without a token"})
    api = settings.api
    limit = api.max_upload_bytes or settings.pipeline.decode.max_bytes
    metrics = ApiMetrics(jobs)
    secret = webhook_secret if webhook_secret is not None else read_secret(api.webhook_secret_env)
    dispatcher: WebhookDispatcher | None = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if dispatcher is not None:
            dispatcher.start()
        try:
            yield
        finally:
            if dispatcher is not None:
                await run_in_threadpool(dispatcher.close)

    app = FastAPI(title="toy cartoonizer", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.jobs = jobs
    app.state.metrics = metrics
    if api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=api.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer"])

    # ------------------------------------------------------------------ errors

    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path", "header")),
                   "message": e["msg"]} for e in exc.errors()]
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return Problem(422, f"{first['field']}: {first['message']}", field=first["field"] or None,
                       hint="Change the field named here; the API's schema is at /docs.", errors=errors).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        return Problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(StoreError)
    async def _store(_request: Request, exc: StoreError) -> Response:
        log.warning("store_error", extra={"error": type(exc).__name__, "detail": str(exc)})
        return Problem(503, "the bucket did not answer; nothing was lost, try again",
                       hint="Retry the request in a few seconds.", headers={"Retry-After": "5"}).response()

    @app.exception_handler(StoreAccessError)
    async def _access(_request: Request, exc: StoreAccessError) -> Response:
        log.error("store_access", extra={"detail": str(exc)})
        return Problem(503, "the API's bucket credentials were refused", hint="The operator must fix the "
                       "store credentials (processor doctor).").response()

    # ------------------------------------------------------------------ auth

    def authorize(request: Request) -> str:
        """The caller's token ('' when the API is open); 401 without a valid one."""
        if not tokens:
            return ""
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header and request.cookies.get(COOKIE):
            # The web pages' login cookie (SameSite=Strict). A state-changing request must also
            # come from our own pages (its Origin), so no other site can post on a user's behalf.
            if request.method not in SAFE_METHODS and not same_origin(request, api.public_url):
                raise Problem(403, "a state-changing request with the login cookie came from another origin",
                              field="Origin", hint="Use the pages of this server, or send the token as "
                              "'Authorization: Bearer <token>' instead of the cookie.")
            scheme, given = "bearer", request.cookies[COOKIE]
        if scheme.lower() != "bearer" or not given.strip():
            raise Problem(401, "no bearer token", field="Authorization",
                          hint="Send 'Authorization: Bearer <token>' with a token from the operator "
                          "(or log in at /login in a browser).",
                          headers={"WWW-Authenticate": 'Bearer realm="toy-cartoonizer"'})
        candidate = given.strip().encode()
        # Compare against every key, without stopping at a match, so timing says nothing.
        matched = [hmac.compare_digest(candidate, t) for t in tokens]
        if not any(matched):
            raise Problem(401, "the bearer token is not valid", field="Authorization",
                          hint="Check the token; ask the operator for a new one if it was revoked.",
                          headers={"WWW-Authenticate": 'Bearer realm="toy-cartoonizer", error="invalid_token"'})
        return given.strip()

    # ------------------------------------------------------------------ rendering

    def base_url(request: Request) -> str:
        return (api.public_url or str(request.base_url)).rstrip("/")

    def links(base: str, job: str, status: JobStatus | None = None) -> Links:
        root = f"{base}/v1/jobs/{job}"
        return Links(self=root, events=root + "/events",
                     retry=root + "/retry" if status is JobStatus.failed else None)

    def file_url(base: str, state: JobState, key: str, *, download: bool = False) -> str | None:
        """A URL for one of the job's files, or None for a key outside its output folder: whoever
        can write the bucket can write a manifest, and the API must not sign or serve whatever
        key one names (the same rule as ``processor results``). ``download``: a URL whose answer
        says ``Content-Disposition: attachment`` (a browser saves it instead of showing it)."""
        prefix = jobs.output_key(state.id, "")
        name = key[len(prefix):] if key.startswith(prefix) else ""
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            log.warning("manifest_key_refused", extra={"job": state.id, "key": key})
            return None
        if api.presign:
            # Signing is an optimisation with a safe fallback: whatever stops it (a COS store with an
            # IAM API key cannot sign), the file is streamed through the API instead.
            try:
                signed = jobs.presigned_url(key, api.url_ttl_s, attachment=download)
            except Exception as exc:  # noqa: BLE001 - any signing failure falls back to streaming
                log.debug("presign_failed", extra={"error": type(exc).__name__})
                signed = None
            if signed:
                return signed
        return f"{base}/v1/jobs/{state.id}/files/{name}" + ("?download=1" if download else "")

    def render(base: str, state: JobState) -> JobOut:
        """The job as every route (and the webhook) shows it; URLs under ``base``."""
        out = JobOut(id=state.id, status=state.status, input=state.input_key, submitted_at=state.submitted_at,
                     links=links(base, state.id, state.status))
        if state.progress is not None:
            p = state.progress
            out.progress = Progress(stage=p.stage, round=p.round, rounds=p.rounds, step=p.step, steps=p.steps)
        if state.manifest is not None:
            for v in state.manifest.variants:
                url, download = file_url(base, state, v.key), file_url(base, state, v.key, download=True)
                if url is not None and download is not None:
                    out.variants.append(VariantOut(url=url, download=download, style=v.style, index=v.index,
                                                   seed=v.seed, width=v.width, height=v.height))
            if state.manifest.contact_sheet:
                out.contact_sheet = file_url(base, state, state.manifest.contact_sheet)
                out.contact_sheet_download = file_url(base, state, state.manifest.contact_sheet, download=True)
            out.manifest = state.manifest.model_dump(mode="json", by_alias=True)
        if state.failure is not None:
            f = state.failure
            out.failure = FailureOut(error=f.error, message=f.message, hint=f.hint, permanent=f.permanent,
                                     attempts=f.attempts)
        return out

    async def state_of(job: str) -> JobState:
        try:
            return await run_in_threadpool(jobs.state, job)
        except UnknownJob:
            raise Problem(404, f"no job {job!r}", field="id",
                          hint="Use an id returned by POST /v1/jobs or listed by GET /v1/jobs.") from None

    async def wait_for_end(job: str, seconds: float) -> JobState:
        deadline = clock() + seconds
        state = await state_of(job)
        while not state.status.ended and clock() < deadline:
            await asyncio.sleep(min(api.poll_s, max(0.0, deadline - clock())))
            state = await state_of(job)
        return state

    if secret and api.webhook_allow:
        dispatcher = WebhookDispatcher(
            jobs, lambda state: render((api.public_url or self_url or "").rstrip("/"), state).model_dump(mode="json"),
            secret, replica=f"{socket.gethostname()}-{os.getpid()}", allow=api.webhook_allow, resolve=resolve)
    app.state.webhooks = dispatcher

    # ------------------------------------------------------------------ probes

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        try:
            jobs.ping()
        except (StoreError, StoreAccessError) as exc:
            return Problem(503, f"the bucket is not reachable: {type(exc).__name__}",
                           hint="Check the store settings and credentials (processor doctor).").response()
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    # ------------------------------------------------------------------ jobs

    @app.post("/v1/jobs", status_code=202, response_model=JobCreated,
              responses={200: {"model": JobOut}, 401: {}, 413: {}, 415: {}, 422: {}})
    async def submit(request: Request, token: str = Depends(authorize)) -> Response:
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise Problem(422, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                          field="Idempotency-Key", hint="Send a short unique string per job, e.g. a UUID.")
        wait = prefer_wait(request.headers.get("prefer"), api.max_wait_s)
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        declared = request.headers.get("content-length")
        look: bytes | None = None
        if media == "multipart/form-data":
            # Two files may come: the photo and the picture of the look, each capped at ``limit``.
            if declared and declared.isdigit() and int(declared) > 2 * limit + 2 * 64 * 1024:
                raise Problem(413, f"the request is {int(declared):,} bytes; the photo may be at most {limit:,} "
                              "(api.max_upload_bytes)", field=IMAGE_FIELD,
                              hint="Downscale the photo, or raise api.max_upload_bytes.")
            form = await read_form(request.stream(), content_type, limit)
            fields: dict[str, Any] = {}
            for name, values in form.fields.items():
                fields[name] = values if name == "styles" else values[-1]
            image, look = form.image, form.style_image
        elif media == "application/json":
            # Room for two base64 pictures (the photo and style_image); each is capped at ``limit``.
            body = await read_capped(request.stream(), json_body_limit(2 * limit), "the JSON body")
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):
                raise Problem(422, "the body is not valid JSON", hint='Send {"image": "<base64>", ...}.') from None
            if not isinstance(data, dict):
                raise Problem(422, "the JSON body must be an object", hint='Send {"image": "<base64>", ...}.')
            image = decode_base64_image(data.pop(IMAGE_FIELD, None), limit) if IMAGE_FIELD in data else None
            fields = data
        else:
            raise Problem(415, f"Content-Type {media or '(none)'!r} is not a form or JSON", field="Content-Type",
                          hint="Send multipart/form-data with the photo in 'image', or application/json with "
                          "the photo base64 in 'image'.")
        if fields.get("webhook") is not None and dispatcher is None:
            why = ("" if api.webhook_allow else " (api.webhook_allow is empty)") + (
                "" if secret else f" ({api.webhook_secret_env} is unset)")
            raise Problem(422, "webhooks are off on this server" + why,
                          field="webhook", hint="Leave webhook out and poll GET /v1/jobs/{id} or its events; or ask "
                          "the operator to set the allow-list and the signing secret.")
        submission = await run_in_threadpool(build_submission, image, fields, settings, limit=limit, resolve=resolve,
                                             style_image=look)
        try:
            job, created = await run_in_threadpool(jobs.submit, submission, idempotency_key=idempotency_key,
                                                   scope=token)
        except IdempotencyConflict as exc:
            raise Problem(422, "this Idempotency-Key was used for a different request", field="Idempotency-Key",
                          hint="Use a new key for a new job; repeat a request unchanged to get its job back.",
                          job=exc.job_id) from None
        metrics.submitted(created)
        headers = {"Location": f"{base_url(request)}/v1/jobs/{job}"}
        if wait:
            state = await wait_for_end(job, wait)
            if state.status.ended:
                ended = render(base_url(request), state).model_dump(mode="json")
                return JSONResponse(ended, status_code=200, headers=headers)
        status = JobStatus.queued
        if not created:  # a repeat: answer with the job as it is now
            status = (await state_of(job)).status
        accepted = JobCreated(id=job, status=status, links=links(base_url(request), job, status))
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)

    @app.get("/v1/jobs", response_model=JobList)
    async def list_jobs(request: Request, cursor: str | None = None, limit: int = Query(50, ge=1, le=200),
                        _token: str = Depends(authorize)) -> JobList:
        try:
            page = await run_in_threadpool(jobs.page, cursor, limit)
        except UnknownJob:
            raise Problem(422, "cursor is not a job id", field="cursor",
                          hint="Pass the next_cursor of the previous page, or no cursor for the first.") from None
        return JobList(jobs=[render(base_url(request), s) for s in page.jobs], next_cursor=page.next_cursor)

    @app.get("/v1/jobs/{job}", response_model=JobOut)
    async def get_job(request: Request, job: str, _token: str = Depends(authorize)) -> JobOut:
        return render(base_url(request), await state_of(job))

    @app.post("/v1/jobs/{job}/retry", response_model=JobOut, status_code=202)
    async def retry(request: Request, job: str, _token: str = Depends(authorize)) -> JobOut:
        await state_of(job)  # 404 first
        try:
            state = await run_in_threadpool(jobs.retry, job)
        except NotFailed as exc:
            raise Problem(409, f"job {job} is {exc.status.value}; only a failed job can be retried", field="id",
                          hint="Wait for the job to end; retry it only when its status is failed.") from None
        return render(base_url(request), state)

    @app.get("/v1/jobs/{job}/files/{name}")
    async def file(job: str, name: str, download: bool = False, _token: str = Depends(authorize)) -> Response:
        media = "image/jpeg" if name.endswith(".jpg") else "image/png" if name.endswith(".png") else \
            "application/octet-stream"
        saved = {"Content-Disposition": attachment_header(name)} if download else {}
        try:
            # Streamed in chunks where the store can (the local store); else read whole (COS with
            # an IAM key, whose files are not presigned; S3 answers with presigned URLs instead).
            streamed = await run_in_threadpool(jobs.output_stream, job, name)
            if streamed is not None:
                info, chunks = streamed
                return StreamingResponse(iterate_in_threadpool(chunks), media_type=media, headers={
                    "Cache-Control": "private, max-age=3600", "ETag": f'"{info.etag}"',
                    "Content-Length": str(info.size), **saved})
            found = await run_in_threadpool(jobs.output, job, name)
        except (ObjectNotFound, UnknownJob):
            raise Problem(404, f"job {job} has no file {name!r}", field="name",
                          hint="Use the URLs listed in the job's variants and contact_sheet.") from None
        return Response(found.body, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                                 "ETag": f'"{found.info.etag}"', **saved})

    @app.get("/v1/jobs/{job}/events")
    async def events(request: Request, job: str, _token: str = Depends(authorize)) -> StreamingResponse:
        first = await state_of(job)

        async def stream() -> AsyncIterator[bytes]:
            state, last_status, last_progress, quiet_since = first, None, None, clock()
            while True:
                if state.status != last_status:
                    last_status = state.status
                    kind = state.status.value if state.status.ended else "status"
                    yield sse(kind, render(base_url(request), state).model_dump(mode="json"))
                    quiet_since = clock()
                    if state.status.ended:
                        return
                if state.progress is not None and state.progress != last_progress:
                    last_progress = state.progress
                    yield sse("progress", state.progress.to_json())
                    quiet_since = clock()
                if clock() - quiet_since >= SSE_KEEPALIVE_S:
                    yield b": keep-alive\n\n"
                    quiet_since = clock()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(api.poll_s)
                try:
                    state = await run_in_threadpool(jobs.state, job)
                except UnknownJob:
                    yield sse("failed", {"id": job, "status": "failed", "detail": "the input was deleted"})
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ the prototype's route

    @app.post("/generate_image_rest_direct", response_model=DirectResponse)
    async def direct(request: Request, token: str = Depends(authorize)) -> DirectResponse:
        """The original prototype's synchronous route, served through the queue: it submits a job
        with ``final_images_to_return`` variants of ``api.direct_style`` and waits for it."""
        body = await read_capped(request.stream(), json_body_limit(limit), "the JSON body")
        try:
            req = DirectRequest.model_validate_json(body)
        except ValidationError as exc:
            errors = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
            raise Problem(422, f"{errors[0]['field']}: {errors[0]['message']}", field=errors[0]["field"],
                          hint="Send {initial_image (base64), prompt, negative_prompt, final_images_to_return, seed}.",
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
            exc.field = {"image": "initial_image", "negative": "negative_prompt",
                         "variants": "final_images_to_return"}.get(exc.field or "", exc.field)
            raise
        job, _ = await run_in_threadpool(jobs.submit, submission, scope=token)
        metrics.submitted(True)
        state = await wait_for_end(job, api.direct_timeout_s)
        if state.status is JobStatus.failed and state.failure is not None:
            f = state.failure
            raise Problem(422 if f.permanent else 502, f"{f.error}: {f.message}", hint=f.hint, job=job)
        if state.status is not JobStatus.done or state.manifest is None:
            raise Problem(504, f"job {job} did not finish within {api.direct_timeout_s:g} s (api.direct_timeout_s)",
                          hint=f"Poll GET /v1/jobs/{job}, or raise api.direct_timeout_s.", job=job)
        images = []
        prefix = jobs.output_key(job, "")
        for v in state.manifest.variants:
            if file_url("", state, v.key) is None:
                continue  # not a file of this job's folder (see file_url)
            data = (await run_in_threadpool(jobs.output, job, v.key[len(prefix):])).body
            images.append(base64.b64encode(data).decode())
        return DirectResponse(generated_images=images)

    add_pages(app, settings=settings, jobs=jobs, tokens=tokens, authorize=authorize, render=render,
              base_url=base_url)
    return app


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


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


__all__ = ["MEDIA_TYPE", "create_app", "read_keys"]
