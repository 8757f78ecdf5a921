"""Who may call the API: bearer tokens, the pages' login cookie, and the same-origin rule.

Tokens come from the variable named by ``api.keys_env`` (comma-separated); none: the API is open.
A request carries its token as ``Authorization: Bearer <token>`` or, from the web pages, in the
HttpOnly, SameSite=Strict login cookie (``COOKIE``); a state-changing request with the cookie must
also come from our own pages (its Origin), so no other site can post on a user's behalf.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence

from starlette.requests import Request

from processor.api.problems import Problem
from processor.config import Settings

#: The cookie that carries the token for the pages (and the API calls they make).
COOKIE = "processor_token"
#: Seconds the login cookie lasts (a working day): the token itself never expires, the cookie does.
COOKIE_MAX_AGE_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The realm named in ``WWW-Authenticate``.
REALM = "toy-cartoonizer"


def read_keys(settings: Settings, environ: dict[str, str] | None = None) -> list[str]:
    """The bearer tokens from the variable named by ``api.keys_env`` (comma-separated)."""
    raw = (environ if environ is not None else os.environ).get(settings.api.keys_env, "")
    return [k.strip() for k in raw.split(",") if k.strip()]


def token_matches(given: bytes, tokens: Sequence[bytes]) -> bool:
    """Whether ``given`` is one of ``tokens``; compared with every one, without stopping at a
    match, so timing says nothing."""
    matched = [hmac.compare_digest(given, t) for t in tokens]
    return any(matched)


def check_token(request: Request, tokens: Sequence[bytes], public_url: str | None) -> str:
    """The caller's token ('' when the API is open); 401 without a valid one, 403 for a
    cookie-carrying state change from another origin."""
    if not tokens:
        return ""
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not header and request.cookies.get(COOKIE):
        if request.method not in SAFE_METHODS and not same_origin(request, public_url):
            raise Problem(403, "a state-changing request with the login cookie came from another origin",
                          field="Origin", hint="Use the pages of this server, or send the token as "
                          "'Authorization: Bearer <token>' instead of the cookie.")
        scheme, given = "bearer", request.cookies[COOKIE]
    if scheme.lower() != "bearer" or not given.strip():
        raise Problem(401, "no bearer token", field="Authorization",
                      hint="Send 'Authorization: Bearer <token>' with a token from the operator "
                      "(or log in at /login in a browser).",
                      headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    if not token_matches(given.strip().encode(), tokens):
        raise Problem(401, "the bearer token is not valid", field="Authorization",
                      hint="Check the token; ask the operator for a new one if it was revoked.",
                      headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})
    return given.strip()


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
