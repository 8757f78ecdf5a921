"""Who is calling: bearer tokens, the pages' login cookie, and the same-origin rule.

The clients and their tokens are ``processor.api.clients``'s (``Access``). A request carries its
token as ``Authorization: Bearer <token>`` or, from the web pages, in the HttpOnly,
SameSite=Strict login cookie (``COOKIE``); a state-changing request with the cookie must also come
from our own pages (its Origin), so no other site can post on a user's behalf. Wrong tokens count
against the caller's address (``processor.api.guard.AuthFailures``). On an open server every
caller is ``ANONYMOUS`` (an admin).
"""

from __future__ import annotations

from starlette.requests import Request

from processor.api.clients import ANONYMOUS, Access, Identity
from processor.api.guard import AuthFailures, too_many_failures
from processor.api.problems import Problem

#: The cookie that carries the token for the pages (and the API calls they make).
COOKIE = "processor_token"
#: Seconds the login cookie lasts (a working day): the token itself never expires, the cookie does.
COOKIE_MAX_AGE_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The realm named in ``WWW-Authenticate``.
REALM = "toy-cartoonizer"


def client_address(request: Request) -> str:
    """The address wrong tokens are counted against."""
    return request.client.host if request.client else ""


def identify(given: str, access: Access, failures: AuthFailures, address: str) -> Identity | None:
    """The client whose token ``given`` is; None (counted against ``address``) for a wrong one. A
    429 problem while ``address`` is out of tries: its token is not even compared."""
    wait = failures.retry_after(address)
    if wait is not None:
        raise too_many_failures(wait)
    identity = access.identify(given.encode())
    if identity is None:
        failures.failed(address)
    return identity


def check_token(request: Request, access: Access, public_url: str | None, failures: AuthFailures) -> Identity:
    """The caller; 401 without a valid token, 403 for a cookie-carrying state change from another
    origin, 429 for an address that sent too many wrong tokens."""
    if access.open:
        return ANONYMOUS
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
    identity = identify(given.strip(), access, failures, client_address(request))
    if identity is None:
        raise Problem(401, "the bearer token is not valid", field="Authorization",
                      hint="Check the token; ask the operator for a new one if it was revoked.",
                      headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})
    return identity


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
