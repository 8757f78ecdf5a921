"""Leases on inputs, kept in the bucket, and the probe that says whether they can work.

A claim is ``<state>/claims/<hash of input key>.json``:

- acquire: create it with ``If-None-Match: *``; if it exists and has expired (judged by the
  *server's* clock: the response ``Date`` minus the claim's ``Last-Modified``, against the TTL the
  owner wrote in it, capped at ``claims.max_ttl_s``), take it over with ``If-Match`` on the ETag
  we read;
- renew: rewrite it with ``If-Match`` on the ETag we hold (a ``ClaimKeeper`` thread does this for
  every held claim, including items waiting in the prefetch queue);
- release: delete it with ``If-Match`` on our ETag.

The claim also carries the item's ``progress`` (stage; round k of N; step), which the HTTP API
reads: the worker's stages set it on the ``Claim`` in memory, and the keeper writes it with the
next renewal, which it makes early (at most once per ``claims.progress_s``) while the progress
changes. So a progress bar costs no request per step: one small PUT per running item per period.

The bucket is untrusted: a claim is read with a byte cap (``MAX_CLAIM_BYTES``), and one whose
body is not a claim of ours (garbage JSON, a TTL that is missing, non-finite, not positive or
absurd) counts as one with the cap as its TTL, so it expires ``claims.max_ttl_s`` after its last
write, like any claim of a dead worker. ``judge_claim`` is that one judgement: the workers'
``ClaimManager`` (may it take a claim over?) and the job view (is this input running?) both use it,
so the API never calls an input running that a worker would take over, nor the reverse.

A lease alone cannot stop a worker that was paused past its TTL from finishing its item; the
conditional commit of the manifest does that (see ``worker.py``). Claims only keep two healthy
workers from wasting a GPU on the same input.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from processor.config import DEFAULT_CLAIM_MAX_TTL_S
from processor.errors import ObjectNotFound, ObjectTooLarge, PreconditionFailed, StoreAccessError, StoreError
from processor.store.base import ObjectStore, StoredObject

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
#: Bytes: the most of a claim object anyone reads. Ours are about 250 bytes.
MAX_CLAIM_BYTES = 4096
#: Characters of a claim's ``worker`` field kept for logs (a log field, not a novel).
MAX_OWNER_CHARS = 200


@dataclass(frozen=True)
class ClaimView:
    """What a claim object in the bucket says, as far as it is trusted (``judge_claim``)."""

    #: Who wrote it (for logs; cut to ``MAX_OWNER_CHARS``); ``?`` when the body is not a claim of ours.
    owner: str
    #: Its random token (ours, when we wrote it); None for garbage.
    token: str | None
    #: The input version it names; None for garbage.
    input_etag: str | None
    #: Seconds it is judged by: its own TTL, at most the configured cap (``claims.max_ttl_s``).
    ttl_s: float
    #: Seconds since its last write, by the server's clock.
    age_s: float
    #: Whether it still holds: younger than ``ttl_s`` (plus ``CLOCK_RESOLUTION_S`` on whole-second dates).
    live: bool
    #: The progress it carries, when it carries a valid one.
    progress: ClaimProgress | None = None


@dataclass
class Claim:
    """A lease on one input version that this worker holds (``<state>/claims/<hash>.json``)."""

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
    #: What the worker is doing with the item (``ClaimProgress``); written with the next renewal.
    progress: ClaimProgress | None = None
    #: Monotonic seconds of the last write of this claim (acquire, or the keeper's renewal).
    written_at: float = field(default_factory=time.monotonic)
    #: Whether ``progress`` changed since the last write.
    progress_dirty: bool = False

    def report(self, progress: ClaimProgress) -> None:
        """Publish ``progress`` with the next renewal (no request here: stages call this per step)."""
        if progress != self.progress:
            self.progress = progress
            self.progress_dirty = True


@dataclass(frozen=True)
class ClaimProgress:
    """A running item's progress, as the claim object carries it (``progress`` in its JSON)."""

    #: ``claimed`` (waiting in the worker's prefetch queue), ``download``, ``caption``,
    #: ``style:<name>``, ``upload``.
    stage: str
    #: Round k of N of a multi-round style (1-based), when the stage has rounds.
    round: int | None = None
    rounds: int | None = None
    #: Denoising step of the current round, and its total.
    step: int | None = None
    steps: int | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: object) -> ClaimProgress | None:
        if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
            return None
        ints = {k: data[k] for k in ("round", "rounds", "step", "steps") if isinstance(data.get(k), int)}
        return cls(stage=data["stage"], **ints)


