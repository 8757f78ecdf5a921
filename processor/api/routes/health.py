"""Probes and Prometheus: ``/healthz``, ``/readyz`` and ``/metrics``, open to the kubelet and the scraper."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from processor.api.deps import Context, Queue
from processor.api.problems import Problem
from processor.errors import StoreAccessError, StoreError

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(queue: Queue) -> Response:
    try:
        queue.ping()
    except (StoreError, StoreAccessError) as exc:
        return Problem(503, f"the bucket is not reachable: {type(exc).__name__}",
                       hint="Check the store settings and credentials (processor doctor).").response()
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
def prometheus(request: Request, context: Context) -> Response:
    body, content_type = context.metrics.render(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
