"""The web pages ``processor serve`` shows: upload, one job, browse, login. Server-rendered
(Jinja2, ``templates/``) with a little vanilla JavaScript (``static/app.js``) and no build step.

The pages are clients of the JSON API like any other: they show what ``JobRenderer`` makes of a
job (the same URLs, through the same auth and the same tenancy: a client's pages show its own
jobs, an admin's every job), and the browser calls ``/v1/jobs`` and its event stream itself.
``/login`` puts the token in an HttpOnly, SameSite=Strict cookie that ``authorize``
(``processor.api.auth``) accepts beside the bearer header; it reads at most ``LOGIN_BODY_BYTES``
of an url-encoded form, before any token is checked. The one token a URL may carry is the admin
token ``serve`` generated at start (``?token=``, printed with the URL, as Jupyter does): the page
puts it in the cookie and sends the browser on to the same URL without it.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from processor.api.auth import COOKIE, COOKIE_MAX_AGE_S, check_token, client_address, identify, safe_next, same_origin
from processor.api.clients import Identity
from processor.api.deps import ApiContext, Context, Queue, Renderer, check_visible
from processor.api.guard import too_many_failures
from processor.api.offers import style_offers
from processor.api.problems import Problem
from processor.api.upload import read_capped
from processor.config import Settings
from processor.config.licenses import noncommercial_uses
from processor.queue.jobs import MAX_PAGE, NotFailed, UnknownJob

#: ``processor/api``: where the templates and the static files live.
HERE = Path(__file__).resolve().parent.parent
STATIC_DIR = HERE / "static"
#: Jobs one browse page shows.
BROWSE_PAGE = 24
#: Bytes of the login form read at most (a token, the page to go back to).
LOGIN_BODY_BYTES = 4096
#: The one form encoding the login form is read in (what the login page's form sends).
LOGIN_MEDIA_TYPE = "application/x-www-form-urlencoded"
#: No inline script or style, nothing from elsewhere but images and clips (S3/COS presigned URLs).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; "
       "media-src 'self' blob: https: http:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")

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


class LoggedInByUrl(Exception):
    """A page asked for with the generated token in its URL: the handler puts the token in the
    cookie and sends the browser on to ``path``, the same URL without it."""

    def __init__(self, path: str, token: str) -> None:
        super().__init__(path)
        self.path = path
        self.token = token


async def login_redirect(_request: Request, exc: Exception) -> Response:
    """The app's handler for ``LoginRequired``."""
    path = exc.path if isinstance(exc, LoginRequired) else "/"
    return RedirectResponse("/login?next=" + quote(path, safe="/"), status_code=303)


async def url_login(request: Request, exc: Exception) -> Response:
    """The app's handler for ``LoggedInByUrl``."""
    assert isinstance(exc, LoggedInByUrl)
    resp = RedirectResponse(exc.path, status_code=303)
    resp.set_cookie(COOKIE, exc.token, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
                    secure=secure(request, request.app.state.context), path="/")
    resp.headers["Referrer-Policy"] = "no-referrer"  # the URL it came from carried the token
    return resp


async def page_auth(request: Request, context: Context) -> Identity:
    """The API's own check (header or cookie); a redirect to /login instead of a 401."""
    in_url = request.query_params.get("token")
    if in_url is not None and not context.access.open:
        _login_by_url(request, context, in_url)
    try:
        return check_token(request, context.access, context.settings.api.public_url, context.failures)
    except Problem as exc:
        if exc.status == 401:
            raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else "")) from None
        raise


def _login_by_url(request: Request, context: ApiContext, given: str) -> None:
    """``LoggedInByUrl`` for the generated token; any other token in a URL counts as a wrong one."""
    address = client_address(request)
    wait = context.failures.retry_after(address)
    if wait is not None:
        raise too_many_failures(wait)
    generated = context.access.generated_token
    if generated is not None and hmac.compare_digest(given.encode(), generated.encode()):
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        raise LoggedInByUrl(request.url.path + (f"?{urlencode(rest)}" if rest else ""), given)
    context.failures.failed(address)


def get_page_options(request: Request) -> PageOptions:
    options: PageOptions = request.app.state.page_options
    return options


PageCaller = Annotated[Identity, Depends(page_auth)]
Options = Annotated[PageOptions, Depends(get_page_options)]


def page(request: Request, context: Context, options: PageOptions, name: str, status: int = 200, *,
         headers: dict[str, str] | None = None, **values: Any) -> Response:
    values |= {"open": context.access.open, "styles": options.styles, "defaults": options.defaults,
               "refused": options.refused, "looks": options.looks}
    resp = templates.TemplateResponse(request, name, values, status_code=status, headers=headers)
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def natural_key(text: str) -> list[Any]:
    """Sort key that orders the digit runs of ``text`` by their value: ``a_2`` before ``a_10``."""
    # re.split with a group alternates text and digit runs, so equal positions hold equal types.
    return [int(part) if i % 2 else part.casefold() for i, part in enumerate(re.split(r"(\d+)", text))]


def secure(request: Request, context: Context) -> bool:
    return request.url.scheme == "https" or (context.settings.api.public_url or "").startswith("https://")


