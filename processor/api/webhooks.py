"""Webhooks: when a job submitted with ``webhook`` ends, POST it there, signed (Standard Webhooks).

Who sends, with several stateless replicas: every replica runs a ``WebhookDispatcher`` that lists
the pending deliveries (``<state>/api/webhooks/pending/<job>.json``, written at submit) every
``POLL_S``. For a job that has ended, a replica first takes the delivery's *claim*
(``<state>/api/webhooks/claims/<job>.json``, ``ClaimManager``: create with ``If-None-Match: *``,
taken over only after ``DELIVERY_TTL_S`` when its sender died), so exactly one replica sends
it. The winner POSTs with retries and back-off, then deletes the pending record (no replica sends
it again), writes the outcome beside it (``.../done/<job>.json``) and releases the claim. The
records are the bucket protocol's (``processor.queue.webhook_records``); this module only sends.

At least once, like every webhook: a sender that dies after the receiver's 2xx and before the
pending record is deleted leaves it to another replica after the claim's TTL. The receiver
deduplicates on ``webhook-id`` (the job id and the input version, the same on every attempt).

Signature (https://www.standardwebhooks.com): ``webhook-signature: v1,<base64 HMAC-SHA256 of
"<webhook-id>.<webhook-timestamp>.<body>">``, keyed with the secret from ``api.webhook_secret_env``
(``whsec_`` + base64, or any string, used as its UTF-8 bytes). Redirects are never followed, and
the host is checked against the allow-list again, resolved afresh, before every attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from processor.api.problems import Problem
from processor.api.validate import Resolver, vet_webhook
from processor.errors import StoreAccessError, StoreError
from processor.queue.claims import Claim
from processor.queue.jobs import JobState, UnknownJob
from processor.queue.protocol import BucketQueue
from processor.queue.webhook_records import WebhookDelivery

log = logging.getLogger("processor.api.webhooks")

#: Seconds between a replica's listings of the pending deliveries.
POLL_S = 2.0
#: Seconds a delivery's claim holds without renewal: longer than every attempt and back-off of one
#: delivery together (``ATTEMPTS`` x ``TIMEOUT_S`` + the back-offs), so a live sender never loses it.
DELIVERY_TTL_S = 300.0
#: Attempts per delivery, and the back-off before each retry (seconds, doubling).
ATTEMPTS = 6
FIRST_BACKOFF_S = 1.0
#: Seconds one POST may take (connect + response).
TIMEOUT_S = 10.0
#: Deliveries sent at once by one replica.
SENDERS = 4
#: Statuses worth another attempt; any other non-2xx ends the delivery (the receiver refused it).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def signing_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    mac = hmac.new(signing_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None,
           tolerance_s: float = 300.0) -> bool:
    """What a receiver does (used by the tests): recompute the signature, check the timestamp."""
    msg_id, stamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    if abs((now or time.time()) - stamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, stamp, body).encode()
    return any(hmac.compare_digest(expected, s.encode()) for s in headers["webhook-signature"].split())


def read_secret(env_name: str, environ: dict[str, str] | None = None) -> str | None:
    value = (environ if environ is not None else os.environ).get(env_name, "").strip()
    if not value:
        return None
    try:
        signing_key(value)
    except ValueError:  # binascii.Error, base64's complaint, is a ValueError
        raise Problem(500, f"{env_name} starts with whsec_ but is not base64 after it",
                      hint="The operator must fix the webhook secret.") from None
    return value


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    attempts: int
    #: The last HTTP status received (None: no answer).
    status: int | None
    error: str | None = None


class WebhookDispatcher:
    """One replica's share of the deliveries (module docstring)."""

    def __init__(self, queue: BucketQueue, render: Callable[[JobState], dict], secret: str, *, replica: str,
                 allow: list[str], resolve: Resolver | None = None, poll_s: float = POLL_S,
                 sleep: Callable[[float], None] = time.sleep,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.queue = queue
        self.render = render
        self.secret = secret
        self.allow = allow
        self.resolve = resolve
        self.poll_s = poll_s
        self.sleep = sleep
        self.replica = replica
        self._client = httpx.Client(follow_redirects=False, timeout=TIMEOUT_S, transport=transport)
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except (StoreError, StoreAccessError) as exc:
                log.warning("webhook_scan_failed", extra={"error": type(exc).__name__, "detail": str(exc)})

    def tick(self) -> int:
        """Start the deliveries of the jobs that ended; how many this call started."""
        started = 0
        for delivery in self.queue.webhooks.pending():
            with self._lock:
                if delivery.job in self._busy:
                    continue
            try:
                state = self.queue.state(delivery.job)
            except UnknownJob:
                self.queue.webhooks.finish(delivery.job, {"delivered": False, "error": "the input was deleted"})
                continue
            if not state.status.ended:
                continue
            claim = self.queue.webhooks.claim(delivery.job, state.input_key, state.etag, self.replica,
                                              DELIVERY_TTL_S)
            if claim is None:
                continue  # another replica is sending it
            with self._lock:
                self._busy.add(delivery.job)
            self._pool.submit(self._deliver, delivery, state, claim)
            started += 1
        return started

    def _deliver(self, delivery: WebhookDelivery, state: JobState, claim: Claim) -> None:
        try:
            outcome = self.send(delivery, state)
            self.queue.webhooks.finish(delivery.job, {"delivered": outcome.delivered, "attempts": outcome.attempts,
                                                    "status": outcome.status, "error": outcome.error,
                                                    "url": delivery.url})
            log.info("webhook_sent" if outcome.delivered else "webhook_gave_up",
                     extra={"job": delivery.job, "attempts": outcome.attempts, "status": outcome.status})
        except (StoreError, StoreAccessError) as exc:
            log.warning("webhook_record_failed", extra={"job": delivery.job, "error": type(exc).__name__})
        finally:
            self.queue.webhooks.release(claim, self.replica)
            with self._lock:
                self._busy.discard(delivery.job)

    def send(self, delivery: WebhookDelivery, state: JobState) -> Outcome:
        """POST the job with retries and back-off (``ATTEMPTS``, ``FIRST_BACKOFF_S`` doubling)."""
        body = json.dumps(self.render(state), separators=(",", ":")).encode()
        msg_id = f"{state.id}.{state.etag}"
        status: int | None = None
        error: str | None = None
        for attempt in range(1, ATTEMPTS + 1):
            if attempt > 1:
                self.sleep(FIRST_BACKOFF_S * 2 ** (attempt - 2))
            try:
                target = vet_webhook(delivery.url, self.allow, self.resolve)  # again: DNS may have changed
            except Problem as exc:
                return Outcome(False, attempt, None, exc.detail)
            url, host_header, extensions = target.pinned()  # connect to what was vetted, nothing else
            stamp = int(time.time())
            headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                       "webhook-signature": sign(self.secret, msg_id, stamp, body),
                       "user-agent": "toy-cartoonizer-webhooks", **host_header}
            try:
                resp = self._client.post(url, content=body, headers=headers, extensions=extensions)
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
                continue
            status = resp.status_code
            if 200 <= status < 300:
                return Outcome(True, attempt, status)
            error = f"HTTP {status}"
            if status not in RETRY_STATUSES:
                return Outcome(False, attempt, status, error + " (not retried; redirects are not followed)"
                               if 300 <= status < 400 else error)
        return Outcome(False, ATTEMPTS, status, error)


__all__ = ["Outcome", "WebhookDispatcher", "read_secret", "sign", "verify"]
