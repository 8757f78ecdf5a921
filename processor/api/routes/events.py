"""``/v1/jobs/{job}/events``: a job's status and progress as server-sent events, until it ends.

A stream takes one of the replica's stream slots (``processor.api.streams``: 429 past
``api.max_streams`` or ``api.max_streams_per_client``) and lasts at most ``api.stream_max_s``: then
an ``expired`` event says where the job is and the stream ends (EventSource reconnects by itself).
Updates come from the replica's job watcher (``processor.api.watch``), so an open stream reads the
bucket when its job moved, not on a timer. Its bucket reads run on threads of their own
(``STREAM_READ_THREADS``), so many open streams never hold the threads that health and job reads
need."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from processor.api.auth import client_address
from processor.api.deps import ApiContext, Caller, Clock, Context, check_visible, no_job, watch_generation
from processor.api.openapi import AUTH_AND_STORE, event_stream, problems
from processor.api.streams import SlotResponse
from processor.api.watch import RESYNC_S
from processor.queue.jobs import JobState, JobStatus, UnknownJob

#: Seconds between keep-alive comments on a quiet event stream (proxies drop idle connections).
SSE_KEEPALIVE_S = 15.0
#: Threads the event streams' bucket reads share (apart from the threads of every other route).
STREAM_READ_THREADS = 4

router = APIRouter()


@router.get("/v1/jobs/{job}/events", response_class=StreamingResponse,
            responses={**event_stream(), **problems(*AUTH_AND_STORE, 404)})
async def events(request: Request, job: str, context: Context, clock: Clock, caller: Caller) -> StreamingResponse:
    queue, renderer, api, watch = context.queue, context.renderer, context.settings.api, context.watch
    poll_s = api.poll_s
    check_visible(queue, job, caller)
    # On an open server every caller is the same anonymous admin: its address tells clients apart.
    slot = context.streams.take(caller.name or client_address(request))
    # The watcher's generation is taken before each read, so a change between the read and the
    # wait still wakes the stream.
    generation = watch_generation(watch, job)
    try:
        first = await _read(context, job)
    except UnknownJob:
        slot.close()
        raise no_job(job) from None
    except BaseException:
        slot.close()
        raise
    base = renderer.base_url(request)
    ends_at = clock() + api.stream_max_s

    async def stream() -> AsyncIterator[bytes]:
        nonlocal generation
        state, last_status, last_progress, quiet_since, read_at = first, None, None, clock(), clock()
        last_waiting = None
        while True:
            # A queued job that starts (or stops) waiting for a capable worker is news too.
            waiting = state.waiting.created_at if state.waiting is not None else None
            if state.status != last_status or waiting != last_waiting:
                last_status, last_waiting = state.status, waiting
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
            if clock() >= ends_at:
                yield sse("expired", {"id": job, "status": state.status.value, "detail": (
                    f"this stream reached its lifetime ({api.stream_max_s:g} s, api.stream_max_s); reconnect")})
                return
            if watch is None:
                await asyncio.sleep(poll_s)
            else:
                seen = generation
                until_keepalive = SSE_KEEPALIVE_S - (clock() - quiet_since)
                until_expiry = ends_at - clock()
                wait_s = max(poll_s, min(until_keepalive, until_expiry, RESYNC_S))
                generation = await watch.changed(job, seen, wait_s)
                if generation == seen and clock() - read_at < RESYNC_S:
                    continue  # nothing moved: only the keep-alive, expiry and disconnect checks are due
            read_at = clock()
            try:
                state = await _read(context, job)
            except UnknownJob:
                yield sse(JobStatus.failed.value, {"id": job, "status": JobStatus.failed.value,
                                                   "detail": "the input was deleted"})
                return

    return SlotResponse(stream(), slot=slot, media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _read(context: ApiContext, job: str) -> JobState:
    """``queue.state`` on the streams' own threads (module docstring)."""
    if context.stream_reads is None:  # made here: a limiter belongs to the running event loop
        context.stream_reads = CapacityLimiter(STREAM_READ_THREADS)
    return await anyio.to_thread.run_sync(context.queue.state, job, limiter=context.stream_reads)


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
