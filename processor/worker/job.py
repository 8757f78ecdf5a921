"""One input's way through the worker (``Job``) and what one pass did (``PassResult``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from processor.errors import ItemError, JobCancelled
from processor.pipeline.base import DecodedImage, VariantImage
from processor.pipeline.item import Prepared, Rendered
from processor.queue.claims import Claim, ClaimProgress
from processor.queue.outcomes import PROGRESS, Outcome
from processor.queue.protocol import Delivery, InputObject
from processor.queue.scan import WorkItem
from processor.tracing import NO_SPAN, Span


@dataclass
class Job:
    """One input on its way through the stages: its delivery (the bucket protocol's state) and
    what the pipeline has made of it so far."""

    delivery: Delivery
    input: InputObject | None = None
    prepared: Prepared | None = None
    rendered: Rendered | None = None
    error: ItemError | None = None
    #: Set when the job was cancelled while it computed: the upload stage records the cancel.
    cancelled: JobCancelled | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: The item's span (``processor.tracing``), from its claim to ``_finish``.
    trace: Span = NO_SPAN

    @property
    def item(self) -> WorkItem:
        return self.delivery.item

    @property
    def claim(self) -> Claim | None:
        return self.delivery.claim

    @property
    def etag(self) -> str:
        return self.delivery.etag

    @property
    def key(self) -> str:
        return self.delivery.key

    @property
    def decoded(self) -> DecodedImage | None:
        return self.prepared.decoded if self.prepared else None

    @property
    def variants(self) -> list[VariantImage]:
        return self.rendered.variants if self.rendered else []

    def report(self, stage: str) -> None:
        """The item's progress, published in its claim by the keeper's next renewal (no request here)."""
        if self.claim is not None:
            self.claim.report(ClaimProgress(stage))


@dataclass
class PassResult:
    """What one pass did: outcome counts, and each input's outcome."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    #: Inputs still without a result after this pass (store errors, held by other workers).
    left: int = 0
    #: The pass stopped taking items after PASS_MAX_TTLS claim TTLs; the rest wait for a rescan.
    cut_short: bool = False
    #: Input key -> its outcome in this pass.
    outcome_of: dict[str, Outcome] = field(default_factory=dict)
    #: Every item the pass was given or that joined it while it ran (``run_pass``'s ``refill``).
    items: list[WorkItem] = field(default_factory=list)
    #: The input keys of ``items``: what ``join`` checks arrivals against (a pass may run long).
    _inputs: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self._inputs = {i.keys.input for i in self.items}

    def join(self, arrived: list[WorkItem]) -> list[WorkItem]:
        """Add the items of ``arrived`` whose inputs the pass does not hold yet; returns them."""
        new = [i for i in arrived if i.keys.input not in self._inputs]
        self._inputs.update(i.keys.input for i in new)
        self.items.extend(new)
        return new

    @property
    def progress(self) -> int:
        return sum(self.outcomes[o] for o in PROGRESS)

    def counts(self) -> dict[str, int]:
        """Outcome value -> count, for log fields."""
        return {o.value: n for o, n in self.outcomes.items()}
