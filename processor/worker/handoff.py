"""Handing jobs from one stage to the next over bounded queues, without hanging when a stage dies."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

#: Seconds a stage waits on a full (or empty) queue before checking whether the pass was aborted.
QUEUE_POLL_S = 0.2
#: The end of a stage's output.
END = object()


def take(q: queue.Queue, producer_done: Callable[[], bool]) -> Any:
    """The next job on ``q``, or ``END`` once ``q`` is empty and its producer has finished.

    The end marker alone cannot end a reader's loop: after an abort, ``offer`` gives up on a full
    queue, so a producer may finish without delivering it (the reader then waited on ``get``
    forever). Several readers may share a queue: the first gets the marker, the others see the
    producer gone and the queue empty."""
    while True:
        try:
            return q.get(timeout=QUEUE_POLL_S)
        except queue.Empty:
            if producer_done():
                # The producer has ended: whatever it put after the timed-out get is there now.
                try:
                    return q.get_nowait()
                except queue.Empty:
                    return END


def offer(q: queue.Queue, item: object, abort: threading.Event) -> bool:
    """Put ``item`` on a bounded queue unless the pass was aborted (its reader may be gone)."""
    while True:
        try:
            q.put(item, timeout=QUEUE_POLL_S)
            return True
        except queue.Full:
            if abort.is_set():
                return False
