"""Probes and Prometheus: ``/healthz``, ``/readyz`` and ``/metrics``, open to the kubelet and the scraper.

``/healthz`` runs on the event loop itself (no thread, no bucket): it answers while every thread is
busy. ``/readyz`` is one HEAD on the bucket plus, at most every ``READY_WRITE_EVERY_S``, a small
write under the state prefix (``processor.api.readiness``): not ready while the bucket takes no
writes (a full disk). Its ``workers`` field counts the running workers (their capabilities
records, ``processor.api.offers``); none running keeps the API ready, with a ``warning``: the API
and the workers scale apart (workers from zero on the backlog), and a job submitted then waits."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from processor.api.deps import Context
from processor.api.offers import NO_WORKER
from processor.api.problems import Problem
from processor.errors import StoreAccessError, StoreError

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(context: Context) -> Response:
    try:
        context.queue.ping()
    except (StoreError, StoreAccessError) as exc:
        return Problem(503, f"the bucket is not reachable: {type(exc).__name__}",
                       hint="Check the store settings and credentials (processor doctor).").response()
    refused = context.ready.failure() if context.ready is not None else None
    if refused is not None:
        return Problem(503, f"the bucket takes no writes: {refused}",
                       hint="Free space or lift the write restriction on the bucket (a full disk, a quota, a "
                       "read-only policy); submits fail until then.").response()
    roster = context.roster.get()
    body: dict[str, object] = {"status": "ready", "workers": None if roster is None else {
        "live": len(roster.live), "ready": sum(1 for w in roster.live if w.record.phase == "ready")}}
    if roster is not None and not roster.any_live:
        body["warning"] = NO_WORKER
    return JSONResponse(body)


@router.get("/metrics", include_in_schema=False)
def prometheus(request: Request, context: Context) -> Response:
    body, content_type = context.metrics.render(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
