"""Find the work: which input versions have no committed result yet.

Done-detection uses LIST calls only (never a HEAD per input): one listing of ``inputs/`` and one
of the done markers (``<state>/done/<relpath>/<etag>.<outcome>``, written right after each
commit). The markers are a cache of the truth; the manifest is the truth. A crash between the
manifest and its marker only costs one GET of that manifest when the item is next claimed.

The daemon scans incrementally (``IncrementalScanner``): between full scans it lists only the
inputs after the last key the previous listing returned (``StartAfter``). A full scan every
``run.full_rescan_s`` is the safety net for what that misses: S3 keys sort by bytes, so a new
upload may sort before the high-water mark, and SeaweedFS lists folder by folder rather than in
byte order. Correctness never depends on the listing order; only how soon an input is found does.
``processor retry``, ``processor submit`` and the API, whose changes may sort before the mark, also
write a rescan hint (``processor.queue.rescan``): the API's names the inputs it uploaded, which
the next scan lists; the others make each daemon's next scan a full one. A hint source that knows
where inputs arrived (``processor.queue.hints``: a watched folder, a bucket notification) makes
the next scan a targeted one too: the incremental listing plus one listing of each named prefix
that sorts before the mark, with its done markers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from processor.queue.hints.base import listing_prefix
from processor.queue.keys import ItemKeys, KeyLayout, is_directory_marker, is_sidecar, safe_path, safe_segment
from processor.queue.outcomes import Outcome
from processor.queue.rescan import ABSENT, HintRead, HintVersion, read_hint, read_hint_version
from processor.store.base import ObjectInfo, ObjectStore, requests_sent

log = logging.getLogger("processor.scan")

#: New inputs a relisting checks one done-marker listing each; past this it lists all the markers.
MAX_RELIST_MARKER_LISTINGS = 16


@dataclass(frozen=True)
class WorkItem:
    """One input version a scan found without a result."""

    keys: ItemKeys
    info: ObjectInfo
    #: The sidecar's key when one was listed next to the input.
    sidecar: str | None = None
    #: Another input that owns the same output folder (``a.jpg`` and ``a.png`` → ``outputs/a/``).
    collides_with: str | None = None


@dataclass
class Backlog:
    """What one scan found: counts by state and the pending items."""

    inputs: int = 0
    done: int = 0
    failed: int = 0
    #: Inputs whose job was cancelled (their ``cancelled`` done marker).
    cancelled: int = 0
    pending: list[WorkItem] = field(default_factory=list)
    #: Keys of failure records / manifests whose input no longer exists are not counted.
    requests: int = 0
    #: False for an incremental scan: ``inputs``, ``done`` and ``failed`` then count only the
    #: inputs listed after the high-water mark (plus items carried over from the last pass).
    full: bool = True
    #: Of ``pending``, the items carried over from the last pass (already counted as backlog).
    carried: int = 0


def scan(store: ObjectStore, layout: KeyLayout) -> Backlog:
    """A full scan: every input, checked against every done marker (two listings)."""
    before = requests_sent(store)
    finished = _list_finished(store, layout)
    inputs, sidecars, _last = _list_inputs(store, layout)
    backlog = Backlog(inputs=len(inputs))
    _classify(backlog, layout, inputs, sidecars, finished, owners={})
    backlog.requests = requests_sent(store) - before
    return backlog


def _list_finished(store: ObjectStore, layout: KeyLayout, under: str = "",
                   into: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """safe relpath -> {safe etag: outcome}, from the done markers (those under ``under``, a safe
    relpath prefix, when given), added to ``into`` when given."""
    finished: dict[str, dict[str, str]] = into if into is not None else defaultdict(dict)
    for obj in store.list(layout.done_prefix + under):
        parsed = layout.parse_done_marker(obj.key)
        if parsed:
            safe_rel, etag, outcome = parsed
            finished[safe_rel][etag] = outcome
    return finished


def _list_inputs(
    store: ObjectStore, layout: KeyLayout, start_after: str = "", prefix: str | None = None
) -> tuple[list[ObjectInfo], set[str], str]:
    """Inputs and sidecar keys under the inputs prefix (or ``prefix`` inside it; after
    ``start_after``), and the last key the listing returned (in the server's own order: what
    ``StartAfter`` continues from)."""
    inputs: list[ObjectInfo] = []
    sidecars: set[str] = set()
    last = ""
    for obj in store.list(prefix or layout.prefixes.inputs, start_after=start_after):
        last = obj.key
        if is_directory_marker(obj.key):
            continue
        if is_sidecar(obj.key):
            sidecars.add(obj.key)
        else:
            inputs.append(obj)
    return inputs, sidecars, last


def _classify(
    backlog: Backlog,
    layout: KeyLayout,
    inputs: list[ObjectInfo],
    sidecars: set[str],
    finished: dict[str, dict[str, str]],
    owners: dict[str, str],
) -> None:
    """Count ``inputs`` as done / failed / pending into ``backlog``. ``owners`` (output prefix ->
    the input key that owns it) is read and updated: the first key in byte order owns a folder."""
    # Sorted here, not trusted from the listing (SeaweedFS orders '/' differently from S3).
    inputs = sorted(inputs, key=lambda o: o.key.encode("utf-8"))
    for info in inputs:
        keys = layout.for_input(info.key)
        owner = owners.get(keys.output_prefix)
        if owner is None or info.key.encode("utf-8") < owner.encode("utf-8"):
            owners[keys.output_prefix] = owner = info.key
        outcome = finished.get(safe_path(keys.relpath), {}).get(safe_segment(info.etag))
        if outcome == Outcome.DONE:
            backlog.done += 1
        elif outcome == Outcome.FAILED:
            backlog.failed += 1
        elif outcome == Outcome.CANCELLED:
            backlog.cancelled += 1
        else:
            backlog.pending.append(
                WorkItem(
                    keys=keys,
                    info=info,
                    sidecar=keys.sidecar if keys.sidecar in sidecars else None,
                    collides_with=owner if owner != info.key else None,
                )
            )


class IncrementalScanner:
    """The daemon's scans: full when due, otherwise only the inputs listed after the last key seen.

    - A full scan (both listings) runs first and then whenever ``full_rescan_s`` have passed since
      the last one (``clock`` is injectable for tests). It resets the high-water mark to the last
      key its listing returned.
    - An incremental scan lists ``inputs/`` with ``StartAfter`` = that mark (one request while
      fewer than a page of new keys arrived) and does not list done markers: inputs after the mark
      are new, and the rare one another worker already finished is caught by the fetch stage's
      manifest check. The mark is the last key *the server returned*, so ``StartAfter`` continues
      in the server's own order (SeaweedFS: folder by folder; S3: bytes) without repeats.
    - Inputs that sort before the mark (new uploads anywhere in the key space, replaced inputs)
      are found by the next *relisting*, every ``relist_s`` between full scans (None: none): one
      listing of the whole inputs prefix, without the done markers. Its inputs that the scanner has
      not seen before under this ETag are new: only their own done markers are listed (all of them
      at once when more than ``MAX_RELIST_MARKER_LISTINGS`` are new). The next full scan is the
      safety net: within ``full_rescan_s`` plus one poll interval.
    - Every scan first HEADs the rescan hint (``processor.queue.rescan``; one request). When its
      version differs from the one read before, the scan GETs it: a keyed hint whose arrivals since
      the last version read are all listed makes the scan a targeted one for those inputs (the
      API's uploads); any other change (``processor retry`` requeued inputs, ``processor submit``
      uploaded some, another writer) makes it a full one, whatever the schedule. A store error on
      either read is logged and the scan keeps to the schedule.
    - ``retry_later`` carries items a pass left without a result (store errors, a stop) into the
      next incremental scan, so they need not wait for the full one.
    - ``scan(prefixes)``: a hint source named where inputs arrived. Unless a full scan is due or
      asked for, the scan is the incremental one plus, for each prefix that does not sort after the
      mark, one listing of it and one of its done markers (an upload anywhere in the key space is
      found without listing the whole bucket).

    Output-folder ownership (``a.jpg`` and ``a.png`` share ``outputs/a/``) is remembered across
    scans, so an incremental scan applies the same rule as a full one: the first key in byte order
    owns the folder.
    """

    def __init__(
        self,
        store: ObjectStore,
        layout: KeyLayout,
        full_rescan_s: float,
        clock: Callable[[], float] = time.monotonic,
        relist_s: float | None = None,
    ) -> None:
        self.store = store
        self.layout = layout
        self.full_rescan_s = full_rescan_s
        self.relist_s = relist_s
        self.clock = clock
        self.high_water = ""
        self._last_full: float | None = None
        #: When the whole inputs prefix was last listed (a full scan or a relisting).
        self._last_list: float | None = None
        #: Input key -> ETag of every input listed so far (the last full listing, and since).
        self._known: dict[str, str] = {}
        self._owners: dict[str, str] = {}
        self._sidecars: set[str] = set()
        self._carried: dict[str, WorkItem] = {}
        #: The rescan hint's version read before the last full scan; None before one succeeded
        #: in reading it (any hint read later then asks for a full scan).
        self._hint_seen: HintVersion | None = None
        #: The hint's body as last read (``read_hint``): what a keyed hint's arrivals count from.
        self._hint_read: HintRead | None = None
        #: Scans made so far, by kind (for logs and tests); "hinted" counts the full scans that the
        #: rescan hint asked for before their time (they count as "full" too); "keyed" the scans
        #: that also listed the inputs a keyed hint announced (incremental scans or relistings).
        self.scans = {"full": 0, "incremental": 0, "hinted": 0, "keyed": 0}
        #: Incremental scans that also listed prefixes a hint source named.
        self.targeted_scans = 0
        #: Relistings of the inputs prefix between full scans.
        self.relists = 0

    def full_due(self) -> bool:
        return self._last_full is None or self.clock() - self._last_full >= self.full_rescan_s

    def seconds_to_full(self) -> float:
        """Seconds until the next full scan is due (0 when it is due now)."""
        if self._last_full is None:
            return 0.0
        return max(0.0, self.full_rescan_s - (self.clock() - self._last_full))

    def seconds_to_listing(self) -> float:
        """Seconds until the next listing of the whole inputs prefix (full scan or relisting)."""
        if self._last_list is None or not self.relist_s:
            return self.seconds_to_full()
        return min(self.seconds_to_full(), max(0.0, self.relist_s - (self.clock() - self._last_list)))

    def scan(self, prefixes: Collection[str] = ()) -> Backlog:
        """Full when due or asked for by the rescan hint; else incremental, plus the ``prefixes``
        (keys under the inputs prefix) a hint source named and the inputs a keyed hint announced."""
        before = requests_sent(self.store)
        # Read before the listings: a hint written after this read is a change for the next scan.
        hint = read_hint_version(self.store, self.layout)
        read: HintRead | None = None
        announced: list[str] | None = []
        if hint is not None and hint != self._hint_seen:
            read = HintRead(ABSENT) if hint == ABSENT else read_hint(self.store, self.layout)
            if read is None:
                hint = None  # unreadable after all: keep to the schedule, read it again next time
            else:
                hint, announced = read.version, read.keys_since(self._hint_read)
        if self.full_due():
            backlog = self._full(hint, read)
        elif hint is not None and hint != self._hint_seen and announced is None:
            log.info("rescan_hint_seen", extra={"key": self.layout.rescan_hint, "high_water": self.high_water})
            self.scans["hinted"] += 1
            backlog = self._full(hint, read)
        else:
            # A keyed writer announces inputs created under new names: one this scanner has listed
            # (an incremental listing, woken by a watcher, got there first) needs no listing again.
            announced = [key for key in announced or () if key not in self._known]
            if announced:
                prefixes = set(prefixes) | {listing_prefix(key) for key in announced}
                self.scans["keyed"] += 1
            backlog = self._relist() if self.seconds_to_listing() <= 0 else self._incremental(prefixes)
            if hint is not None and read is not None:  # a keyed version, now handled
                self._hint_seen = hint
                if not read.older_than(self._hint_read):  # a late put: count from the newer one
                    self._hint_read = read
        backlog.requests = requests_sent(self.store) - before
        return backlog

    def retry_later(self, items: Iterable[WorkItem]) -> None:
        for item in items:
            self._carried[item.keys.input] = item

    def _full(self, hint: HintVersion | None, read: HintRead | None = None) -> Backlog:
        started = self.clock()
        finished = _list_finished(self.store, self.layout)
        inputs, sidecars, last = _list_inputs(self.store, self.layout)
        backlog = Backlog(inputs=len(inputs))
        self._owners = {}
        _classify(backlog, self.layout, inputs, sidecars, finished, self._owners)
        self._sidecars = sidecars
        self._carried.clear()  # the full scan found everything still pending
        self.high_water = last
        self._last_full = self._last_list = started
        self._known = {i.key: i.etag for i in inputs}
        if hint is not None:  # unread: keep the old version (a later read may then ask again)
            self._hint_seen = hint
            if read is not None:  # its body, when read for this scan: the baseline for keyed hints
                self._hint_read = read
        self.scans["full"] += 1
        return backlog

    def _incremental(self, prefixes: Collection[str] = ()) -> Backlog:
        inputs, sidecars, last = _list_inputs(self.store, self.layout, start_after=self.high_water)
        finished: dict[str, dict[str, str]] = defaultdict(dict)
        targeted = self._targeted(prefixes, inputs, sidecars, finished)
        self._sidecars |= sidecars
        listed = {i.key for i in inputs}
        carried = [c for c in self._carried.values() if c.keys.input not in listed]
        self._carried.clear()
        backlog = Backlog(inputs=len(inputs), full=False)
        _classify(backlog, self.layout, inputs, self._sidecars, finished, self._owners)
        if targeted:
            self.targeted_scans += 1
        self._known.update((i.key, i.etag) for i in inputs)
        backlog.pending = carried + backlog.pending
        backlog.carried = len(carried)
        if last:
            self.high_water = last
        self.scans["incremental"] += 1
        return backlog


    def _relist(self) -> Backlog:
        """The whole inputs prefix, and the done markers of the inputs new to the scanner only."""
        started = self.clock()
        inputs, sidecars, last = _list_inputs(self.store, self.layout)
        new = [i for i in inputs if self._known.get(i.key) != i.etag]
        finished: dict[str, dict[str, str]] = defaultdict(dict)
        if len(new) > MAX_RELIST_MARKER_LISTINGS:
            _list_finished(self.store, self.layout, into=finished)
        else:
            for info in new:
                folder = self.layout.for_input(info.key).done_prefix
                _list_finished(self.store, self.layout, folder[len(self.layout.done_prefix):], into=finished)
        self._known = {i.key: i.etag for i in inputs}
        self._sidecars = sidecars
        listed = {i.key for i in new}
        carried = [c for c in self._carried.values() if c.keys.input not in listed]
        self._carried.clear()
        backlog = Backlog(inputs=len(new), full=False)
        _classify(backlog, self.layout, new, sidecars, finished, self._owners)
        backlog.pending = carried + backlog.pending
        backlog.carried = len(carried)
        self.high_water = last
        self._last_list = started
        self.relists += 1
        return backlog

    def _targeted(self, prefixes: Collection[str], inputs: list[ObjectInfo], sidecars: set[str],
                  finished: dict[str, dict[str, str]]) -> bool:
        """List each of ``prefixes`` that does not sort after the mark (the incremental listing has
        those that do), adding its inputs, sidecars and done markers; whether any was listed."""
        root, mark = self.layout.prefixes.inputs, self.high_water.encode("utf-8")
        seen = {i.key for i in inputs}
        listed = False
        for prefix in sorted(set(prefixes)):
            if not mark or not prefix.startswith(root) or len(prefix) == len(root) or prefix.encode("utf-8") > mark:
                continue
            found, found_sidecars, _last = _list_inputs(self.store, self.layout, prefix=prefix)
            inputs.extend(i for i in found if i.key not in seen)
            seen.update(i.key for i in found)
            sidecars |= found_sidecars
            rel = prefix[len(root):]
            # The markers' folder is the input's safe path: a prefix ending in "/" is a folder's.
            under = safe_path(rel.rstrip("/")) + "/" if rel.endswith("/") else safe_path(rel)
            _list_finished(self.store, self.layout, under, into=finished)
            listed = True
        return listed


def shard_of(input_key: str, shard_count: int) -> int:
    """A stable shard for an input key (the same on every pod and Python version)."""
    digest = hashlib.sha256(input_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count
