"""One budget for the request bodies a replica holds, and a deadline between a body's chunks.

Every route caps its own body (``processor.api.upload``), but the sum of many capped uploads at
once is what fills a pod's memory (a JSON body costs about three times its size while it is
parsed) and its upload spool. ``BodyLimits`` is the ASGI middleware that counts each request's
body bytes as they arrive against one ``BodyBudget`` (``api.body_budget_bytes``) and gives them
back when the request has been answered, after its body, parsed or spooled, is gone. A chunk
that does not fit answers that request 503 with Retry-After (``BodyBudgetFull``); nothing waits
for room, so a slow upload cannot queue the others behind it. A body that pauses longer than
``BODY_IDLE_TIMEOUT_S`` between two chunks is answered 408 (``BodyTimeout``): a trickling client
holds neither budget nor a connection for long. (Slow request headers are the server's:
``processor.api.server``.)
"""

from __future__ import annotations

import asyncio
import threading

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processor.api.problems import Problem

#: Seconds a request body may pause between two chunks.
BODY_IDLE_TIMEOUT_S = 30.0
#: Seconds a client refused for a full budget is told to wait (an upload or two ends meanwhile).
BUDGET_RETRY_AFTER_S = 2


class BodyBudgetFull(Exception):
    """The bodies in flight hold the whole budget: this request is refused (503)."""


class BodyTimeout(Exception):
    """A request body paused past ``BODY_IDLE_TIMEOUT_S`` (408)."""


class BodyBudget:
    """Bytes of request bodies held at once, at most ``limit``; thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size


class BodyLimits:
    """ASGI middleware: each request's body bytes against ``budget``, and the idle deadline."""

    def __init__(self, app: ASGIApp, budget: BodyBudget, *, idle_timeout_s: float = BODY_IDLE_TIMEOUT_S) -> None:
        self.app = app
        self.budget = budget
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = 0
        body_done = False

        async def counted() -> Message:
            nonlocal held, body_done
            if body_done:  # after the body: only the disconnect, waited for as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except asyncio.TimeoutError:
                raise BodyTimeout from None
            if message["type"] != "http.request":
                body_done = True
                return message
            size = len(message.get("body", b""))
            if size:
                if not self.budget.take(size):
                    raise BodyBudgetFull
                held += size
            body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            self.budget.give(held)


def budget_full_problem() -> Problem:
    return Problem(503, "the server holds as many uploads as it can at once; nothing was written",
                   hint=f"Send the request again in {BUDGET_RETRY_AFTER_S} s.",
                   headers={"Retry-After": str(BUDGET_RETRY_AFTER_S)})


def body_timeout_problem() -> Problem:
    return Problem(408, f"the request body paused for more than {BODY_IDLE_TIMEOUT_S:g} s; nothing was written",
                   hint="Send the body without pauses (a client that streams it from a slow source should "
                   "buffer it first).", headers={"Connection": "close"})
