"""Leases on inputs, kept in the bucket, and the probe that says whether they can work.

A claim is ``<state>/claims/<hash of input key>.json``:

- acquire: create it with ``If-None-Match: *``; if it exists and has expired (judged by the
  *server's* clock: the response ``Date`` minus the claim's ``Last-Modified``, against the TTL the
  owner wrote in it), take it over with ``If-Match`` on the ETag we read;
- renew: rewrite it with ``If-Match`` on the ETag we hold (a ``ClaimKeeper`` thread does this for
  every held claim, including items waiting in the prefetch queue);
- release: delete it with ``If-Match`` on our ETag.

A lease alone cannot stop a worker that was paused past its TTL from finishing its item; the
conditional commit of the manifest does that (see ``worker.py``). Claims only keep two healthy
workers from wasting a GPU on the same input.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from processor.errors import ObjectNotFound, PreconditionFailed, StoreAccessError, StoreError
from processor.store.base import ObjectStore

log = logging.getLogger("processor.claims")

#: Concurrent creates the atomicity probe races on one scratch key.
PROBE_RACERS = 8
#: Rounds of that race; every round must have exactly one winner.
PROBE_ROUNDS = 2
#: Seconds of resolution of HTTP dates: Last-Modified and Date are whole seconds, so an age
#: measured from them can exceed the true age by up to this much. Such a claim counts as expired
#: only when its measured age is at least TTL + this (bench/chaos.py saw takeovers 2.4 s after
#: the last renewal with a 3 s TTL before this margin).
CLOCK_RESOLUTION_S = 1.0


@dataclass
class Claim:
    key: str
    input_key: str
    input_etag: str
    #: The claim object's ETag we hold; every renewal changes it.
    etag: str
    token: str
    #: Set when a renewal found the claim taken by another worker.
    lost: threading.Event = field(default_factory=threading.Event)
    #: The previous owner, when we took over an expired claim.
    took_over_from: str | None = None
    #: Seconds the expired claim had gone unrenewed when we took it (server clock).
    takeover_age_s: float | None = None


class ClaimManager:
    def __init__(self, store: ObjectStore, worker_id: str, ttl_s: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.conflicts = 0
        self.takeovers = 0

    def _body(self, claim_key: str, input_key: str, input_etag: str, token: str) -> bytes:
        return json.dumps(
            {
                "worker": self.worker_id,
                "token": token,
                "input": input_key,
                "etag": input_etag,
                "ttl_s": self.ttl_s,
                "written_at": datetime.now(timezone.utc).isoformat(),
            }
        ).encode()

    def acquire(self, claim_key: str, input_key: str, input_etag: str) -> Claim | None:
        """A claim we now hold, or None when a live claim by another worker exists."""
        token = uuid.uuid4().hex
        body = self._body(claim_key, input_key, input_etag, token)
        try:
            info = self.store.put(claim_key, body, content_type="application/json", if_none_match=True)
            return Claim(claim_key, input_key, input_etag, info.etag, token)
        except PreconditionFailed:
            pass
        try:
            current = self.store.get(claim_key)
        except ObjectNotFound:
            # Released between our create and our read: one more create settles it.
            try:
                info = self.store.put(claim_key, body, content_type="application/json", if_none_match=True)
                return Claim(claim_key, input_key, input_etag, info.etag, token)
            except PreconditionFailed:
                self.conflicts += 1
                return None
        owner, ttl = _owner_and_ttl(current.body, default_ttl=self.ttl_s)
        server_now = current.info.server_time or datetime.now(timezone.utc)
        age = (server_now - current.info.last_modified).total_seconds()
        # HTTP dates (S3) carry whole seconds; a store with a finer clock (the local one) needs no margin.
        whole_seconds = server_now.microsecond == 0 and current.info.last_modified.microsecond == 0
        if age < ttl + (CLOCK_RESOLUTION_S if whole_seconds else 0.0):
            self.conflicts += 1
            log.debug("claim_held", extra={"key": input_key, "owner": owner, "age_s": round(age, 1)})
            return None
        try:
            info = self.store.put(claim_key, body, content_type="application/json", if_match=current.info.etag)
        except (PreconditionFailed, ObjectNotFound):
            self.conflicts += 1
            return None
        self.takeovers += 1
        log.info("claim_taken_over", extra={"key": input_key, "previous_owner": owner, "age_s": round(age, 1)})
        return Claim(claim_key, input_key, input_etag, info.etag, token, took_over_from=owner, takeover_age_s=age)

    def renew(self, claim: Claim) -> bool:
        """Extend ``claim``; False (and ``claim.lost`` set) when another worker took it."""
        if claim.lost.is_set():
            return False
        body = self._body(claim.key, claim.input_key, claim.input_etag, claim.token)
        try:
            info = self.store.put(claim.key, body, content_type="application/json", if_match=claim.etag)
        except (PreconditionFailed, ObjectNotFound):
            claim.lost.set()
            log.warning("claim_lost", extra={"key": claim.input_key})
            return False
        claim.etag = info.etag
        return True

    def holds(self, claim: Claim) -> bool:
        """Whether the claim object still carries our token: a fresh read, not the keeper's last
        renewal. False once another worker has taken it over (or it is gone). Unlike ``renew``,
        this writes nothing, so it cannot race the keeper thread's renewals."""
        try:
            current = self.store.get(claim.key)
        except ObjectNotFound:
            return False
        try:
            return json.loads(current.body).get("token") == claim.token
        except (ValueError, AttributeError):
            return False

    def release(self, claim: Claim) -> None:
        """Best effort: an expired claim is taken over by the next worker anyway."""
        if claim.lost.is_set():
            return
        try:
            self.store.delete(claim.key, if_match=claim.etag)
        except (PreconditionFailed, ObjectNotFound):
            pass
        except (StoreError, StoreAccessError) as exc:
            # Also while shutting down on revoked credentials: the original error is what matters.
            log.warning("claim_release_failed", extra={"key": claim.input_key, "error": type(exc).__name__})


