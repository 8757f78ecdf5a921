"""The compute stage's batch (``processor.worker.compute``): it takes only what is already waiting,
and leaves the end of the fetch stage's output for its next take."""

from __future__ import annotations

import queue

from processor.worker.compute import take_waiting
from processor.worker.handoff import END, take


def test_a_batch_takes_what_is_waiting_up_to_its_limit_and_never_waits() -> None:
    ready: queue.Queue = queue.Queue(maxsize=8)
    for job in ("a", "b", "c"):
        ready.put(job)
    assert take_waiting(ready, 2) == ["a", "b"]
    assert take_waiting(ready, 5) == ["c"]
    assert take_waiting(ready, 5) == []  # empty: back at once, nothing waited for
    assert take_waiting(ready, 0) == []


def test_the_end_marker_stays_for_the_next_take() -> None:
    ready: queue.Queue = queue.Queue(maxsize=2)
    ready.put("a")
    ready.put(END)
    assert take_waiting(ready, 3) == ["a"]
    assert take(ready, lambda: True) is END
