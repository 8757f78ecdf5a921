"""The routers' dependencies (FastAPI ``Depends``): the API's context, the caller (``Identity``),
the bucket face (``BucketQueue``), the settings, the clock and the renderer, plus the job lookups
that answer a missing job, or one the caller may not see, with the same 404 problem.

``create_app`` builds one ``ApiContext`` and keeps it on ``app.state``; routes name what they
need with the ``Annotated`` aliases below (``Queue``, ``Caller``, ...), so a test can override any
one of them with ``app.dependency_overrides``.

Tenancy: a job belongs to the client that submitted it (``BucketQueue.owner_of``, from the folder
its input was written to); ``visible_state_or_404`` and ``check_visible`` answer 404 for another
client's job exactly as for a job that does not exist, before the bucket is read. Admins see all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from processor.api.auth import COOKIE, check_token
from processor.api.clients import Access, Identity
from processor.api.guard import AuthFailures
from processor.api.http_metrics import ApiMetrics
from processor.api.limits import BodyBudget
from processor.api.offers import RosterCache
from processor.api.problems import Problem
from processor.api.readiness import WriteProbe
from processor.api.render import JobRenderer
from processor.api.streams import StreamSlots
from processor.api.validate import Resolver
from processor.api.watch import RESYNC_S, JobWatch
from processor.api.webhooks import WebhookDispatcher
from processor.config import Settings
from processor.config.sections import DEFAULT_API_MAX_STREAMS, DEFAULT_API_MAX_STREAMS_PER_CLIENT
from processor.queue.jobs import JobState, UnknownJob
from processor.queue.protocol import BucketQueue


@dataclass
class ApiContext:
    """Everything the routes share; one per app, stateless apart from the bucket."""

    settings: Settings
    queue: BucketQueue
    #: Who may call, and how (``processor.api.clients``).
    access: Access
    #: Monotonic seconds, for waits and event streams (tests drive it).
    clock: Callable[[], float]
    metrics: ApiMetrics
    renderer: JobRenderer
    #: Bytes: the largest photo (and picture of the look) an upload may carry.
    upload_limit: int
    #: Host name -> addresses, for the webhook check (tests inject one); None: the system's.
    resolve: Resolver | None = None
    #: The webhook signing secret; None: requests with a webhook are refused.
    webhook_secret: str | None = None
    #: This replica's webhook sender; None when webhooks are off.
    dispatcher: WebhookDispatcher | None = None
    #: Wrong tokens per client address.
    failures: AuthFailures = field(default_factory=AuthFailures)
    #: Request bodies in flight (``api.body_budget_bytes``); None: unbounded.
    budget: BodyBudget | None = None
    #: Event streams open (``api.max_streams``, ``api.max_streams_per_client``).
    streams: StreamSlots = field(default_factory=lambda: StreamSlots(DEFAULT_API_MAX_STREAMS,
                                                                      DEFAULT_API_MAX_STREAMS_PER_CLIENT))
    #: Whether the bucket takes writes (``/readyz``); None: not probed.
    ready: WriteProbe | None = None
    #: The threads of the event streams' bucket reads (``routes.events``), made on first use.
    stream_reads: CapacityLimiter | None = None
    #: What tells waiting requests and event streams that a job moved (one per replica); None:
    #: they read the job's state every ``api.poll_s``.
    watch: JobWatch | None = None
    #: The running workers' capabilities records, read at most every few seconds (``processor.api.offers``).
    roster: RosterCache = field(init=False)

    def __post_init__(self) -> None:
        self.roster = RosterCache(self.queue, clock=self.clock)


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(get_context)]


def get_queue(context: Context) -> BucketQueue:
    return context.queue


def get_settings(context: Context) -> Settings:
    return context.settings


def get_clock(context: Context) -> Callable[[], float]:
    return context.clock


def get_renderer(context: Context) -> JobRenderer:
    return context.renderer


#: The two ways a caller sends its token, as the OpenAPI document names them (either one will do).
#: Neither raises: ``check_token`` reads both and answers the problem.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="A client's token (PROCESSOR_API_KEYS, or the one `processor serve` prints).")
LOGIN_COOKIE = APIKeyCookie(name=COOKIE, auto_error=False, scheme_name="cookie",
                            description="The login cookie of the web pages (POST /login); a state-changing request "
                            "with it must come from this server's own pages (its Origin).")


async def authorize(request: Request, context: Context,
                    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
                    _cookie: Annotated[str | None, Depends(LOGIN_COOKIE)]) -> Identity:
    """The caller; 401 without a valid token (``processor.api.auth.check_token``)."""
    return check_token(request, context.access, context.settings.api.public_url, context.failures)


Queue = Annotated[BucketQueue, Depends(get_queue)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Clock = Annotated[Callable[[], float], Depends(get_clock)]
Renderer = Annotated[JobRenderer, Depends(get_renderer)]
Caller = Annotated[Identity, Depends(authorize)]


def no_job(job: str) -> Problem:
    return Problem(404, f"no job {job!r}", field="id",
                   hint="Use an id returned by POST /v1/jobs or listed by GET /v1/jobs.")


def check_visible(queue: BucketQueue, job: str, caller: Identity) -> None:
    """A 404 problem unless ``job`` is an id ``caller`` may see (no bucket request)."""
    try:
        owner = queue.owner_of(job)
    except UnknownJob:
        raise no_job(job) from None
    if not caller.sees(owner):
        raise no_job(job)


async def visible_state_or_404(queue: BucketQueue, job: str, caller: Identity) -> JobState:
    """The job's state when ``caller`` may see it; the same 404 problem for another client's job
    as for one that does not exist."""
    check_visible(queue, job, caller)
    return await state_or_404(queue, job)


async def state_or_404(queue: BucketQueue, job: str) -> JobState:
    """The job's state; a 404 problem when the id names no input."""
    try:
        return await run_in_threadpool(queue.state, job)
    except UnknownJob:
        raise no_job(job) from None


async def wait_for_end(queue: BucketQueue, job: str, seconds: float, *, clock: Callable[[], float],
                       poll_s: float, watch: JobWatch | None = None,
                       stop: Callable[[JobState], bool] | None = None) -> JobState:
    """The job's state once it ended (or ``stop`` says so of it), or after ``seconds``: read again
    whenever ``watch`` says the job moved (and every ``RESYNC_S`` regardless), or without one every
    ``poll_s``."""
    deadline = clock() + seconds
    generation = watch_generation(watch, job)
    state = await state_or_404(queue, job)
    while not state.status.ended and not (stop is not None and stop(state)) and clock() < deadline:
        if watch is None:
            await asyncio.sleep(min(poll_s, max(0.0, deadline - clock())))
        else:
            generation = await watch.changed(job, generation, min(RESYNC_S, max(0.0, deadline - clock())))
        state = await state_or_404(queue, job)
    return state


def watch_generation(watch: JobWatch | None, job: str) -> int:
    """The watch's generation of ``job`` (0 without a watch); a 404 problem for an unknown id."""
    if watch is None:
        return 0
    try:
        return watch.generation(job)
    except UnknownJob:
        raise Problem(404, f"no job {job!r}", field="id",
                      hint="Use an id returned by POST /v1/jobs or listed by GET /v1/jobs.") from None
