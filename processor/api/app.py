"""The FastAPI app: its context, its problem responses and its routers (``processor.api.routes``).

``create_app(settings, store)`` builds it (tests build one per store); ``processor serve`` runs
it under uvicorn. Stateless: replicas share nothing but the bucket, which every route reads and
writes through one ``BucketQueue`` (``processor.queue``), handed to it as a dependency
(``processor.api.deps``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from processor.api.auth import read_keys
from processor.api.deps import ApiContext
from processor.api.http_metrics import ApiMetrics
from processor.api.problems import MEDIA_TYPE, Problem
from processor.api.render import JobRenderer
from processor.api.routes import events, files, health, jobs, pages, prototype
from processor.api.validate import Resolver
from processor.api.watch import JobWatch
from processor.api.webhooks import WebhookDispatcher, read_secret
from processor.config import Settings
from processor.errors import StoreAccessError, StoreError
from processor.queue.protocol import BucketQueue
from processor.store.base import ObjectStore
from processor.store.local import LocalStore

log = logging.getLogger("processor.api")

#: Seconds a client is told to wait before retrying after the bucket did not answer.
STORE_RETRY_AFTER_S = 5


def create_app(settings: Settings, store: ObjectStore, *, keys: list[str] | None = None,
               resolve: Resolver | None = None, clock: Callable[[], float] = time.monotonic,
               self_url: str | None = None, webhook_secret: str | None = None) -> FastAPI:
    """The API over ``store``. ``keys``: accepted tokens (default: from the environment; empty:
    open). ``resolve``: host name → addresses, for the webhook check (tests inject one).
    ``self_url``: where this server listens, for the links in webhooks when ``api.public_url``
    is unset. ``webhook_secret``: default from ``api.webhook_secret_env``; without one, requests
    with a ``webhook`` are refused (unsigned webhooks could be forged)."""
    api = settings.api
    queue = BucketQueue.for_settings(store, settings)
    tokens = [k.encode() for k in (keys if keys is not None else read_keys(settings))]
    if not tokens:
        log.warning("api_open", extra={"detail": f"{api.keys_env} is unset or empty: the API accepts "
                                       "requests without a token"})
    secret = webhook_secret if webhook_secret is not None else read_secret(api.webhook_secret_env)
    renderer = JobRenderer(api, queue)
    upload_limit = api.max_upload_bytes or settings.pipeline.decode.max_bytes
    dispatcher = None
    if secret and api.webhook_allow:
        webhook_base = (api.public_url or self_url or "").rstrip("/")
        dispatcher = WebhookDispatcher(
            queue, lambda state: renderer.render(webhook_base, state).model_dump(mode="json"), secret,
            replica=f"{socket.gethostname()}-{os.getpid()}", allow=api.webhook_allow, resolve=resolve)
    # One watcher of job changes for every waiting request and event stream of this replica.
    watch = JobWatch(queue, api.poll_s, local_root=store.root if isinstance(store, LocalStore) else None)
    context = ApiContext(settings=settings, queue=queue, tokens=tokens, clock=clock, metrics=ApiMetrics(queue),
                         renderer=renderer, upload_limit=upload_limit, resolve=resolve, webhook_secret=secret,
                         dispatcher=dispatcher, watch=watch)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if dispatcher is not None:
            dispatcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(watch.close)
            if dispatcher is not None:
                await run_in_threadpool(dispatcher.close)

    app = FastAPI(title="toy cartoonizer", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.context = context
    app.state.page_options = pages.PageOptions.from_settings(settings, upload_limit)
    app.state.metrics = context.metrics
    app.state.webhooks = dispatcher
    if api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=api.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer"])
    add_problem_handlers(app)
    app.add_exception_handler(pages.LoginRequired, pages.login_redirect)
    for module in (health, jobs, files, events, prototype, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=str(pages.STATIC_DIR)), name="static")
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


__all__ = ["MEDIA_TYPE", "create_app", "read_keys"]