def _owner_and_ttl(body: bytes, default_ttl: float) -> tuple[str, float]:
    try:
        data = json.loads(body)
        return str(data.get("worker", "?")), float(data.get("ttl_s", default_ttl))
    except (ValueError, TypeError, AttributeError):
        # An unreadable claim is treated as one with our TTL: it still expires.
        return "?", default_ttl


class ClaimKeeper:
    """Renews every held claim each ``renew_s`` seconds on a background thread."""

    def __init__(self, manager: ClaimManager, renew_s: float, wait: Callable[[float], bool] | None = None) -> None:
        self.manager = manager
        self.renew_s = renew_s
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread = threading.Thread(target=self._loop, name="claim-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._claims[claim.key] = claim

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._claims.pop(claim.key, None)

    def held(self) -> list[Claim]:
        with self._lock:
            return list(self._claims.values())

    def renew_all(self) -> None:
        for claim in self.held():
            try:
                self.manager.renew(claim)
            except StoreError as exc:
                # Transient after retries: try again next period; the TTL leaves room for that.
                log.warning("claim_renew_failed", extra={"key": claim.input_key, "error": type(exc).__name__})

    def _loop(self) -> None:
        while not self._wait(self.renew_s):
            self.renew_all()


def probe_conditional_create(store: ObjectStore, scratch_prefix: str) -> tuple[bool, str]:
    """Race ``PROBE_RACERS`` creates with ``If-None-Match: *`` on scratch keys: atomic if one wins.

    Returns (atomic, detail). Leaves nothing behind.
    """
    for round_no in range(PROBE_ROUNDS):
        key = f"{scratch_prefix}probe/{uuid.uuid4().hex}"

        def create(i: int, key: str = key) -> bool:  # bound now: the racers run within this round
            try:
                store.put(key, f"{i}".encode(), if_none_match=True)
                return True
            except PreconditionFailed:
                return False

        with ThreadPoolExecutor(PROBE_RACERS) as pool:
            winners = sum(pool.map(create, range(PROBE_RACERS)))
        try:
            store.delete(key)
        except StoreError:
            pass
        if winners != 1:
            return False, f"{winners} of {PROBE_RACERS} concurrent creates won in round {round_no + 1} (want 1)"
    return True, f"1 of {PROBE_RACERS} concurrent creates won, {PROBE_ROUNDS} rounds"
