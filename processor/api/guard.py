"""Guards in front of the routes: failed token checks rate-limited per client address, and an open
server's Host and Origin checks.

``AuthFailures``: every wrong token (bearer header, cookie, login form, ``?token=``) costs its
address one of ``AUTH_FAILURE_BURST`` tries, earned back one per ``AUTH_FAILURE_REFILL_S``; an
address out of tries is answered 429 with Retry-After, without its token being compared, until it
earned one back. At most ``MAX_TRACKED_ADDRESSES`` addresses are remembered (the least recently
failing forgotten first), so the limiter's memory is bounded whatever the number of addresses.
Behind a proxy every client shares the proxy's address: run uvicorn with ``--proxy-headers`` from
trusted proxies only, or rate-limit at the proxy.

``OpenServerGuard`` (``api.open`` only): a browser lets any web page send requests to a server on
the user's machine, and DNS rebinding lets a page read the answers too (its own host name,
resolved to 127.0.0.1). Without a token to stop them, an open server answers only requests whose
``Host`` is one of its own names (loopback, the address it listens on, ``api.public_url``'s host,
``api.allowed_hosts``), and refuses any request whose ``Origin`` is another site's. The probes
(``PROBE_PATHS``) answer whatever the Host.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from processor.api.problems import Problem

#: Wrong tokens an address may send in a burst, and seconds it takes to earn one more try.
AUTH_FAILURE_BURST = 10
AUTH_FAILURE_REFILL_S = 6.0
#: Addresses remembered at once (a few hundred bytes each).
MAX_TRACKED_ADDRESSES = 10_000
#: The names every open server answers to: this machine.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: Paths an open server answers whatever the Host: the probes, which carry no job data and which a
#: kubelet sends to the pod's address.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class AuthFailures:
    """Wrong tokens per client address (module docstring); thread-safe."""

    def __init__(self, *, burst: int = AUTH_FAILURE_BURST, refill_s: float = AUTH_FAILURE_REFILL_S,
                 max_addresses: int = MAX_TRACKED_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.max_addresses = max_addresses
        self.clock = clock
        #: address -> (tries left, when counted), least recently failing first.
        self._tries: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try a token again; None when it may now."""
        with self._lock:
            left = self._left(address)
        if left >= 1:
            return None
        return max(1, math.ceil((1 - left) * self.refill_s))

    def failed(self, address: str) -> None:
        """``address`` sent a wrong token."""
        with self._lock:
            left = self._left(address)
            self._tries[address] = (max(0.0, left - 1), self.clock())
            self._tries.move_to_end(address)
            while len(self._tries) > self.max_addresses:
                self._tries.popitem(last=False)

    def tracked(self) -> int:
        """Addresses remembered now."""
        return len(self._tries)

    def _left(self, address: str) -> float:
        found = self._tries.get(address)
        if found is None:
            return float(self.burst)
        left, at = found
        return min(float(self.burst), left + (self.clock() - at) / self.refill_s)


def too_many_failures(retry_after: int) -> Problem:
    return Problem(429, "too many wrong tokens from this address", field="Authorization",
                   hint=f"Wait {retry_after} s, then send a valid token.",
                   headers={"Retry-After": str(retry_after)})


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port and brackets, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def own_hosts(*, self_url: str | None, public_url: str | None, allowed: Iterable[str]) -> frozenset[str]:
    """The Host names an open server answers to (module docstring)."""
    names = set(LOOPBACK_HOSTS) | {host_name(h) for h in allowed}
    for url in (self_url, public_url):
        if url:
            name = (urlsplit(url).hostname or "").lower()
            if name and name not in ("0.0.0.0", "::"):
                names.add(name)
    return frozenset(names)


class OpenServerGuard:
    """ASGI middleware of an open server: Host among ``hosts``, Origin absent or this server's own
    (or one of ``origins``: ``api.cors_origins``, ``api.public_url``'s)."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str], origins: Iterable[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"origin")}
        host = headers.get("host", "")
        problem = None
        if host_name(host) not in self.hosts:
            problem = Problem(421, f"this server does not answer to the host name {host_name(host)!r}", field="Host",
                              hint="Open the server by the address it printed (http://127.0.0.1:<port>/), or "
                              "add the name to api.allowed_hosts.")
        else:
            origin = headers.get("origin")
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            if origin is not None and origin.rstrip("/").lower() not in self.origins | {own}:
                problem = Problem(403, f"requests from the site {origin!r} are refused by an open server",
                                  field="Origin", hint="Use the pages of this server; an open server takes no "
                                  "requests from other sites (or list the site in api.cors_origins).")
        if problem is not None:
            await problem.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
