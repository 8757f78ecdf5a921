"""The daemon's loop: scan, run a pass, and wait for work while idle.

While idle, the worker waits for whichever comes first: a hint (``processor.queue.hints``: the
rescan hint changed, a file appeared in the watched folder, a bucket notification), the end of
its back-off (doubling from ``run.poll_interval_s`` to ``run.idle_backoff_max_s``), or a due full
scan. A hint ends the wait at once; the scan that follows, not the hint, decides what is work.
While a pass runs, the fetch stage takes hints too (``Worker.run_pass``'s ``refill``): work that
arrives then joins the running pass instead of waiting for it to drain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from processor.errors import FatalError, StoreError
from processor.queue.hints.base import Hint
from processor.queue.outcomes import OFFER_AGAIN, Outcome
from processor.queue.scan import IncrementalScanner, WorkItem
from processor.worker.job import PassResult

if TYPE_CHECKING:
    from processor.worker.runner import Worker

log = logging.getLogger("processor.worker")


def run_daemon(worker: Worker) -> int:
    """Run ``worker`` as a daemon until its ``stop_event`` is set: scan, work, and wait for a hint or
    the back-off. Returns the exit code (0)."""
    run = worker.settings.run
    scanner = IncrementalScanner(worker.store, worker.layout, run.full_rescan_s, clock=worker.clock,
                                 relist_s=run.relist_s or None)
    interval = run.poll_interval_s
    hint: Hint | None = None

    def refill(more: Hint) -> list[WorkItem]:
        return worker.scan_for_work(scanner, more)

    with _hints_started(worker):
        while not worker.stop_event.is_set():
            try:
                # A hint that came after the pass's fetch stage stopped taking them is this scan's.
                items = worker.scan_for_work(scanner, hint or worker.wakeup.take())
                result = worker.run_pass(items, refill=refill) if items else PassResult()
                # An item the pass never reached (stopped) has no outcome: it is offered again too.
                scanner.retry_later(i for i in result.items
                                    if result.outcome_of.get(i.keys.input, Outcome.RELEASED) in OFFER_AGAIN)
            except FatalError:
                raise
            except StoreError as exc:
                log.warning("scan_failed", extra={"error": type(exc).__name__, "detail": str(exc)})
                worker.observer.scan_failed(f"{type(exc).__name__}: {exc}")
                result = PassResult()
            hint = None
            if result.progress:
                interval = run.poll_interval_s
                continue
            interval = min(interval * 2, run.idle_backoff_max_s)
            # Never sleep past a due listing of the whole prefix: it finds inputs sorting before the mark.
            wait = max(min(interval, scanner.seconds_to_listing()), run.poll_interval_s)
            log.debug("idle", extra={"next_scan_s": wait})
            worker.observer.heartbeat(quiet_s=wait)
            hint = worker.wakeup.wait(wait, stop=worker.stop_event)
            if hint is not None:
                log.info("woken", extra={"sources": sorted(hint.sources), "prefixes": len(hint.prefixes),
                                         "anywhere": hint.anywhere,
                                         "hint_age_s": round(time.monotonic() - hint.since, 3)})
    return 0


@contextmanager
def _hints_started(worker: Worker) -> Iterator[None]:
    """The worker's hint sources deliver to its wakeup while the block runs. One that cannot start
    (a watch limit, a missing binary) is logged and left out: hints only hasten, the scans go on."""
    with ExitStack() as stack:
        for source in worker.hint_sources:
            try:
                source.start(worker.wakeup)
            except Exception as exc:  # noqa: BLE001 - see above
                log.warning("hints_source_failed", extra={"source": source.name, "error": type(exc).__name__,
                                                          "detail": str(exc)})
                continue
            stack.callback(source.close)
        yield
