"""The ``bucket`` hint source: the rescan hint object, read with one HEAD every ``run.hint_poll_s``.

``processor submit``, ``processor retry`` and the HTTP API write ``<state>/rescan.json`` after their
own writes (``processor.queue.rescan``). Every replica and pod shares the bucket and nothing else,
so this is how an API replica wakes every worker, wherever it runs: each worker HEADs that one
object at a short interval and scans as soon as its version changes (the scan itself then sees the
new version and makes itself a full one).

Cost: one HEAD per interval, whatever the bucket holds: 3,600 an idle hour at the default 1 s.
A HEAD that fails is logged by ``read_hint_version`` and tried again at the next interval.
"""

from __future__ import annotations

import logging
import threading

from processor.queue.hints.base import Wakeup
from processor.queue.keys import KeyLayout
from processor.queue.rescan import HintVersion, read_hint_version
from processor.store.base import ObjectStore

log = logging.getLogger("processor.hints")


class RescanHintPoller:
    """HEADs the rescan hint every ``interval_s`` on a thread of its own; a new version is a hint."""

    name = "bucket"

    def __init__(self, store: ObjectStore, layout: KeyLayout, interval_s: float) -> None:
        self.store = store
        self.layout = layout
        self.interval_s = interval_s
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        #: HEADs sent (for tests and the benchmark's request count).
        self.polls = 0

    def start(self, wakeup: Wakeup) -> None:
        self._thread = threading.Thread(target=self._run, args=(wakeup,), name="hint-bucket", daemon=True)
        self._thread.start()

    def _run(self, wakeup: Wakeup) -> None:
        seen: HintVersion | None = None
        while not self._closed.is_set():
            version = read_hint_version(self.store, self.layout)
            self.polls += 1
            if version is not None:
                if seen is not None and version != seen:
                    log.debug("hint", extra={"source": self.name, "key": self.layout.rescan_hint})
                    wakeup.notify(self.name)
                seen = version
            self._closed.wait(self.interval_s)

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RescanHintPoller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
