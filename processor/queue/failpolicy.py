"""What a worker does when an item fails: the retry budget and the circuit breaker.

Three kinds of item failure (``processor/errors.py``) call for different answers:

- ``InvalidInput``: the bytes are bad. One attempt; the failure record is final at once.
- any other ``ItemError`` (``StageFailed``: a stage crashed): the fault may be the worker's (a bad
  deploy, a library upgrade that raises ``TypeError``, a GPU whose CUDA context is poisoned so
  every later call fails), not the input's. The input gets ``run.max_attempts`` attempts: each
  failed one writes a record (``final: false``) but no ``failed`` done marker, so the next scan
  offers the input again; the last one writes a final record and the marker.
- ``StyleUnavailable``: the worker that took the input cannot load a style it asks for. Never
  final and no attempt spent: the input waits for a worker that can (the worker that wrote the
  record leaves it alone until it restarts).

Retrying alone would let a broken worker spend every input's budget in one sweep of the backlog.
``CircuitBreaker`` stops that: after ``run.max_consecutive_failures`` ``StageFailed`` items in a
row with no success between them, the worker concludes that it is the broken part, stops taking
work, gives its claims back and exits with ``EXIT_UNHEALTHY`` (7). The items it failed keep
retryable records, so a restarted or healthy worker redoes them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from processor.errors import InputVanished, InvalidInput, ItemError, StyleUnavailable

#: Errors a breaker trip reports (its log event and its message): enough to see the pattern.
MAX_REPORTED_ERRORS = 5


def is_final(error: ItemError, attempt: int, max_attempts: int) -> bool:
    """Whether the failure of ``attempt`` (1-based) ends this input version's attempts. A vanished
    input's never does (a later upload of the same bytes must not find a ``failed`` marker), nor an
    unavailable style's (a worker that can load it must still find the input)."""
    if isinstance(error, (InputVanished, StyleUnavailable)):
        return False
    return isinstance(error, InvalidInput) or attempt >= max_attempts


@dataclass(frozen=True)
class RecentFailure:
    key: str
    error: str
    message: str


class CircuitBreaker:
    """Counts non-permanent failures (``StageFailed``) in a row; ``threshold`` 0 never trips.

    Only the compute stage feeds it (one thread). A bad input (``InvalidInput``) neither counts
    nor resets the count: it says nothing about whether the worker can compute. Nor does a style
    this worker cannot load (``StyleUnavailable``): its other styles may run fine, and a restart
    would not install what is missing.
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.consecutive = 0
        self.recent: deque[RecentFailure] = deque(maxlen=MAX_REPORTED_ERRORS)

    def succeeded(self) -> None:
        self.consecutive = 0
        self.recent.clear()

    def failed(self, key: str, error: ItemError) -> bool:
        """Note one failed item; True when this failure trips the breaker."""
        if isinstance(error, (InvalidInput, StyleUnavailable)):
            return False
        self.consecutive += 1
        self.recent.append(RecentFailure(key, type(error).__name__, str(error)))
        return self.tripped

    @property
    def tripped(self) -> bool:
        return self.threshold > 0 and self.consecutive >= self.threshold

    def describe(self) -> list[str]:
        """The last errors, oldest first, as ``key: Error: message``."""
        return [f"{f.key}: {f.error}: {f.message}" for f in self.recent]
