"""The isolated decoder: ``python -m processor.pipeline.decode.child REQUESTS REPLIES PIXELS``.

Started by ``processor.pipeline.decode.isolated`` with three file descriptors: a pipe it reads
requests from, a pipe it writes replies to (``wire``), and a memory file it writes decoded pixels
into. It decodes one file at a time with ``decode_here``, the same code the worker runs in process.

Each decode has a budget of CPU seconds (this process's, all threads): ``cpu_floor_s`` until the
header is read, then ``cpu_floor_s + cpu_s_per_megapixel x megapixels``. Two things enforce it:

- a watchdog thread looks at the CPU clock every ``WATCHDOG_PERIOD_S`` and, past the budget, reports
  ``over_budget`` and ends the process (``os._exit``) whatever the decoder is doing: Pillow's C
  decoders release the GIL, and its Python loops (frame and chunk walks) yield it every few ms;
- ``RLIMIT_CPU``, a whole ``KERNEL_LIMIT_GRACE_S`` later, for a decoder that holds the GIL in C:
  the kernel sends SIGXCPU, which ends the process.

The process ends when its request pipe is closed (the worker exited or retired it); it ignores
SIGINT and SIGTERM.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processor.errors import InvalidInput
from processor.pipeline.decode.pixels import DecodedPixels, decode_here, reason
from processor.pipeline.decode.wire import EXIT_OVER_BUDGET, read_exact, read_message, send_message

#: Seconds between the watchdog's looks at the CPU clock: how far past its budget a decode may run.
WATCHDOG_PERIOD_S = 0.01
#: Whole CPU seconds past the budget after which the kernel stops a decode the watchdog could not.
KERNEL_LIMIT_GRACE_S = 1


@dataclass(frozen=True)
class Limits:
    """``PixelLimits`` as a request carries them."""

    max_pixels: int
    min_side: int


class Watchdog:
    """Ends this process when the decode in progress has spent its CPU budget."""

    def __init__(self, report: Callable[[dict[str, Any]], None]) -> None:
        self._report = report
        #: Held while checking the budget or replying: a decode that ends at its deadline either
        #: replies (and disarms) or is stopped, never both.
        self.lock = threading.Lock()
        self._armed = threading.Event()
        self._started = 0.0
        self._budget_s = 0.0
        self._seq = 0
        self._deadline: float | None = None
        threading.Thread(target=self._watch, name="decode-watchdog", daemon=True).start()

    def arm(self, seq: int, budget_s: float) -> None:
        """Start counting a decode's CPU seconds from now."""
        with self.lock:
            self._seq = seq
            self._started = time.process_time()
            self._set(budget_s)
        self._armed.set()

    def extend(self, budget_s: float) -> None:
        """The decode's budget is now ``budget_s`` (counted from ``arm``)."""
        with self.lock:
            self._set(budget_s)

    def disarm(self) -> None:
        """The decode ended; call with ``lock`` held."""
        self._armed.clear()
        self._deadline = None
        _limit_cpu(None)

    def _set(self, budget_s: float) -> None:
        self._budget_s = budget_s
        self._deadline = self._started + budget_s
        _limit_cpu(self._deadline + KERNEL_LIMIT_GRACE_S)

    def _watch(self) -> None:
        while True:
            self._armed.wait()
            time.sleep(WATCHDOG_PERIOD_S)
            with self.lock:
                if self._deadline is None or time.process_time() <= self._deadline:
                    continue
                spent = time.process_time() - self._started
                with contextlib.suppress(OSError):  # the worker may be gone; we stop either way
                    # Unrounded: rounded to the millisecond, 0.25024 s spent of a 0.2502 s budget
                    # read as 0.250, under the budget it overran.
                    self._report({"kind": "over_budget", "seq": self._seq, "cpu_s": spent,
                                  "budget_s": self._budget_s})
                os._exit(EXIT_OVER_BUDGET)


def cpu_budget_s(floor_s: float, s_per_megapixel: float, pixels: int) -> float:
    """CPU seconds a decode of a ``pixels``-pixel picture may take (``pipeline.decode``)."""
    return floor_s + s_per_megapixel * pixels / 1_000_000


def _limit_cpu(total_s: float | None) -> None:
    """Set this process's RLIMIT_CPU (its whole lifetime's CPU seconds) to ``total_s``, or lift it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = resource.RLIM_INFINITY if total_s is None else math.ceil(total_s)
    if hard != resource.RLIM_INFINITY:
        soft = hard if soft == resource.RLIM_INFINITY else min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve(requests: int, replies: int, pixels: int) -> int:
    """Answer requests until the request pipe closes; the exit status."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing decoder leaves no core files behind
    # The worker decides when this process ends (it closes the request pipe): a Ctrl-C in a terminal,
    # or a SIGTERM sent to the whole process group, must not turn the decode in progress into a
    # failure record while the worker itself shuts down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watchdog = Watchdog(lambda message: send_message(replies, message))
    send_message(replies, {"kind": "ready", "pid": os.getpid()})
    while True:
        request = read_message(requests)
        if request is None:
            return 0
        data = read_exact(requests, int(request["bytes"])) if request["bytes"] else b""
        if data is None:
            return 0
        reply = _decode(request, data, watchdog, replies, pixels)
        with watchdog.lock:
            watchdog.disarm()
            send_message(replies, reply)


def _decode(request: dict[str, Any], data: bytes, watchdog: Watchdog, replies: int, pixels: int) -> dict[str, Any]:
    seq = int(request["seq"])
    floor_s, per_megapixel = float(request["cpu_floor_s"]), float(request["cpu_s_per_megapixel"])

    def on_size(width: int, height: int) -> None:
        budget_s = cpu_budget_s(floor_s, per_megapixel, width * height)
        watchdog.extend(budget_s)
        with watchdog.lock:
            send_message(replies, {"kind": "header", "seq": seq, "width": width, "height": height,
                                   "budget_s": budget_s})

    watchdog.arm(seq, floor_s)
    try:
        decoded = decode_here(data, str(request["format"]), Limits(int(request["max_pixels"]),
                              int(request["min_side"])), where=str(request["where"]), on_size=on_size)
        _write_pixels(decoded, pixels)
    except InvalidInput as exc:
        cause = exc.__cause__
        return {"kind": "refused", "seq": seq, "error": type(exc).__name__, "message": str(exc), "hint": exc.hint,
                "cause": type(cause).__name__ if cause else None, "cause_message": str(cause) if cause else None}
    except MemoryError as exc:
        return {"kind": "out_of_memory", "seq": seq, "message": reason(exc)}
    return {"kind": "done", "seq": seq, "format": decoded.format, "width": decoded.image.width,
            "height": decoded.image.height, "source_width": decoded.source_width,
            "source_height": decoded.source_height, "notes": decoded.notes, "color_profile": decoded.color_profile}


def _write_pixels(decoded: DecodedPixels, fd: int) -> None:
    """The RGB pixels as a binary PPM at the start of the memory file (Pillow writes it to the
    descriptor in one pass, with no copy of the picture in between)."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(fd, "wb", closefd=False) as out:
        decoded.image.save(out, "PPM")


if __name__ == "__main__":
    sys.exit(serve(*(int(arg) for arg in sys.argv[1:4])))
