"""Hostile requests against a real ``processor serve``, over raw sockets, and what each cost the
server: its peak resident memory (``VmHWM``, reset before each attack through
``/proc/<pid>/clear_refs``), the bytes it let the client send before it answered, and the most its
upload spool held on disk. ``tests/integration/test_api_memory.py`` asserts on them; ``python -m
tests.integration.test_api_memory`` prints the table in docs/security.md.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MIB = 1024 * 1024
#: Bytes per chunk the attacks send.
CHUNK = 256 * 1024
#: Seconds a raw request waits for the server's answer once everything is sent (a hang guard).
ANSWER_TIMEOUT_S = 120.0
#: Seconds between two looks at the spool folder's size while an attack runs.
SPOOL_SAMPLE_S = 0.02
JPEG_START = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


@dataclass
class Answer:
    """What one raw request got back."""

    status: int
    #: Bytes of request body the client sent before it saw the answer (or finished).
    sent: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def post(url: str, path: str, headers: dict[str, str], body: Iterator[bytes], *, length: int | None = None) -> Answer:
    """POST ``body`` over a raw socket: with ``Content-Length: length``, else chunked. Stops sending
    as soon as the server answers, as a client that reads its response does."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=ANSWER_TIMEOUT_S)
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{framing}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sent = 0
    with sock:
        sock.sendall(head.encode())
        for chunk in body:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            data = chunk if length is not None else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        else:
            if length is None:
                try:
                    sock.sendall(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
        return _read_answer(sock, sent)


def _read_answer(sock: socket.socket, sent: int) -> Answer:
    response = b""
    while True:
        head, sep, rest = response.partition(b"\r\n\r\n")
        if sep:
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower().decode()] = value.strip().decode()
            if len(rest) >= int(headers.get("content-length", "0")):
                status = int(head.split(b" ", 2)[1])
                return Answer(status, sent, rest, headers)
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            data = b""
        if not data:
            if not response:
                return Answer(0, sent)  # closed without an answer
            status = int(response.split(b" ", 2)[1])
            return Answer(status, sent, response.partition(b"\r\n\r\n")[2])
        response += data


def repeat(piece: bytes, total: int) -> Iterator[bytes]:
    """``total`` bytes of ``piece`` repeated, in chunks of about ``CHUNK``."""
    block = piece * max(1, CHUNK // len(piece))
    left = total
    while left > 0:
        chunk = block[:left]
        yield chunk
        left -= len(chunk)


def multipart(boundary: str, name: str, first: bytes, size: int, *, epilogue: int = 0) -> Iterator[bytes]:
    """A form with one file part ``name`` of ``size`` bytes (``first``, then zeros), closed, then
    ``epilogue`` bytes after the closing boundary (which a parser reads and ignores)."""
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x.jpg"\r\n'
           "Content-Type: image/jpeg\r\n\r\n").encode() + first
    yield from repeat(b"\x00", size - len(first))
    yield f"\r\n--{boundary}--\r\n".encode()
    yield from repeat(b"e", epilogue)


def multipart_length(boundary: str, name: str, first: bytes, size: int, epilogue: int = 0) -> int:
    return sum(len(c) for c in multipart(boundary, name, first, 0)) - len(first) + size + epilogue


class Spool:
    """The largest total size that the files under ``folder`` held open by process ``pid`` reach
    while it watches. Through ``/proc/<pid>/fd``: a spooled upload is an unnamed file (``O_TMPFILE``),
    which no listing of the folder shows."""

    def __init__(self, pid: int, folder: Path) -> None:
        self.pid = pid
        self.folder = str(folder)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Spool:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        fds = Path(f"/proc/{self.pid}/fd")
        while not self._stop.is_set():
            total = 0
            for fd in fds.iterdir():
                try:
                    if os.readlink(fd).startswith(self.folder):
                        total += os.stat(fd).st_blocks * 512
                except OSError:
                    pass  # closed meanwhile
            self.peak = max(self.peak, total)
            self._stop.wait(SPOOL_SAMPLE_S)


def status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} for {pid}")


@dataclass
class Cost:
    """One attack's outcome and what it cost the server."""

    name: str
    outcome: str
    #: Bytes of body the attack sent in all (every request together).
    sent: int
    #: The server's resident memory before, and its peak during, the attack (bytes).
    idle_rss: int
    peak_rss: int
    #: The most the spool folder (the server's TMPDIR) held on disk meanwhile (bytes).
    spool_peak: int
    answers: list[Answer] = field(default_factory=list)


def measure(name: str, pid: int, spool: Path, attack: Callable[[], list[Answer]]) -> Cost:
    """Run ``attack`` (its requests' answers) against the server ``pid``; its peak RSS is reset
    first, so the peak is this attack's."""
    time.sleep(0.3)  # let the previous attack's memory go back
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    idle = status_kib(pid, "VmRSS") * 1024
    with Spool(pid, spool) as watched:
        answers = attack()
    peak = status_kib(pid, "VmHWM") * 1024
    return Cost(name, outcome(answers), sum(a.sent for a in answers), idle, peak, watched.peak, answers)


def outcome(answers: list[Answer]) -> str:
    """The statuses of ``answers``: ``202 x2, 503 x4``."""
    statuses = sorted(a.status for a in answers)
    return ", ".join(f"{s} x{statuses.count(s)}" if statuses.count(s) > 1 else str(s) for s in sorted(set(statuses)))


def concurrently(count: int, one: Callable[[int], Answer]) -> list[Answer]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))
