"""Decode a file in a child process under a CPU budget, so that no file can hold the worker.

``decode_isolated`` hands the bytes to a decoder child (``child``), started once and reused, and
waits for its pixels. The child stops a decode that spends more CPU seconds than its budget
(``pipeline.decode.cpu_floor_s`` plus ``cpu_s_per_megapixel`` per megapixel) by ending itself;
that file is the input's ``DecodeBudgetExceeded``, and the next decode gets a new child. A decoder
that crashes (a segfault in a C library) ends only the child too: the file is a ``CorruptImage``.

Why a process and not a thread: a C decoder cannot be interrupted from Python, and a thread that
runs on after a timeout still spends the CPU. Why only some files: moving the pixels of a 12 MP
photo between processes costs about as much as decoding a plain JPEG, so only files whose
structure can be slow come here (``survey``).

How a child's end is read:

- its watchdog reported ``over_budget``, or the kernel's CPU limit (SIGXCPU) ended it:
  ``DecodeBudgetExceeded`` (final: the same bytes cost the same);
- a crash signal (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL): ``CorruptImage`` (final);
- SIGKILL from elsewhere (the kernel's out-of-memory killer), a child that used no CPU for
  ``WALL_S_PER_CPU_S`` times its budget (starved or stuck), or any other end: ``StageFailed``
  (retried later: the fault may be the machine's, not the file's).
"""

from __future__ import annotations

import atexit
import builtins
import math
import mmap
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from PIL import Image

import processor
from processor import errors
from processor.errors import CorruptImage, DecodeBudgetExceeded, InvalidInput, ItemError, StageFailed
from processor.pipeline.decode.pixels import DecodedPixels
from processor.pipeline.decode.wire import EXIT_OVER_BUDGET, ppm_header, read_message, send_message

if TYPE_CHECKING:
    from processor.config import DecodeSettings

#: The child's module (``python -m``).
CHILD_MODULE = "processor.pipeline.decode.child"
#: Wall-clock seconds a decode may take per CPU second of its budget before its child is judged
#: stuck or starved (not computing) and killed; the CPU budget is what stops a slow file.
WALL_S_PER_CPU_S = 10.0
#: Wall-clock seconds on top of that: starting a child (its imports) and moving the pixels.
WALL_SLACK_S = 30.0
#: Seconds a retiring child gets to exit after its request pipe is closed, before it is killed.
CHILD_EXIT_WAIT_S = 2.0
#: Idle children kept for the next decode (more are started while several threads decode at once).
MAX_IDLE_CHILDREN = 1
#: Signals with which a decoder crashes on a file: the file is damaged (or a decoder bug it triggers).
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL})
#: Errors a child may report, by name; anything else it names is reported as ``CorruptImage``.
_REFUSALS: dict[str, type[InvalidInput]] = {
    name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, InvalidInput)
}
#: What a machine's fault says to the user.
RETRY_HINT = ("Nothing to change if the photo is an ordinary one: the worker retries it later "
              "(run.max_attempts). If it keeps failing, upload it as a JPEG or PNG.")


def decode_isolated(data: bytes, fmt: str, limits: DecodeSettings, *, where: str = "",
                    reason: str = "") -> DecodedPixels:
    """Decode ``data`` (sniffed as ``fmt``) in a decoder child under its CPU budget. ``reason`` (why
    the file is isolated) ends the message of a ``DecodeBudgetExceeded``."""
    child = _POOL.take()
    try:
        return child.decode(data, fmt, limits, where=where, reason=reason)
    except ItemError:
        raise  # a refusal leaves the child ready; a dead child is not taken back (give)
    except BaseException:
        child.kill()  # interrupted mid-conversation: its state is unknown
        raise
    finally:
        _POOL.give(child)


