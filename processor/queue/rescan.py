"""The rescan hint: a tiny object that tells running daemons their next scan must be a full one.

Between full scans a daemon lists only the inputs after its high-water mark (``scan.py``), so an
input that becomes pending under a key sorting before the mark (requeued by ``processor retry``,
re-uploaded under an old key by ``processor submit``) would wait for the next full scan:
``run.full_rescan_s`` (300 s by default). The commands that cause that write
``<state>/rescan.json`` (``KeyLayout.rescan_hint``) after their own writes; each daemon HEADs it on
every scan (one request, no body) and, when its ETag or Last-Modified differs from what it read
before its last full scan, makes this scan a full one.

Why a HEAD and not a notification service: it needs nothing but the bucket every worker already
reads, works the same on every store adapter, and costs one request a scan. The body (when, by
what, how many inputs) is for people reading the bucket; daemons never parse it.

Ordering, so that no request is missed: the writer puts the hint *after* its own writes (failure
records, deleted done markers, uploads), and a full scan HEADs the hint *before* its listings. A
hint a full scan read was therefore written after changes that scan lists; a hint written later
differs from it and triggers the next full scan.

Errors: a store error while reading the hint is logged and the scan goes on as scheduled (the hint
only makes things sooner, never correct); a store error while writing it is logged, and the caller
says that daemons will find the change at their next scheduled full scan.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime

from processor.errors import ObjectNotFound, StoreAccessError, StoreError
from processor.manifest import utcnow
from processor.queue.keys import KeyLayout
from processor.store.base import ObjectStore

log = logging.getLogger("processor.rescan")

#: What a daemon compares: (ETag, Last-Modified) of the hint object; ``ABSENT`` when there is none.
HintVersion = tuple[str, str]
ABSENT: HintVersion = ("", "")


@dataclass(frozen=True)
class RescanRequest:
    """The hint's body (informational: daemons only compare the object's version)."""

    requested_at: str
    #: The command that asked: "retry" or "submit".
    by: str
    #: Inputs it requeued or uploaded.
    count: int


def request_rescan(store: ObjectStore, layout: KeyLayout, *, by: str, count: int,
                   now: datetime | None = None) -> bool:
    """Write the hint so that every running daemon's next scan is a full one. Call it after the
    writes it announces. Returns False (and logs) when the store refused it."""
    body = RescanRequest(requested_at=(now or utcnow()).isoformat(), by=by, count=count)
    try:
        store.put(layout.rescan_hint, json.dumps(asdict(body)).encode(), content_type="application/json")
    except (StoreError, StoreAccessError) as exc:
        log.warning("rescan_request_failed", extra={"key": layout.rescan_hint, "error": type(exc).__name__,
                                                    "detail": str(exc)})
        return False
    log.info("rescan_requested", extra={"key": layout.rescan_hint, "by": by, "count": count})
    return True


def read_hint_version(store: ObjectStore, layout: KeyLayout) -> HintVersion | None:
    """The hint's current version (one HEAD): ``ABSENT`` when there is no hint, None when the store
    could not tell (logged; the caller keeps to its schedule)."""
    try:
        info = store.head(layout.rescan_hint)
    except ObjectNotFound:
        return ABSENT
    except (StoreError, StoreAccessError) as exc:
        log.warning("rescan_hint_unreadable", extra={"key": layout.rescan_hint, "error": type(exc).__name__,
                                                     "detail": str(exc)})
        return None
    return info.etag, info.last_modified.isoformat()
