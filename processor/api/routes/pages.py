"""The web pages ``processor serve`` shows: upload, one job, browse, login. Server-rendered
(Jinja2, ``templates/``) with a little vanilla JavaScript (``static/app.js``) and no build step.

The pages are clients of the JSON API like any other: they show what ``JobRenderer`` makes of a
job (the same URLs, through the same auth), and the browser calls ``/v1/jobs`` and its event
stream itself. With keys set, ``/login`` puts the token in an HttpOnly, SameSite=Strict cookie
that ``authorize`` (``processor.api.auth``) accepts beside the bearer header; it never appears in
a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from processor.api.auth import COOKIE, COOKIE_MAX_AGE_S, check_token, safe_next, same_origin, token_matches
from processor.api.deps import Context, Queue, Renderer
from processor.api.problems import Problem
from processor.config import Settings
from processor.config.licenses import noncommercial_uses
from processor.queue.jobs import MAX_PAGE, NotFailed, UnknownJob

#: ``processor/api``: where the templates and the static files live.
HERE = Path(__file__).resolve().parent.parent
STATIC_DIR = HERE / "static"
#: Jobs one browse page shows.
BROWSE_PAGE = 24
#: No inline script or style, nothing from elsewhere but images (S3/COS presigned variant URLs).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class PageOptions:
    """What every page shows of the settings: the styles offered, the defaults, the upload cap."""

    #: Styles a worker of these settings accepts, by name.
    styles: list[str]
    #: Styles it refuses (non-commercial weights while run.allow_noncommercial is false).
    refused: list[str]
    defaults: list[str]
    #: Styles that read a picture of the look (an IP-Adapter): the page offers a picture for them.
    looks: list[str]
    #: Bytes: the largest photo an upload may carry.
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings, upload_limit: int) -> PageOptions:
        # Offer only the styles a worker of these settings accepts: with run.allow_noncommercial false
        # it refuses a style with non-commercial weights (validate_overrides), so the page names them apart.
        refused = sorted(name for name, style in settings.styles.items()
                         if not settings.run.allow_noncommercial and noncommercial_uses(style))
        styles = sorted(set(settings.styles) - set(refused))
        looks = [name for name in styles if getattr(settings.styles[name], "ip_adapter", None) is not None]
        return cls(styles=styles, refused=refused, defaults=list(settings.run.styles), looks=looks,
                   max_bytes=upload_limit)


class LoginRequired(Exception):
    """A page asked for without a valid token: the handler answers with a redirect to /login."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


async def login_redirect(_request: Request, exc: Exception) -> Response:
    """The app's handler for ``LoginRequired``."""
    path = exc.path if isinstance(exc, LoginRequired) else "/"
    return RedirectResponse("/login?next=" + quote(path, safe="/"), status_code=303)


def page_auth(request: Request, context: Context) -> str:
    """The API's own check (header or cookie); a redirect to /login instead of a 401."""
    try:
        return check_token(request, context.tokens, context.settings.api.public_url)
    except Problem as exc:
        if exc.status == 401:
            raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else "")) from None
        raise


def get_page_options(request: Request) -> PageOptions:
    options: PageOptions = request.app.state.page_options
    return options


PageToken = Annotated[str, Depends(page_auth)]
Options = Annotated[PageOptions, Depends(get_page_options)]


def page(request: Request, context: Context, options: PageOptions, name: str, status: int = 200,
         **values: Any) -> Response:
    values |= {"open": not context.tokens, "styles": options.styles, "defaults": options.defaults,
               "refused": options.refused, "looks": options.looks}
    resp = templates.TemplateResponse(request, name, values, status_code=status)
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def secure(request: Request, context: Context) -> bool:
    return request.url.scheme == "https" or (context.settings.api.public_url or "").startswith("https://")


@router.get("/")
async def index(request: Request, context: Context, options: Options, _token: PageToken) -> Response:
    return page(request, context, options, "index.html", max_bytes=options.max_bytes)


@router.get("/jobs/{job}")
async def job_page(request: Request, job: str, context: Context, options: Options, queue: Queue,
                   renderer: Renderer, _token: PageToken) -> Response:
    try:
        state = await run_in_threadpool(queue.state, job)
    except UnknownJob:
        return page(request, context, options, "missing.html", 404, job=job)
    return page(request, context, options, "job.html", job=renderer.render(renderer.base_url(request), state))


@router.post("/jobs/{job}/retry")
async def retry_page(request: Request, job: str, context: Context, options: Options, queue: Queue,
                     _token: PageToken) -> Response:
    """The retry button (a plain form, so it works without JavaScript): requeue, then show the job."""
    if not context.tokens and not same_origin(request, context.settings.api.public_url):
        # An open API: still no cross-site posts.
        raise Problem(403, "this form was posted from another site", hint="Use the button on the job's page.")
    try:
        await run_in_threadpool(queue.retry, job)
    except UnknownJob:
        return page(request, context, options, "missing.html", 404, job=job)
    except NotFailed:
        pass  # retried meanwhile (another tab, another user): the job page shows where it is
    return RedirectResponse(f"/jobs/{job}", status_code=303)


@router.get("/browse")
async def browse(request: Request, context: Context, options: Options, queue: Queue, renderer: Renderer,
                 _token: PageToken, cursor: str | None = None, limit: int = BROWSE_PAGE) -> Response:
    limit = max(1, min(limit, MAX_PAGE))
    try:
        found = await run_in_threadpool(queue.page, cursor, limit)
    except UnknownJob:
        return RedirectResponse("/browse", status_code=303)
    base = renderer.base_url(request)
    return page(request, context, options, "browse.html", jobs=[renderer.render(base, s) for s in found.jobs],
                next_cursor=found.next_cursor, first=not cursor, limit=limit)


@router.get("/login")
async def login_form(request: Request, context: Context, options: Options,
                     next: str | None = None) -> Response:  # noqa: A002 - the query name
    return page(request, context, options, "login.html", next=safe_next(next), error=None)


@router.post("/login")
async def login(request: Request, context: Context, options: Options) -> Response:
    form = await request.form()
    target = safe_next(str(form.get("next") or "/"))
    if not same_origin(request, context.settings.api.public_url):  # login CSRF: someone else's token in your browser
        return page(request, context, options, "login.html", 403, next=target,
                    error="This form was posted from another site.")
    if not context.tokens:
        return RedirectResponse(target, status_code=303)
    given = str(form.get("token") or "").strip().encode()
    if not given or not token_matches(given, context.tokens):
        return page(request, context, options, "login.html", 401, next=target,
                    error="That token is not valid. Ask the operator for one.")
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(COOKIE, given.decode(), max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
                    secure=secure(request, context), path="/")
    return resp


@router.post("/logout")
async def logout(request: Request, context: Context) -> Response:
    resp = RedirectResponse("/login", status_code=303)
    if same_origin(request, context.settings.api.public_url):
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure(request, context))
    return resp
