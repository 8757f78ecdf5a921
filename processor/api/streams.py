"""Event streams held open at once: at most ``api.max_streams`` per replica and
``api.max_streams_per_client`` per client, each for at most ``api.stream_max_s``.

A stream holds a connection and a poll of the bucket for as long as its client listens. A slot is
taken before the stream's response starts (a client over a cap hears 429 with Retry-After) and given
back when the response ends, however it ends (``SlotResponse``): finished, expired, the client gone,
or the server stopping.
"""

from __future__ import annotations

import threading
from collections import Counter

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from processor.api.problems import Problem

#: Seconds a client refused a stream is told to wait (one of its streams ends meanwhile, usually).
STREAM_RETRY_AFTER_S = 10


class StreamSlots:
    """The open streams, in all and per client name; thread-safe."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, client: str) -> Slot:
        """A slot for one stream of ``client``; a 429 problem when a cap is reached."""
        with self._lock:
            if sum(self.open.values()) >= self.total:
                raise _full(f"this server streams {self.total} jobs' events at once already (api.max_streams)")
            if self.open[client] >= self.per_client:
                raise _full(f"this client has {self.per_client} event streams open already "
                            "(api.max_streams_per_client)")
            self.open[client] += 1
        return Slot(self, client)

    def give(self, client: str) -> None:
        with self._lock:
            self.open[client] -= 1
            if self.open[client] <= 0:
                del self.open[client]

    def count(self) -> int:
        with self._lock:
            return sum(self.open.values())


class Slot:
    """One stream's place; ``close`` gives it back (once)."""

    def __init__(self, slots: StreamSlots, client: str) -> None:
        self.slots = slots
        self.client = client
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.slots.give(self.client)


class SlotResponse(StreamingResponse):
    """A streaming response that gives its slot back when it ends, however it ends."""

    def __init__(self, *args: object, slot: Slot, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.close()


def _full(detail: str) -> Problem:
    return Problem(429, detail, hint=f"Close a stream you no longer need, or poll GET /v1/jobs/{{id}}; retry in "
                   f"{STREAM_RETRY_AFTER_S} s.", headers={"Retry-After": str(STREAM_RETRY_AFTER_S)})
