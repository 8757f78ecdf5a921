"""What happened to one input in one pass: the closed vocabulary of the worker, the bucket
protocol, the metrics (``processor_items_total{outcome}``) and ``PassResult``."""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    """One input's outcome. A ``str`` so that metric labels, log fields and JSON carry the value
    (``"done"``), and ``counter["done"]`` finds ``Outcome.DONE``."""

    #: Committed: its manifest is written.
    DONE = "done"
    #: A final failure record is written (a bad input, or the retry budget spent).
    FAILED = "failed"
    #: A retryable failure record is written: a later pass tries again (``run.max_attempts``).
    RETRY = "retry"
    #: A manifest or final failure record for this version already existed (found, not made).
    ALREADY = "already"
    #: Another worker holds a live claim on it.
    BUSY = "busy"
    #: The store kept failing (retries spent): the input waits for a later pass.
    TRANSIENT = "transient"
    #: Our conditional commit (or failure record) lost to another worker's: nothing published.
    REFUSED = "refused"
    #: Our claim was taken over while we worked on it: nothing published.
    LOST = "lost"
    #: Given back unfinished (shutdown, a stage died, the breaker tripped).
    RELEASED = "released"
    #: Deleted from the bucket since the scan (its record says so; see ``errors.InputVanished``).
    VANISHED = "vanished"
    #: Cancelled (``processor.queue.cancel``): its cancel record and ``cancelled`` done marker are written.
    CANCELLED = "cancelled"
    #: A style it asks for cannot load on this worker: a retryable ``StyleUnavailable`` record is
    #: written, and this worker leaves the input to one that can (``errors.StyleUnavailable``).
    STYLE_UNAVAILABLE = "style_unavailable"

    # Enum hashes by member name; hash by value so that a member and its string are one key.
    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


#: Outcomes after which the input no longer waits for anyone: the backlog shrinks by one.
RESOLVED = frozenset({Outcome.DONE, Outcome.FAILED, Outcome.ALREADY, Outcome.REFUSED, Outcome.VANISHED,
                      Outcome.CANCELLED})
#: The outcomes a done marker records (``<etag>.<outcome>``): the version ended, scans skip it.
ENDED = frozenset({Outcome.DONE, Outcome.FAILED, Outcome.CANCELLED})
#: Outcomes that count as progress for ``run --once``: something was written or found. ``RETRY``
#: spent an attempt, so ``--once`` rescans at once, bounded by ``run.max_attempts``;
#: ``STYLE_UNAVAILABLE`` is not offered to this worker again.
PROGRESS = frozenset({Outcome.DONE, Outcome.FAILED, Outcome.ALREADY, Outcome.RETRY, Outcome.CANCELLED,
                      Outcome.STYLE_UNAVAILABLE})
#: Outcomes after which the daemon offers an item again at its next (incremental) scan. Busy and
#: lost items are among them: another worker holds them, and if it died its claim must be taken
#: over once the TTL runs out (the promise in README), not at the next full rescan minutes later
#: (bench/chaos.py caught that). The cost is one claim read per held item per scan.
OFFER_AGAIN = frozenset({Outcome.TRANSIENT, Outcome.RELEASED, Outcome.BUSY, Outcome.LOST, Outcome.RETRY})
