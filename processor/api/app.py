"""The FastAPI app: its context, its problem responses and its routers (``processor.api.routes``).

``create_app(settings, store)`` builds it (tests build one per store); ``processor serve`` runs
it under uvicorn (``processor.api.server``). Stateless: replicas share nothing but the bucket, which
every route reads and writes through one ``BucketQueue`` (``processor.queue``), handed to it as a
dependency (``processor.api.deps``). In front of the routes, outermost first: the request metrics
and spans (``processor.api.http_metrics.RequestObserver``), an open server's Host and Origin checks
(``processor.api.guard``), the body budget and deadline (``processor.api.limits``) and CORS.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from processor.api import openapi
from processor.api.clients import Access, read_keys, resolve_access
from processor.api.deps import ApiContext
from processor.api.guard import OpenServerGuard, own_hosts
from processor.api.http_metrics import ApiMetrics, RequestObserver
from processor.api.limits import (
    BodyBudget,
    BodyBudgetFull,
    BodyLimits,
    BodyTimeout,
    body_timeout_problem,
    budget_full_problem,
)
from processor.api.problems import MEDIA_TYPE, Problem
from processor.api.readiness import WriteProbe
from processor.api.render import JobRenderer
from processor.api.routes import events, files, health, jobs, pages, prototype, workers
from processor.api.streams import StreamSlots
from processor.api.upload import form_limit, json_body_limit
from processor.api.validate import Resolver
from processor.api.watch import JobWatch
from processor.api.webhooks import WebhookDispatcher, read_secret
from processor.config import Settings
from processor.errors import ConfigError, StoreAccessError, StoreError
from processor.queue.protocol import BucketQueue
from processor.store.base import ObjectStore
from processor.store.local import LocalStore
from processor.tracing import NO_TRACING, Tracer

log = logging.getLogger("processor.api")

#: Seconds a client is told to wait before retrying after the bucket did not answer.
STORE_RETRY_AFTER_S = 5


def create_app(settings: Settings, store: ObjectStore, *, keys: list[str] | None = None,
               resolve: Resolver | None = None, clock: Callable[[], float] = time.monotonic,
               self_url: str | None = None, webhook_secret: str | None = None,
               access: Access | None = None, tracer: Tracer = NO_TRACING) -> FastAPI:
    """The API over ``store``. ``access``: who may call (``processor.api.clients``); default from
    ``keys`` (entries as in ``PROCESSOR_API_KEYS``; ``[]``: open), else from the environment
    (``resolve_access``: without clients, one generated admin token, in ``app.state.access``).
    ``resolve``: host name → addresses, for the webhook check (tests inject one). ``self_url``:
    where this server listens, for the links in webhooks when ``api.public_url`` is unset, and an
    open server's own host. ``webhook_secret``: default from ``api.webhook_secret_env``; without
    one, requests with a ``webhook`` are refused (unsigned webhooks could be forged). ``tracer``:
    a span per request (``processor.tracing``; default: none)."""
    api = settings.api
    access = access or resolve_access(settings, keys)
    if access.open:
        log.warning("api_open", extra={"detail": "api.open: the API accepts requests without a token, from "
                                       "this machine's host names only"})
    queue = BucketQueue.for_settings(store, settings)
    secret = webhook_secret if webhook_secret is not None else read_secret(api.webhook_secret_env)
    renderer = JobRenderer(api, queue)
    upload_limit = api.max_upload_bytes or settings.pipeline.decode.max_bytes
    largest = max(json_body_limit(2 * upload_limit), form_limit(upload_limit))
    if api.body_budget_bytes < largest:
        raise ConfigError(f"api.body_budget_bytes is {api.body_budget_bytes:,} bytes, less than one request at the "
                          f"upload cap ({largest:,} bytes: two photos of {upload_limit:,} bytes as base64 JSON); "
                          f"raise it to at least {largest:,} (and the API's memory to about 3 times it plus "
                          "100 MiB), or lower api.max_upload_bytes")
    replica = f"{socket.gethostname()}-{os.getpid()}"
    dispatcher = None
    if secret and api.webhook_allow:
        webhook_base = (api.public_url or self_url or "").rstrip("/")
        dispatcher = WebhookDispatcher(
            queue, lambda state: renderer.render(webhook_base, state).model_dump(mode="json"), secret,
            replica=replica, allow=api.webhook_allow, resolve=resolve)
    budget = BodyBudget(api.body_budget_bytes)
    # One watcher of job changes for every waiting request and event stream of this replica.
    watch = JobWatch(queue, api.poll_s, local_root=store.root if isinstance(store, LocalStore) else None)
    context = ApiContext(settings=settings, queue=queue, access=access, clock=clock, metrics=ApiMetrics(queue),
                         renderer=renderer, upload_limit=upload_limit, resolve=resolve, webhook_secret=secret,
                         dispatcher=dispatcher, budget=budget,
                         streams=StreamSlots(api.max_streams, api.max_streams_per_client),
                         ready=WriteProbe(queue, replica, clock=clock), watch=watch)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if dispatcher is not None:
            dispatcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(watch.close)
            await run_in_threadpool(queue.close)  # the last uploads' hint, written before exit
            if dispatcher is not None:
                await run_in_threadpool(dispatcher.close)

    app = FastAPI(title="toy cartoonizer", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.context = context
    app.state.access = access
    app.state.page_options = pages.PageOptions.from_settings(settings, upload_limit)
    app.state.metrics = context.metrics
    app.state.webhooks = dispatcher
    if api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=api.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer"])
    app.add_middleware(BodyLimits, budget=budget)
    if access.open:
        hosts = own_hosts(self_url=self_url, public_url=api.public_url, allowed=api.allowed_hosts)
        origins = [*api.cors_origins, *([api.public_url] if api.public_url else [])]
        app.add_middleware(OpenServerGuard, hosts=hosts, origins=[_origin_of(o) for o in origins])
    # Outermost: every answer is counted, the guards' and the limits' too.
    app.add_middleware(RequestObserver, metrics=context.metrics, tracer=tracer)
    add_problem_handlers(app)
    app.add_exception_handler(pages.LoginRequired, pages.login_redirect)
    app.add_exception_handler(pages.LoggedInByUrl, pages.url_login)
    for module in (health, jobs, files, events, workers, prototype, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=str(pages.STATIC_DIR)), name="static")
    openapi.install(app)
    return app


def add_problem_handlers(app: FastAPI) -> None:
    """Every error answers as a problem (``processor.api.problems``) that names what to change."""

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

    @app.exception_handler(BodyBudgetFull)
    async def _budget(_request: Request, _exc: BodyBudgetFull) -> Response:
        return budget_full_problem().response()

    @app.exception_handler(BodyTimeout)
    async def _slow_body(_request: Request, _exc: BodyTimeout) -> Response:
        return body_timeout_problem().response()

    @app.exception_handler(StoreError)
    async def _store(_request: Request, exc: StoreError) -> Response:
        log.warning("store_error", extra={"error": type(exc).__name__, "detail": str(exc)})
        return Problem(503, "the bucket did not answer; nothing was lost, try again",
                       hint="Retry the request in a few seconds.",
                       headers={"Retry-After": str(STORE_RETRY_AFTER_S)}).response()

    @app.exception_handler(StoreAccessError)
    async def _access(_request: Request, exc: StoreAccessError) -> Response:
        log.error("store_access", extra={"detail": str(exc)})
        return Problem(503, "the API's bucket credentials were refused", hint="The operator must fix the "
                       "store credentials (processor doctor).").response()


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


__all__ = ["MEDIA_TYPE", "create_app", "read_keys"]