class DecoderChild:
    """One decoder child process and the pipes and memory file it shares with us."""

    def __init__(self) -> None:
        requests_in, self._requests = os.pipe()
        self._replies, replies_out = os.pipe()
        self._pixels = _memory_file()
        fds = (requests_in, replies_out, self._pixels)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-W", "ignore", "-m", CHILD_MODULE, *map(str, fds)], pass_fds=fds,
                stdin=subprocess.DEVNULL, env=_child_environment())
        except BaseException:
            for fd in (self._requests, self._replies, self._pixels):
                os.close(fd)
            raise
        finally:
            os.close(requests_in)
            os.close(replies_out)
        self._seq = 0
        #: Whether the child said it started; whether we killed it for making no progress.
        self._ready = False
        self._starved = False
        self._closed = False

    @property
    def alive(self) -> bool:
        return not self._closed and self.process.poll() is None

    def decode(self, data: bytes, fmt: str, limits: DecodeSettings, *, where: str, reason: str) -> DecodedPixels:
        self._seq += 1
        request = {"seq": self._seq, "format": fmt, "where": where, "max_pixels": limits.max_pixels,
                   "min_side": limits.min_side, "cpu_floor_s": limits.cpu_floor_s,
                   "cpu_s_per_megapixel": limits.cpu_s_per_megapixel, "bytes": len(data)}
        fate = _Fate(fmt=fmt, where=where, reason=reason, budget_s=limits.cpu_floor_s, limits=limits)
        try:
            send_message(self._requests, request, data)
        except BrokenPipeError:
            return self._ended(fate)
        started = time.monotonic()
        while True:
            message = self._next(started + WALL_S_PER_CPU_S * fate.budget_s + WALL_SLACK_S)
            if message is None:
                return self._ended(fate)
            kind = message.get("kind")
            if kind == "ready":
                self._ready = True
                continue
            if message.get("seq") != self._seq:
                continue  # a late word about an earlier request
            if kind == "header":
                fate.size = (int(message["width"]), int(message["height"]))
                fate.budget_s = float(message["budget_s"])
            elif kind == "over_budget":
                fate.cpu_s = float(message["cpu_s"])
            elif kind == "done":
                return self._read_pixels(message, limits)
            elif kind == "refused":
                raise _refusal(message)
            elif kind == "out_of_memory":
                raise StageFailed(f"{where}decoding the {fmt} file ran out of memory ({message.get('message')})",
                                  hint=RETRY_HINT)

    def kill(self) -> None:
        """End the child now (its conversation with us is out of step)."""
        if self.process.poll() is None:
            self.process.kill()
        self.close()

    def close(self) -> None:
        """Retire the child: it exits when its request pipe closes (killed if it does not)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._requests, self._replies, self._pixels):
            os.close(fd)
        try:
            self.process.wait(timeout=CHILD_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The child's next message; None when it ended (or was killed, past ``deadline``)."""
        poller = select.poll()  # not select(): a busy worker's descriptors may be past FD_SETSIZE
        poller.register(self._replies, select.POLLIN)
        if not poller.poll(max(0, math.ceil((deadline - time.monotonic()) * 1000))):
            self.process.kill()
            self._starved = True
            return None
        try:
            return read_message(self._replies)
        except ValueError:  # a garbled message: the child is broken
            self.process.kill()
            return None

    def _ended(self, fate: _Fate) -> NoReturn:
        """The child is gone mid-decode: the error its end means (see the module docstring)."""
        returncode = self.process.wait()
        self.close()
        raise fate.error(returncode, was_ready=self._ready, starved=self._starved)

    def _read_pixels(self, message: dict[str, Any], limits: DecodeSettings) -> DecodedPixels:
        width, height = int(message["width"]), int(message["height"])
        if not (0 < width and 0 < height and width * height <= limits.max_pixels):
            self.kill()
            raise StageFailed(f"the decoder child reported a {width}x{height} picture", hint=RETRY_HINT)
        header = ppm_header(width, height)
        size = len(header) + width * height * 3
        if os.fstat(self._pixels).st_size < size:
            self.kill()
            raise StageFailed("the decoder child's pixels are missing", hint=RETRY_HINT)
        try:
            with mmap.mmap(self._pixels, size, prot=mmap.PROT_READ) as mapped, memoryview(mapped) as view:
                if view[: len(header)] != header:
                    self.kill()
                    raise StageFailed("the decoder child's pixels are garbled", hint=RETRY_HINT)
                rgb = np.frombuffer(view, dtype=np.uint8, offset=len(header)).reshape(height, width, 3)
                # RGB cannot be mapped in place (Pillow keeps 4 bytes a pixel): this is the one copy.
                image = Image.fromarray(rgb, "RGB")
                del rgb  # no view of the mapping may outlive it
        finally:
            if not self._closed:
                os.ftruncate(self._pixels, 0)  # give the memory back until the next decode
        return DecodedPixels(image=image, format=str(message["format"]), source_width=int(message["source_width"]),
                             source_height=int(message["source_height"]), notes=[str(n) for n in message["notes"]],
                             color_profile=_optional_text(message.get("color_profile")))


