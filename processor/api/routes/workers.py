"""``GET /v1/styles`` (the styles a job can get now) and ``GET /v1/workers`` (the running workers,
for operators), from the workers' capabilities records (``processor.api.offers``)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from processor.api.deps import Caller, Context
from processor.api.offers import style_offers
from processor.api.openapi import AUTH_AND_STORE, problems
from processor.api.problems import Problem
from processor.api.schemas import StyleOut, StylesOut, WorkerOut, WorkersOut, WorkerStyleOut

router = APIRouter()


@router.get("/v1/styles", response_model=StylesOut, responses=problems(*AUTH_AND_STORE))
async def styles(context: Context, _caller: Caller) -> StylesOut:
    """Every style the server's configuration defines: offered or not, and why not (no running
    worker can load it, or its weights' licence), with a warning while no worker runs."""
    offers = style_offers(context.settings, await run_in_threadpool(context.roster.get))
    return StylesOut(styles=[StyleOut(name=s.name, engine=s.engine, default=s.default, offered=s.offered,
                                      workers=list(s.workers), reason=s.reason) for s in offers.styles],
                     workers=offers.live_workers, warning=offers.warning)


@router.get("/v1/workers", response_model=WorkersOut, responses=problems(*AUTH_AND_STORE, 403))
async def workers(context: Context, caller: Caller) -> WorkersOut:
    """The running workers (an admin's view: their hosts, versions, devices and installs)."""
    if not caller.admin:
        raise Problem(403, "only an admin client may list the workers", hint="Ask the operator; "
                      "GET /v1/styles says which styles the workers can run.")
    roster = await run_in_threadpool(context.queue.workers)  # fresh: an operator asks to see now
    return WorkersOut(
        workers=[WorkerOut(id=w.record.worker.id, version=w.record.worker.version, device=w.record.worker.device,
                           phase=w.record.phase, started_at=w.record.started_at, last_seen_s=round(w.age_s, 1),
                           run_styles=w.record.run_styles, extras=w.record.extras,
                           styles=[WorkerStyleOut(name=s.name, state=s.state.value, reason=s.reason)
                                   for s in w.record.styles])
                 for w in roster.live],
        stale=roster.stale, unreadable=roster.unreadable)
