"""``/v1/jobs/{job}/files/{name}``: one file of a job's output folder, by its plain name.

A clip (``<style>-<nn>.mp4``) is served as ``video/mp4`` with byte ranges (RFC 9110 section 14:
one ``Range: bytes=a-b`` answered ``206 Partial Content``), which browsers use to read an MP4's
index and to seek; a request without ``Range`` (or with several ranges) gets the whole file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fastapi import APIRouter, Request
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
#: Content types of the files an output folder holds, by extension (else ``application/octet-stream``).
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".mp4": "video/mp4", ".webp": "image/webp",
               ".gif": "image/gif"}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

router = APIRouter()


def media_type(name: str) -> str:
    return next((media for ext, media in MEDIA_TYPES.items() if name.endswith(ext)), "application/octet-stream")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range ``header`` asks of a ``size``-byte file, as (first, last) byte, both included;
    None: the whole file (no header, several ranges, or one this parser does not read, which RFC
    9110 lets a server ignore). ``ValueError`` when the range starts past the end (416)."""
    found = _RANGE.match((header or "").strip())
    if found is None:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        count = int(last)
        if count == 0:
            raise ValueError("an empty suffix range")
        return max(0, size - count), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(f"bytes {start}-{last} of a {size}-byte file")
    return start, end


def _slice(chunks: Iterator[bytes], first: int, last: int) -> Iterator[bytes]:
    """The bytes ``first`` to ``last`` (included) of a stream of chunks; the rest is read and dropped."""
    offset = 0
    try:
        for chunk in chunks:
            end = offset + len(chunk)
            if end > first and offset <= last:
                yield chunk[max(0, first - offset): last - offset + 1]
            offset = end
            if offset > last:
                break
    finally:
        _close(chunks)


def _close(chunks: Iterator[bytes]) -> None:
    """Release the file a store's chunk generator holds open (read to the end or not)."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


@router.get("/v1/jobs/{job}/files/{name}", response_class=Response, responses={
    200: {"description": "The file's bytes.", "content": {
        media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()}},
    206: {"description": "One byte range of the file (a Range request: clips seek this way).", "content": {
        media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()}},
    **problems(*AUTH_AND_STORE, 404, 416)})
async def file(job: str, name: str, request: Request, queue: Queue, caller: Caller,
               download: bool = False) -> Response:
    check_visible(queue, job, caller)
    media = media_type(name)
    saved = {"Content-Disposition": attachment_header(name)} if download else {}
    try:
        # Streamed in chunks where the store can (the local store); else read whole (COS with
        # an IAM key, whose files are not presigned; S3 answers with presigned URLs instead).
        streamed = await run_in_threadpool(queue.output_stream, job, name)
        if streamed is not None:
            info, chunks = streamed
            size, etag, body = info.size, info.etag, None
        else:
            found = await run_in_threadpool(queue.output, job, name)
            size, etag, body, chunks = found.info.size, found.info.etag, found.body, iter(())
    except (ObjectNotFound, UnknownJob):
        raise Problem(404, f"job {job} has no file {name!r}", field="name",
                      hint="Use the URLs listed in the job's variants and contact_sheet.") from None
    headers = {"Cache-Control": FILE_CACHE_CONTROL, "ETag": f'"{etag}"', "Accept-Ranges": "bytes", **saved}
    size = len(body) if body is not None else size
    if_range = request.headers.get("if-range")
    try:
        wanted = byte_range(request.headers.get("range"), size) if if_range in (None, f'"{etag}"') else None
    except ValueError as exc:
        _close(chunks)
        raise Problem(416, f"the range asked is outside {name!r} ({exc})", field="Range",
                      hint=f"Ask for bytes below {size}, or drop the Range header for the whole file.",
                      headers={"Content-Range": f"bytes */{size}", **headers}) from None
    status, first, last = (206, *wanted) if wanted else (200, 0, size - 1)
    if wanted:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    if body is not None:
        return Response(body[first:last + 1], status_code=status, media_type=media, headers=headers)
    parts = _slice(chunks, first, last) if wanted else chunks
    return StreamingResponse(iterate_in_threadpool(parts), status_code=status, media_type=media,
                             headers={**headers, "Content-Length": str(last - first + 1)})
