"""Waiting in tests: for an event, never for a length of time.

A test that waits for something (a server's readiness, a job's state, a daemon's commit) polls for it
and gives up only after ``HANG_GUARD_S``: a deadline that exists to turn a hang into a failure that
says what never happened, not to check speed. A busy machine (six test runs on two cores) makes
everything many times slower, so no deadline in a test may be "how long this normally takes".
pytest-timeout (``timeout`` in pyproject.toml) is the last resort for a hang that no wait covers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds a test waits for an event (or a subprocess to finish) before calling it a hang. Below
#: pytest-timeout's 300 s, so the failure names what never happened instead of a stack dump.
HANG_GUARD_S = 240.0
#: Seconds one HTTP request of a test may take before it is called a hang.
REQUEST_GUARD_S = 60.0
#: Seconds between two polls of a condition.
POLL_S = 0.05


def wait_until(probe: Callable[[], T | None], what: str, *, timeout_s: float = HANG_GUARD_S,
               poll_s: float = POLL_S, check: Callable[[], None] | None = None) -> T:
    """Poll ``probe`` until it returns something truthy and return that; ``check`` runs between polls
    (e.g. to fail at once when the process being waited on has exited). Fails naming ``what`` after
    ``timeout_s``, a hang guard only."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s:g} s (a hang guard: the wait polls for the event)")
        time.sleep(poll_s)