class _Fate:
    """What is known about a decode while it runs, to say what its child's end means."""

    def __init__(self, *, fmt: str, where: str, reason: str, budget_s: float, limits: DecodeSettings) -> None:
        self.fmt, self.where, self.reason, self.budget_s, self.limits = fmt, where, reason, budget_s, limits
        self.size: tuple[int, int] | None = None
        self.cpu_s: float | None = None

    def error(self, returncode: int, *, was_ready: bool, starved: bool) -> ItemError:
        what = f"{self.size[0]}x{self.size[1]} {self.fmt}" if self.size else f"{self.fmt} file"
        if returncode == EXIT_OVER_BUDGET or returncode == -signal.SIGXCPU:
            return self._over_budget(what, returncode)
        if -returncode in CRASH_SIGNALS:
            name = signal.Signals(-returncode).name
            return CorruptImage(f"{self.where}the {self.fmt} decoder crashed on this file ({name})")
        if starved:
            return StageFailed(f"{self.where}decoding this {what} made no progress for "
                               f"{WALL_S_PER_CPU_S * self.budget_s + WALL_SLACK_S:.0f} s of wall-clock time "
                               "(the machine is overloaded, or the decoder is stuck); it was stopped", hint=RETRY_HINT)
        if returncode == -signal.SIGKILL:
            return StageFailed(f"{self.where}the decoder process was killed while decoding this {what} "
                               "(SIGKILL: most likely the machine ran out of memory)", hint=RETRY_HINT)
        when = "while decoding" if was_ready else "before it was ready to decode"
        return StageFailed(f"{self.where}the decoder process ended with status {returncode} {when} this {what} "
                           "(see the worker's log)", hint=RETRY_HINT)

    def _over_budget(self, what: str, returncode: int) -> DecodeBudgetExceeded:
        limits = self.limits
        if self.size:
            megapixels = self.size[0] * self.size[1] / 1_000_000
            budget = (f"pipeline.decode.cpu_floor_s {limits.cpu_floor_s:g} + {megapixels:.1f} MP x "
                      f"pipeline.decode.cpu_s_per_megapixel {limits.cpu_s_per_megapixel:g}")
        else:
            budget = f"pipeline.decode.cpu_floor_s {limits.cpu_floor_s:g}, before its header was read"
        cpu_s = self.cpu_s if returncode == EXIT_OVER_BUDGET else None
        if cpu_s is not None:
            spent = f"after {cpu_s:.2f} CPU s"
        else:
            spent = "by its watchdog" if returncode == EXIT_OVER_BUDGET else "by the kernel's CPU limit"
        because = f"; {self.reason}" if self.reason else ""
        return DecodeBudgetExceeded(
            f"{self.where}decoding this {what} was stopped {spent}: its budget is {self.budget_s:.2f} CPU s "
            f"({budget}){because}", budget_s=self.budget_s, cpu_s=cpu_s)


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _refusal(message: dict[str, Any]) -> InvalidInput:
    """The child's ``InvalidInput`` again, with a stand-in for its cause (same type where it is a
    builtin exception, the child's exceptions are not unpickled here)."""
    cls = _REFUSALS.get(str(message.get("error")), CorruptImage)
    error = cls(str(message["message"]), hint=str(message["hint"]))
    cause_name, cause_message = message.get("cause"), str(message.get("cause_message"))
    if cause_name:
        cause_type = getattr(builtins, str(cause_name), None)
        if not (isinstance(cause_type, type) and issubclass(cause_type, Exception)):
            cause_type, cause_message = RuntimeError, f"{cause_name}: {cause_message}"
        error.__cause__ = cause_type(cause_message)
    return error


class DecoderPool:
    """Decoder children kept between decodes; a thread takes one for a decode and gives it back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[DecoderChild] = []
        self._pid = os.getpid()

    def take(self) -> DecoderChild:
        with self._lock:
            if self._pid != os.getpid():  # a forked copy of us: those children are the parent's
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                child = self._idle.pop()
                if child.alive:
                    return child
                child.close()
        return DecoderChild()

    def give(self, child: DecoderChild) -> None:
        with self._lock:
            if child.alive and len(self._idle) < MAX_IDLE_CHILDREN and self._pid == os.getpid():
                self._idle.append(child)
                return
        child.close()

    def close(self) -> None:
        """Retire every idle child (at exit)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.close()


def _memory_file() -> int:
    """A descriptor of an anonymous file in memory (a temporary file where there is no memfd)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("decoded-pixels", os.MFD_CLOEXEC)
    import tempfile

    with tempfile.TemporaryFile() as fh:
        return os.dup(fh.fileno())


def _child_environment() -> dict[str, str]:
    """Our environment, with this checkout of ``processor`` first on the child's import path."""
    root = str(Path(processor.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, path] if path else [root])}


_POOL = DecoderPool()
atexit.register(_POOL.close)
