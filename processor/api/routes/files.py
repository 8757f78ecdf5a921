"""``/v1/jobs/{job}/files/{name}``: one file of a job's output folder, by its plain name."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.responses import Response, StreamingResponse

from processor.api.deps import Caller, Queue, check_visible
from processor.api.openapi import AUTH_AND_STORE, problems
from processor.api.problems import Problem
from processor.errors import ObjectNotFound
from processor.queue.jobs import UnknownJob
from processor.store.base import attachment_header

#: Browsers and proxies may keep a file this long: a job's files never change once committed.
FILE_CACHE_CONTROL = "private, max-age=3600"

router = APIRouter()


@router.get("/v1/jobs/{job}/files/{name}", response_class=Response, responses={
    200: {"description": "The file's bytes.", "content": {
        media: {"schema": {"type": "string", "format": "binary"}} for media in ("image/png", "image/jpeg")}},
    **problems(*AUTH_AND_STORE, 404)})
async def file(job: str, name: str, queue: Queue, caller: Caller, download: bool = False) -> Response:
    check_visible(queue, job, caller)
    media = "image/jpeg" if name.endswith(".jpg") else "image/png" if name.endswith(".png") else \
        "application/octet-stream"
    saved = {"Content-Disposition": attachment_header(name)} if download else {}
    try:
        # Streamed in chunks where the store can (the local store); else read whole (COS with
        # an IAM key, whose files are not presigned; S3 answers with presigned URLs instead).
        streamed = await run_in_threadpool(queue.output_stream, job, name)
        if streamed is not None:
            info, chunks = streamed
            return StreamingResponse(iterate_in_threadpool(chunks), media_type=media, headers={
                "Cache-Control": FILE_CACHE_CONTROL, "ETag": f'"{info.etag}"',
                "Content-Length": str(info.size), **saved})
        found = await run_in_threadpool(queue.output, job, name)
    except (ObjectNotFound, UnknownJob):
        raise Problem(404, f"job {job} has no file {name!r}", field="name",
                      hint="Use the URLs listed in the job's variants and contact_sheet.") from None
    return Response(found.body, media_type=media, headers={"Cache-Control": FILE_CACHE_CONTROL,
                                                             "ETag": f'"{found.info.etag}"', **saved})
