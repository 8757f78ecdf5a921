"""The ``local`` hint source: the local store's inputs folder, watched by the operating system
(inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on Windows, through ``watchdog``).

A photo copied into ``<root>/inputs/`` by hand, or written there by ``processor submit`` or the
HTTP API, is a hint naming its stem (the photo and its sidecar). A file that is still being
written must not be claimed half-way: a write that announces its end (a close after writing, a
rename into place) is a hint at once; a file that only appeared or grew is one once it has been
quiet for ``SETTLE_S`` (the local store's own writes are a single link or rename, complete when
they appear). Deletions are no work and no hint.

The watcher is the embedded default's notification service: it costs no request and keeps no
process beyond one thread. The events it misses (a watch limit reached, a network file system
that sends none) cost latency only: the worker's scans still find everything.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from processor.queue.hints.base import Wakeup, listing_prefix

log = logging.getLogger("processor.hints")

#: Seconds a file that appeared or grew must stay quiet before it is a hint.
SETTLE_S = 0.2
#: Event kinds that say a write has ended.
_FINISHED = ("closed", "moved")
#: Event kinds of a write that may still be going on.
_UNSETTLED = ("created", "modified")


class LocalFolderWatcher:
    """Watches ``root / inputs_prefix`` (created if missing) for new and changed files."""

    name = "local"

    def __init__(self, root: Path, inputs_prefix: str, settle_s: float = SETTLE_S) -> None:
        self.root = Path(root).absolute()
        self.inputs_prefix = inputs_prefix
        self.settle_s = settle_s
        self._observer: Any = None
        self._wakeup: Wakeup | None = None
        #: Prefix -> monotonic time it becomes a hint (files that appeared or grew).
        self._due: dict[str, float] = {}
        self._changed = threading.Condition()
        self._closed = False
        self._settler: threading.Thread | None = None

    def start(self, wakeup: Wakeup) -> None:
        folder = self.root / self.inputs_prefix
        folder.mkdir(parents=True, exist_ok=True)
        self._wakeup = wakeup
        self._observer = Observer()
        self._observer.schedule(_Handler(self), str(folder), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        self._settler = threading.Thread(target=self._settle, name="hint-local", daemon=True)
        self._settler.start()
        log.info("hints_watching", extra={"source": self.name, "folder": str(folder)})

    def seen(self, kind: str, path: str, folder: bool) -> None:
        """One file-system event (called on watchdog's thread)."""
        if kind not in _FINISHED and kind not in _UNSETTLED:
            return
        key = os.path.relpath(path, self.root).replace(os.sep, "/")
        if not key.startswith(self.inputs_prefix) or key == self.inputs_prefix.rstrip("/"):
            return
        prefix = listing_prefix(key, folder=folder)
        if kind in _FINISHED:
            with self._changed:
                self._due.pop(prefix, None)  # its creation need not be announced again
            assert self._wakeup is not None
            self._wakeup.notify(self.name, [prefix])
            return
        if folder:
            return  # a folder that appeared holds nothing yet; its files send their own events
        with self._changed:
            self._due[prefix] = time.monotonic() + self.settle_s
            self._changed.notify()

    def _settle(self) -> None:
        """Hands each quiet prefix to the wakeup once it has been quiet for ``settle_s``."""
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                ready = [p for p, due in self._due.items() if due <= now]
                for prefix in ready:
                    del self._due[prefix]
                if ready and self._wakeup is not None:
                    self._wakeup.notify(self.name, ready)
                next_due = min(self._due.values(), default=None)
                self._changed.wait(None if next_due is None else max(0.0, next_due - now))

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._settler is not None:
            self._settler.join(timeout=5)

    def __enter__(self) -> LocalFolderWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Handler(FileSystemEventHandler):
    """watchdog's callback: every event goes to the watcher (moves by their destination)."""

    def __init__(self, watcher: LocalFolderWatcher) -> None:
        super().__init__()
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = event.dest_path if event.event_type == "moved" else event.src_path
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        self.watcher.seen(event.event_type, path, bool(event.is_directory))