@router.get("/")
async def index(request: Request, context: Context, options: Options, _caller: PageCaller) -> Response:
    # The styles some running worker can run; the rest greyed out with the reason, grouped by it.
    offers = style_offers(context.settings, await run_in_threadpool(context.roster.get))
    unavailable: dict[str, list[str]] = {}
    for s in offers.not_offered:
        if s.name not in options.refused:  # those are listed apart (their licence)
            unavailable.setdefault(s.reason or "", []).append(s.name)
    return page(request, context, options, "index.html", max_bytes=options.max_bytes,
                unavailable=[s for s in offers.styles if s.name in {n for v in unavailable.values() for n in v}],
                unavailable_why=sorted(unavailable.items(), key=lambda kv: kv[1]), no_worker=offers.warning)


@router.get("/jobs/{job}")
async def job_page(request: Request, job: str, context: Context, options: Options, queue: Queue,
                   renderer: Renderer, caller: PageCaller) -> Response:
    try:
        check_visible(queue, job, caller)
        state = await run_in_threadpool(queue.state, job)
    except (UnknownJob, Problem):  # Problem: another client's job, which is missing for this one
        return page(request, context, options, "missing.html", 404, job=job)
    return page(request, context, options, "job.html", job=renderer.render(renderer.base_url(request), state))


@router.post("/jobs/{job}/retry")
async def retry_page(request: Request, job: str, context: Context, options: Options, queue: Queue,
                     caller: PageCaller) -> Response:
    """The retry button (a plain form, so it works without JavaScript): requeue, then show the job."""
    if context.access.open and not same_origin(request, context.settings.api.public_url):
        # An open API: still no cross-site posts.
        raise Problem(403, "this form was posted from another site", hint="Use the button on the job's page.")
    try:
        check_visible(queue, job, caller)
        await run_in_threadpool(queue.retry, job)
    except (UnknownJob, Problem):
        return page(request, context, options, "missing.html", 404, job=job)
    except NotFailed:
        pass  # retried meanwhile (another tab, another user): the job page shows where it is
    return RedirectResponse(f"/jobs/{job}", status_code=303)


@router.get("/browse")
async def browse(request: Request, context: Context, options: Options, queue: Queue, renderer: Renderer,
                 caller: PageCaller, cursor: str | None = None, limit: int = BROWSE_PAGE) -> Response:
    limit = max(1, min(limit, MAX_PAGE))
    try:
        found = await run_in_threadpool(queue.page, cursor, limit, owner=None if caller.admin else caller.name)
    except UnknownJob:
        return RedirectResponse("/browse", status_code=303)
    base = renderer.base_url(request)
    # A page in natural order (toy_2 before toy_10); the pages themselves follow the bucket's key
    # order, which the cursor (the page's last key) keeps.
    shown = sorted(found.jobs, key=lambda s: natural_key(s.input_key))
    return page(request, context, options, "browse.html", jobs=[renderer.render(base, s) for s in shown],
                next_cursor=found.next_cursor, first=not cursor, limit=limit)


@router.get("/login")
async def login_form(request: Request, context: Context, options: Options,
                     next: str | None = None) -> Response:  # noqa: A002 - the query name
    return page(request, context, options, "login.html", next=safe_next(next), error=None)


@router.post("/login")
async def login(request: Request, context: Context, options: Options) -> Response:
    if not same_origin(request, context.settings.api.public_url):  # login CSRF: someone else's token in your browser
        return page(request, context, options, "login.html", 403, next="/",
                    error="This form was posted from another site.")
    form = await read_login_form(request)
    target = safe_next(form.get("next") or "/")
    if context.access.open:
        return RedirectResponse(target, status_code=303)
    given = (form.get("token") or "").strip()
    try:
        identity = identify(given, context.access, context.failures, client_address(request)) if given else None
    except Problem as exc:  # too many wrong tokens from this address
        return page(request, context, options, "login.html", exc.status, next=target, error=exc.detail + ". "
                    + (exc.hint or ""), headers=exc.headers)
    if identity is None:
        return page(request, context, options, "login.html", 401, next=target,
                    error="That token is not valid. Ask the operator for one.")
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(COOKIE, given, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
                    secure=secure(request, context), path="/")
    return resp


async def read_login_form(request: Request) -> dict[str, str]:
    """The login form's fields: an url-encoded body of at most ``LOGIN_BODY_BYTES`` (413 past it,
    415 for any other encoding), read before anything else is done with it."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != LOGIN_MEDIA_TYPE:
        raise Problem(415, f"the login form is sent as {LOGIN_MEDIA_TYPE}, not {media or '(none)'!r}",
                      field="Content-Type", hint="Log in with the form at /login.")
    body = await read_capped(request.stream(), LOGIN_BODY_BYTES, "the login form", field=None,
                             hint="Send the token and the page to go back to, nothing else.")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "the login form could not be read", hint="Log in with the form at /login.") from None
    return {name: values[-1] for name, values in fields.items()}


@router.post("/logout")
async def logout(request: Request, context: Context) -> Response:
    resp = RedirectResponse("/login", status_code=303)
    if same_origin(request, context.settings.api.public_url):
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure(request, context))
    return resp
