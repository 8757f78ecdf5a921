"""``/v1/jobs/{job}/events``: a job's status and progress as server-sent events, until it ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from processor.api.deps import Clock, Context, Token, state_or_404, watch_generation
from processor.api.watch import RESYNC_S
from processor.queue.jobs import JobStatus, UnknownJob

#: Seconds between keep-alive comments on a quiet event stream (proxies drop idle connections).
SSE_KEEPALIVE_S = 15.0

router = APIRouter()


@router.get("/v1/jobs/{job}/events")
async def events(request: Request, job: str, context: Context, clock: Clock, _token: Token) -> StreamingResponse:
    queue, renderer, poll_s, watch = context.queue, context.renderer, context.settings.api.poll_s, context.watch
    # Updates come from the replica's job watcher (processor.api.watch): its generation is taken
    # before each read, so a change between the read and the wait still wakes the stream.
    generation = watch_generation(watch, job)
    first = await state_or_404(queue, job)
    base = renderer.base_url(request)

    async def stream() -> AsyncIterator[bytes]:
        nonlocal generation
        state, last_status, last_progress, quiet_since, read_at = first, None, None, clock(), clock()
        while True:
            if state.status != last_status:
                last_status = state.status
                kind = state.status.value if state.status.ended else "status"
                yield sse(kind, renderer.render(base, state).model_dump(mode="json"))
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
            if watch is None:
                await asyncio.sleep(poll_s)
            else:
                seen = generation
                until_keepalive = SSE_KEEPALIVE_S - (clock() - quiet_since)
                generation = await watch.changed(job, seen, max(poll_s, min(until_keepalive, RESYNC_S)))
                if generation == seen and clock() - read_at < RESYNC_S:
                    continue  # nothing moved: only the keep-alive and the disconnect check are due
            read_at = clock()
            try:
                state = await run_in_threadpool(queue.state, job)
            except UnknownJob:
                yield sse(JobStatus.failed.value, {"id": job, "status": JobStatus.failed.value,
                                                   "detail": "the input was deleted"})
                return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
