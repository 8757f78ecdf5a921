"""What the worker and its isolated decoder child say to each other, and how.

Messages are JSON objects, each framed by its length (4 bytes, big-endian); a request carries the
file's bytes after its message. Decoded pixels do not travel through the pipe: the child writes
them as a binary PPM into a memory file both processes hold, and the parent copies them out once.

Child to parent, per request (``seq`` echoes the request's):

- ``header``: the stored size passed the limits; ``budget_s`` is the decode's CPU budget now;
- ``done``: the pixels are in the memory file (``width``, ``height``, ``format``, ``notes``,
  ``color_profile``, ...);
- ``refused``: an ``InvalidInput`` (``error`` class name, ``message``, ``hint``, and its cause);
- ``out_of_memory``: the decoder raised ``MemoryError``;
- ``over_budget``: the watchdog stopped the decode at ``cpu_s``; the child then exits with
  ``EXIT_OVER_BUDGET``.

The child sends ``ready`` once, when it has started.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

#: Exit status of a decoder child that stopped itself at the end of a decode's CPU budget.
EXIT_OVER_BUDGET = 86
#: Bytes of the length prefix of a message.
FRAME_PREFIX_BYTES = 4
#: Bytes: the longest message accepted (messages are small; anything longer is a broken child).
MAX_MESSAGE_BYTES = 1024 * 1024


def send_message(fd: int, message: dict[str, Any], payload: bytes = b"") -> None:
    """Write ``message`` (and ``payload`` after it) to ``fd``, blocking until all is written."""
    body = json.dumps(message).encode()
    _write_all(fd, struct.pack(">I", len(body)) + body)
    if payload:
        _write_all(fd, payload)


def read_message(fd: int) -> dict[str, Any] | None:
    """The next message on ``fd``, or None when the other side closed it (at a message boundary
    or not)."""
    prefix = read_exact(fd, FRAME_PREFIX_BYTES)
    if prefix is None:
        return None
    (length,) = struct.unpack(">I", prefix)
    if length > MAX_MESSAGE_BYTES:
        raise ValueError(f"a decoder message of {length:,} bytes (at most {MAX_MESSAGE_BYTES:,})")
    body = read_exact(fd, length)
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError(f"a decoder message is {type(message).__name__}, not an object")
    return message


def read_exact(fd: int, size: int) -> bytes | None:
    """Exactly ``size`` bytes from ``fd``, or None at end of file."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


def ppm_header(width: int, height: int) -> bytes:
    """The header Pillow writes before the RGB bytes of a binary PPM of that size."""
    return b"P6\n%d %d\n255\n" % (width, height)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
