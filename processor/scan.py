"""Find the work: which input versions have no committed result yet.

Done-detection uses LIST calls only (never a HEAD per input): one listing of ``inputs/`` and one
of the done markers (``<state>/done/<relpath>/<etag>.<outcome>``, written right after each
commit). The markers are a cache of the truth; the manifest is the truth. A crash between the
manifest and its marker only costs one GET of that manifest when the item is next claimed.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from processor.keys import ItemKeys, KeyLayout, is_directory_marker, is_sidecar, safe_path, safe_segment
from processor.store.base import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class WorkItem:
    keys: ItemKeys
    info: ObjectInfo
    #: The sidecar's key when one was listed next to the input.
    sidecar: str | None = None
    #: Another input that owns the same output folder (``a.jpg`` and ``a.png`` → ``outputs/a/``).
    collides_with: str | None = None


@dataclass
class Backlog:
    inputs: int = 0
    done: int = 0
    failed: int = 0
    pending: list[WorkItem] = field(default_factory=list)
    #: Keys of failure records / manifests whose input no longer exists are not counted.
    requests: int = 0


def scan(store: ObjectStore, layout: KeyLayout) -> Backlog:
    before = store.request_count()
    finished: dict[str, dict[str, str]] = defaultdict(dict)
    for obj in store.list(layout.done_prefix):
        parsed = layout.parse_done_marker(obj.key)
        if parsed:
            safe_rel, etag, outcome = parsed
            finished[safe_rel][etag] = outcome

    inputs: list[ObjectInfo] = []
    sidecars: set[str] = set()
    for obj in store.list(layout.prefixes.inputs):
        if is_directory_marker(obj.key):
            continue
        if is_sidecar(obj.key):
            sidecars.add(obj.key)
        else:
            inputs.append(obj)

    backlog = Backlog(inputs=len(inputs))
    owners: dict[str, str] = {}
    # Sorted here, not trusted from the listing (SeaweedFS orders '/' differently from S3):
    # the first key in byte order owns an output folder that two inputs share.
    inputs.sort(key=lambda o: o.key.encode("utf-8"))
    for info in inputs:
        keys = layout.for_input(info.key)
        owner = owners.setdefault(keys.output_prefix, info.key)
        outcome = finished.get(safe_path(keys.relpath), {}).get(safe_segment(info.etag))
        if outcome == "done":
            backlog.done += 1
        elif outcome == "failed":
            backlog.failed += 1
        else:
            backlog.pending.append(
                WorkItem(
                    keys=keys,
                    info=info,
                    sidecar=keys.sidecar if keys.sidecar in sidecars else None,
                    collides_with=owner if owner != info.key else None,
                )
            )
    backlog.requests = store.request_count() - before
    return backlog


def shard_of(input_key: str, shard_count: int) -> int:
    """A stable shard for an input key (the same on every pod and Python version)."""
    digest = hashlib.sha256(input_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count