class ClaimManager:
    """Creates, renews, checks and releases claims with conditional writes; judges expiry by the
    server's clock. Counts conflicts and takeovers for the metrics."""

    def __init__(self, store: ObjectStore, worker_id: str, ttl_s: float,
                 max_ttl_s: float = DEFAULT_CLAIM_MAX_TTL_S) -> None:
        if not (math.isfinite(ttl_s) and 0 < ttl_s <= max_ttl_s and math.isfinite(max_ttl_s)):
            raise ValueError(f"need 0 < ttl_s ({ttl_s}) <= max_ttl_s ({max_ttl_s}), both finite")
        self.store = store
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.max_ttl_s = max_ttl_s
        self.conflicts = 0
        self.takeovers = 0

    def _body(self, claim_key: str, input_key: str, input_etag: str, token: str,
              progress: ClaimProgress | None = None) -> bytes:
        data = {
            "worker": self.worker_id,
            "token": token,
            "input": input_key,
            "etag": input_etag,
            "ttl_s": self.ttl_s,
            "written_at": datetime.now(timezone.utc).isoformat(),
        }
        if progress is not None:
            data["progress"] = progress.to_json()
        return json.dumps(data).encode()

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
            current = self._read(claim_key)
        except ObjectNotFound:
            # Released between our create and our read: one more create settles it.
            try:
                info = self.store.put(claim_key, body, content_type="application/json", if_none_match=True)
                return Claim(claim_key, input_key, input_etag, info.etag, token)
            except PreconditionFailed:
                mine = self._ours(claim_key, token)
                if mine is not None:
                    return Claim(claim_key, input_key, input_etag, mine.info.etag, token)
                self.conflicts += 1
                return None
        view = judge_claim(current, max_ttl_s=self.max_ttl_s)
        if view.token == token:
            # Our own create: it landed, but its response was lost and the store's retry of it met
            # the object it had written (412). Without this the worker would wait out its own claim.
            return Claim(claim_key, input_key, input_etag, current.info.etag, token)
        owner, age = view.owner, view.age_s
        if view.live:
            self.conflicts += 1
            log.debug("claim_held", extra={"key": input_key, "owner": owner, "age_s": round(age, 1)})
            return None
        try:
            info = self.store.put(claim_key, body, content_type="application/json", if_match=current.info.etag)
        except (PreconditionFailed, ObjectNotFound):
            mine = self._ours(claim_key, token)  # a retried takeover whose first write landed
            if mine is None:
                self.conflicts += 1
                return None
            info = mine.info
        self.takeovers += 1
        log.info("claim_taken_over", extra={"key": input_key, "previous_owner": owner, "age_s": round(age, 1)})
        return Claim(claim_key, input_key, input_etag, info.etag, token, took_over_from=owner, takeover_age_s=age)

    def renew(self, claim: Claim) -> bool:
        """Extend ``claim``; False (and ``claim.lost`` set) when another worker took it."""
        if claim.lost.is_set():
            return False
        progress = claim.progress
        claim.progress_dirty = False  # before the write: a report during it makes it dirty again
        body = self._body(claim.key, claim.input_key, claim.input_etag, claim.token, progress)
        try:
            info = self.store.put(claim.key, body, content_type="application/json", if_match=claim.etag)
        except (PreconditionFailed, ObjectNotFound):
            # Our token there still means ours: a retried renewal whose first write landed (its
            # response lost) changed the ETag the retry was conditioned on. No one else writes it.
            mine = self._ours(claim.key, claim.token)
            if mine is None:
                claim.lost.set()
                log.warning("claim_lost", extra={"key": claim.input_key})
                return False
            info = mine.info
        except StoreError:
            claim.progress_dirty = progress is not None  # not published: the next renewal tries again
            raise
        claim.etag = info.etag
        return True

    def holds(self, claim: Claim) -> bool:
        """Whether the claim object still carries our token: a fresh read, not the keeper's last
        renewal. False once another worker has taken it over (or it is gone). Unlike ``renew``,
        this writes nothing, so it cannot race the keeper thread's renewals."""
        return self._ours(claim.key, claim.token) is not None

    def _ours(self, claim_key: str, token: str) -> StoredObject | None:
        """The claim object as it is now if it carries ``token`` (ours), else None (gone, or another
        worker's). Tokens are random per acquire: only the writer of a token writes it again."""
        try:
            current = self._read(claim_key)
        except ObjectNotFound:
            return None
        return current if _token_of(current.body) == token else None

    def _read(self, claim_key: str) -> StoredObject:
        return read_claim_object(self.store, claim_key)

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


