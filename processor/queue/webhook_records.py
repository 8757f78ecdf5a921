"""The bucket records of the API's webhooks: which are still to send, who sends one, what came of it.

Under ``<state>/api/webhooks/`` (``KeyLayout.webhooks_prefix``), per job id:

- ``pending/<job>.json``: ``{"url": ..., "events": [...]}``, written at submit before the input
  (``events``: the ``WebhookEvent`` values to send for; a record without them sends for all);
- ``claims/<job>.json``: the right to send it, a claim like a worker's on an input
  (``ClaimManager``: exactly one replica holds it; taken over after its TTL when its sender died);
- ``done/<job>.json``: the outcome, written before the pending record is deleted.

Every record is read with a byte cap (``MAX_WEBHOOK_RECORD_BYTES``): bucket state is untrusted.
Sending, signing and retrying are ``processor.api.webhooks``'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum

from processor.errors import ObjectNotFound, ObjectTooLarge, ObjectUnreadable
from processor.queue.claims import Claim, ClaimManager
from processor.queue.keys import KeyLayout
from processor.store.base import ObjectStore

#: Bytes: the most of a webhook record anyone reads. A URL is at most a form field (16 KiB).
MAX_WEBHOOK_RECORD_BYTES = 64 * 1024
#: Seconds of TTL a release passes to its ``ClaimManager``: a release is a delete with If-Match on
#: the claim's ETag, in which the TTL plays no part.
_RELEASE_TTL_S = 1.0


class WebhookEvent(str, Enum):
    """What a webhook is sent for: a job's end, by how it ended (``webhook_events`` of a submit)."""

    done = "job.done"
    failed = "job.failed"
    cancelled = "job.cancelled"


#: The events a webhook is sent for when the submit names none: every end of a job.
ALL_EVENTS: frozenset[WebhookEvent] = frozenset(WebhookEvent)


@dataclass(frozen=True)
class WebhookDelivery:
    """A webhook still to send: the job, where to, and the events it is sent for."""

    job: str
    url: str
    events: frozenset[WebhookEvent] = field(default=ALL_EVENTS)


class WebhookRecords:
    """Reads and writes the webhook records of one bucket (module docstring)."""

    def __init__(self, store: ObjectStore, layout: KeyLayout) -> None:
        self.store = store
        self.prefix = layout.webhooks_prefix

    def add(self, job: str, url: str, events: Iterable[WebhookEvent] = ALL_EVENTS) -> None:
        """The pending record of a new job's webhook."""
        record = {"url": url, "events": sorted(e.value for e in events)}
        self.store.put(self._pending(job), json.dumps(record).encode(), content_type="application/json")

    def pending(self) -> list[WebhookDelivery]:
        """The deliveries not sent yet: one LIST, one capped GET each; unreadable records are skipped."""
        out = []
        prefix = self.prefix + "pending/"
        for obj in self.store.list(prefix):
            job = obj.key[len(prefix):].removesuffix(".json")
            data = self._read(obj.key)
            url = data.get("url") if data is not None else None
            if isinstance(url, str):
                out.append(WebhookDelivery(job, url, _events(data.get("events") if data is not None else None)))
        return out

    def claim(self, job: str, input_key: str, etag: str, sender: str, ttl_s: float) -> Claim | None:
        """The right to send one job's webhook; None: another replica has it."""
        return ClaimManager(self.store, sender, ttl_s=ttl_s).acquire(self.prefix + f"claims/{job}.json",
                                                                      input_key, etag)

    def release(self, claim: Claim, sender: str) -> None:
        ClaimManager(self.store, sender, ttl_s=_RELEASE_TTL_S).release(claim)

    def finish(self, job: str, outcome: dict[str, object]) -> None:
        """Record the outcome, then delete the pending record: no replica sends it again."""
        record = outcome | {"job": job, "finished_at": datetime.now(timezone.utc).isoformat()}
        self.store.put(self.prefix + f"done/{job}.json", json.dumps(record).encode(),
                       content_type="application/json")
        self.store.delete(self._pending(job))

    def outcome(self, job: str) -> dict[str, object] | None:
        """The recorded outcome of a job's webhook; None before it ended (or when unreadable)."""
        return self._read(self.prefix + f"done/{job}.json")

    def _pending(self, job: str) -> str:
        return self.prefix + f"pending/{job}.json"

    def _read(self, key: str) -> dict[str, object] | None:
        try:
            body = self.store.get(key, max_bytes=MAX_WEBHOOK_RECORD_BYTES).body
        except (ObjectNotFound, ObjectTooLarge, ObjectUnreadable):
            return None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None


def _events(value: object) -> frozenset[WebhookEvent]:
    """The events a pending record names; all for a record written before events existed."""
    if not isinstance(value, list):
        return ALL_EVENTS
    return frozenset(WebhookEvent(v) for v in value if v in {e.value for e in WebhookEvent})
