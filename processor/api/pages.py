"""The web pages ``processor serve`` shows: upload, one job, browse, login. Server-rendered
(Jinja2, ``templates/``) with a little vanilla JavaScript (``static/app.js``) and no build step.

The pages are clients of the JSON API like any other: they show what ``render`` makes of a job
(the same URLs, through the same auth), and the browser calls ``/v1/jobs`` and its event stream
itself. With keys set, ``/login`` puts the token in an HttpOnly, SameSite=Strict cookie that
``authorize`` (``app.py``) accepts beside the bearer header; it never appears in a URL.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from processor.api.jobs import MAX_PAGE, JobQueue, JobState, NotFailed, UnknownJob
from processor.api.problems import Problem
from processor.api.schemas import JobOut
from processor.config import Settings
from processor.config.licenses import noncommercial_uses

HERE = Path(__file__).parent
#: The cookie that carries the token for the pages (and the API calls they make).
COOKIE = "processor_token"
#: Seconds the login cookie lasts (a working day): the token itself never expires, the cookie does.
COOKIE_MAX_AGE_S = 12 * 3600
#: Jobs one browse page shows.
BROWSE_PAGE = 24
#: No inline script or style, nothing from elsewhere but images (S3/COS presigned variant URLs).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginRequired(Exception):
    """A page asked for without a valid token: the handler answers with a redirect to /login."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def same_origin(request: Request, public_url: str | None) -> bool:
    """Whether a state-changing request comes from our own pages: its Origin (or, when a browser
    sent none, its Referer) is this server's own origin. SameSite=Strict already keeps the cookie
    off cross-site requests; this is the second lock (OWASP: verify the origin with standard headers)."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent or sent == "null":
        return False
    own = {f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"}
    if public_url:
        own.add(_origin(public_url))
    return _origin(sent) in own


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].lower()}"


def safe_next(path: str | None) -> str:
    """A local path to go back to after login; anything else (another site) goes to /."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def add_pages(app: FastAPI, *, settings: Settings, jobs: JobQueue, tokens: Sequence[bytes],
              authorize: Callable[[Request], str], render: Callable[[str, JobState], JobOut],
              base_url: Callable[[Request], str]) -> None:
    """The page routes on ``app``; ``authorize`` is the API's own check (header or cookie)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    # Offer only the styles a worker of these settings accepts: with run.allow_noncommercial false
    # it refuses a style with non-commercial weights (validate_overrides), so the page names them apart.
    refused = sorted(name for name, style in settings.styles.items()
                     if not settings.run.allow_noncommercial and noncommercial_uses(style))
    styles = sorted(set(settings.styles) - set(refused))
    defaults = list(settings.run.styles)
    # Styles that read a picture of the look (an IP-Adapter): the page offers a picture for them.
    looks = [name for name in styles if getattr(settings.styles[name], "ip_adapter", None) is not None]
    api = settings.api

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/login?next=" + quote(exc.path, safe="/"), status_code=303)

    def page_auth(request: Request) -> str:
        try:
            return authorize(request)
        except Problem as exc:
            if exc.status == 401:
                raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else "")) from None
            raise

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context |= {"open": not tokens, "styles": styles, "defaults": defaults, "refused": refused, "looks": looks}
        resp = templates.TemplateResponse(request, name, context, status_code=status)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def secure(request: Request) -> bool:
        return request.url.scheme == "https" or (api.public_url or "").startswith("https://")

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        page_auth(request)
        return page(request, "index.html", max_bytes=api.max_upload_bytes or settings.pipeline.decode.max_bytes)

    @app.get("/jobs/{job}", include_in_schema=False)
    async def job_page(request: Request, job: str) -> Response:
        page_auth(request)
        try:
            state = await run_in_threadpool(jobs.state, job)
        except UnknownJob:
            return page(request, "missing.html", 404, job=job)
        return page(request, "job.html", job=render(base_url(request), state))

    @app.post("/jobs/{job}/retry", include_in_schema=False)
    async def retry_page(request: Request, job: str) -> Response:
        """The retry button (a plain form, so it works without JavaScript): requeue, then show the job."""
        page_auth(request)
        if not tokens and not same_origin(request, api.public_url):  # open API: still no cross-site posts
            raise Problem(403, "this form was posted from another site", hint="Use the button on the job's page.")
        try:
            await run_in_threadpool(jobs.retry, job)
        except UnknownJob:
            return page(request, "missing.html", 404, job=job)
        except NotFailed:
            pass  # retried meanwhile (another tab, another user): the job page shows where it is
        return RedirectResponse(f"/jobs/{job}", status_code=303)

    @app.get("/browse", include_in_schema=False)
    async def browse(request: Request, cursor: str | None = None, limit: int = BROWSE_PAGE) -> Response:
        page_auth(request)
        limit = max(1, min(limit, MAX_PAGE))
        try:
            found = await run_in_threadpool(jobs.page, cursor, limit)
        except UnknownJob:
            return RedirectResponse("/browse", status_code=303)
        base = base_url(request)
        return page(request, "browse.html", jobs=[render(base, s) for s in found.jobs],
                    next_cursor=found.next_cursor, first=not cursor, limit=limit)

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002 - the query name
        return page(request, "login.html", next=safe_next(next), error=None)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        target = safe_next(str(form.get("next") or "/"))
        if not same_origin(request, api.public_url):  # login CSRF: someone else's token in your browser
            return page(request, "login.html", 403, next=target, error="This form was posted from another site.")
        if not tokens:
            return RedirectResponse(target, status_code=303)
        given = str(form.get("token") or "").strip().encode()
        matched = [hmac.compare_digest(given, t) for t in tokens]
        if not given or not any(matched):
            return page(request, "login.html", 401, next=target,
                        error="That token is not valid. Ask the operator for one.")
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(COOKIE, given.decode(), max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
                        secure=secure(request), path="/")
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        if same_origin(request, api.public_url):
            resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure(request))
        return resp