def read_claim_object(store: ObjectStore, claim_key: str) -> StoredObject:
    """The claim object, read with a byte cap (``MAX_CLAIM_BYTES``); an oversized one (not ours)
    comes back with an empty body (garbage, so it expires at the cap) and the ETag and dates of a
    HEAD. ``ObjectNotFound`` when there is none."""
    try:
        return store.get(claim_key, max_bytes=MAX_CLAIM_BYTES)
    except ObjectTooLarge:
        return StoredObject(info=store.head(claim_key), body=b"")


def read_claim(store: ObjectStore, claim_key: str, *, max_ttl_s: float) -> ClaimView | None:
    """The claim at ``claim_key`` as ``judge_claim`` sees it; None when there is none."""
    try:
        found = read_claim_object(store, claim_key)
    except ObjectNotFound:
        return None
    return judge_claim(found, max_ttl_s=max_ttl_s)


def judge_claim(found: StoredObject, *, max_ttl_s: float) -> ClaimView:
    """The one judgement of a claim object read from the bucket (module docstring).

    Its TTL is its own, at most ``max_ttl_s`` (``claims.max_ttl_s``). Anything that is not a finite
    positive number of seconds (garbage JSON, a missing, negative, ``NaN``, ``Infinity`` or string
    TTL) counts as ``max_ttl_s``: the claim still expires, at the latest moment any honest worker's
    could. Its age is measured on the server's clock (``Date`` minus ``Last-Modified``)."""
    data = _claim_fields(found.body)
    own_ttl = data.get("ttl_s")
    ttl = max_ttl_s
    if isinstance(own_ttl, (int, float)) and not isinstance(own_ttl, bool) and math.isfinite(own_ttl) and own_ttl > 0:
        ttl = min(float(own_ttl), max_ttl_s)
    server_now = found.info.server_time or datetime.now(timezone.utc)
    age = (server_now - found.info.last_modified).total_seconds()
    # HTTP dates (S3) carry whole seconds; a store with a finer clock (the local one) needs no margin.
    whole_seconds = server_now.microsecond == 0 and found.info.last_modified.microsecond == 0
    token, etag = data.get("token"), data.get("etag")
    return ClaimView(
        owner=str(data.get("worker", "?"))[:MAX_OWNER_CHARS],
        token=token if isinstance(token, str) else None,
        input_etag=etag if isinstance(etag, str) else None,
        ttl_s=ttl,
        age_s=age,
        live=age < ttl + (CLOCK_RESOLUTION_S if whole_seconds else 0.0),
        progress=ClaimProgress.from_json(data.get("progress")),
    )


def _claim_fields(body: bytes) -> dict[str, object]:
    """A claim body's JSON object; empty for garbage (whose token is never one of ours)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # also UnicodeDecodeError
        return {}
    return data if isinstance(data, dict) else {}


def _token_of(body: bytes) -> str | None:
    """A claim body's token, or None for garbage (never equal to one of ours)."""
    token = _claim_fields(body).get("token")
    return token if isinstance(token, str) else None


class ClaimKeeper:
    """Renews every held claim each ``renew_s`` seconds on a background thread, and a claim whose
    progress changed early, at most once per ``progress_s`` (None: only every ``renew_s``)."""

    def __init__(self, manager: ClaimManager, renew_s: float, wait: Callable[[float], bool] | None = None,
                 progress_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.manager = manager
        self.renew_s = renew_s
        self.progress_s = progress_s
        self._clock = clock
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
            self._renew(claim)

    def renew_due(self) -> None:
        """Renew the claims whose period is up, and those with new progress whose last write is at
        least ``progress_s`` old."""
        now = self._clock()
        for claim in self.held():
            age = now - claim.written_at
            if age >= self.renew_s or (claim.progress_dirty and self.progress_s is not None
                                       and age >= self.progress_s):
                self._renew(claim)

    def _renew(self, claim: Claim) -> None:
        try:
            if self.manager.renew(claim):
                claim.written_at = self._clock()
        except StoreError as exc:
            # Transient after retries: try again next period; the TTL leaves room for that.
            log.warning("claim_renew_failed", extra={"key": claim.input_key, "error": type(exc).__name__})

    def _loop(self) -> None:
        if self.progress_s is None:
            while not self._wait(self.renew_s):
                self.renew_all()
            return
        while not self._wait(min(self.renew_s, self.progress_s)):
            self.renew_due()


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
