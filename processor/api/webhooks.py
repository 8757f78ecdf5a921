"""Webhooks: when a job submitted with ``webhook`` ends, POST it there, signed (Standard Webhooks).

Sent for the events the submit chose (``webhook_events``: ``job.done``, ``job.failed``,
``job.cancelled``; default all): a job that ends another way has its delivery recorded as skipped.

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

A receiver is a stranger: it may never answer, trickle its answer a byte at a time, or answer
with gigabytes. Each attempt has one deadline for all of it (``ATTEMPT_DEADLINE_S``: connecting,
sending, the answer's headers and its body; not a timeout per read, which a trickle resets
forever), reads at most ``RESPONSE_BYTES`` of the answer (its status is what counts), and the
deliveries run as tasks of one event loop, at most ``SENDERS`` attempts at once, none holding a
sender while it backs off: a slow receiver holds one sender for one deadline an attempt, never
the others.

Signature (https://www.standardwebhooks.com): ``webhook-signature: v1,<base64 HMAC-SHA256 of
"<webhook-id>.<webhook-timestamp>.<body>">``, made by the reference library (``standardwebhooks``),
keyed with the secret from ``api.webhook_secret_env``: ``whsec_`` + base64, or any other string,
used as its UTF-8 bytes (a receiver hands the library the ``whsec_`` string as it is, and another
secret as bytes). Redirects are never followed, and the host is checked against the allow-list
again, resolved afresh, before every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import anyio
import httpx
from standardwebhooks.webhooks import Webhook

from processor.api.problems import Problem
from processor.api.validate import Resolver, vet_webhook
from processor.errors import StoreAccessError, StoreError
from processor.queue.claims import Claim
from processor.queue.jobs import JobState, JobStatus, UnknownJob
from processor.queue.protocol import BucketQueue
from processor.queue.webhook_records import WebhookDelivery, WebhookEvent

log = logging.getLogger("processor.api.webhooks")

#: Seconds between a replica's listings of the pending deliveries.
POLL_S = 2.0
#: Attempts per delivery, and the back-off before each retry (seconds, doubling).
ATTEMPTS = 6
FIRST_BACKOFF_S = 1.0
#: Seconds one attempt may take in all: connect, send, the answer's headers and what is read of it.
ATTEMPT_DEADLINE_S = 10.0
#: Bytes of a receiver's answer read at most.
RESPONSE_BYTES = 4096
#: Attempts one replica sends at once.
SENDERS = 16
#: Seconds a delivery's claim holds without renewal: longer than every attempt and back-off of one
#: delivery together (``ATTEMPTS`` x ``ATTEMPT_DEADLINE_S`` + the back-offs), so a live sender never
#: loses it.
DELIVERY_TTL_S = 300.0
#: Seconds ``close`` waits for the sender's loop to stop; deliveries cut short keep their pending
#: record, and another replica sends them once their claim is released.
CLOSE_WAIT_S = 5.0
#: Statuses worth another attempt; any other non-2xx ends the delivery (the receiver refused it).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The event a job's end is (what ``webhook_events`` chooses from).
EVENT_OF = {JobStatus.done: WebhookEvent.done, JobStatus.failed: WebhookEvent.failed,
            JobStatus.cancelled: WebhookEvent.cancelled}
SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: the bytes after ``whsec_`` base64-decoded, or the UTF-8 bytes of
    any other string."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message (the reference library's ``sign``)."""
    return Webhook(signing_key(secret)).sign(msg_id, datetime.fromtimestamp(timestamp, timezone.utc), body)


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
    """One replica's share of the deliveries (module docstring): a thread running an event loop
    that lists the pending deliveries every ``poll_s`` and sends each as a task."""

    def __init__(self, queue: BucketQueue, render: Callable[[JobState], dict], secret: str, *, replica: str,
                 allow: list[str], resolve: Resolver | None = None, poll_s: float = POLL_S,
                 sleep: Callable[[float], Awaitable[None] | None] = asyncio.sleep,
                 transport: httpx.AsyncBaseTransport | None = None, attempt_deadline_s: float = ATTEMPT_DEADLINE_S,
                 senders: int = SENDERS) -> None:
        self.queue = queue
        self.render = render
        self.secret = secret
        self.allow = allow
        self.resolve = resolve
        self.poll_s = poll_s
        self.sleep = sleep
        self.replica = replica
        self.transport = transport
        self.attempt_deadline_s = attempt_deadline_s
        self.senders = senders
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()  # claim_due runs on a worker thread, _deliver on the loop's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=CLOSE_WAIT_S)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(follow_redirects=False, timeout=self.attempt_deadline_s, transport=self.transport)

    async def _main(self) -> None:
        gate = asyncio.Semaphore(self.senders)
        tasks: set[asyncio.Task[None]] = set()
        async with self.client() as client:
            try:
                while not self._stop.is_set():
                    try:
                        due = await asyncio.to_thread(self.claim_due)
                    except (StoreError, StoreAccessError) as exc:
                        log.warning("webhook_scan_failed", extra={"error": type(exc).__name__, "detail": str(exc)})
                        due = []
                    for delivery, state, claim in due:
                        task = asyncio.create_task(self._deliver(client, gate, delivery, state, claim))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    await asyncio.to_thread(self._stop.wait, self.poll_s)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def claim_due(self) -> list[tuple[WebhookDelivery, JobState, Claim]]:
        """The deliveries of the jobs that ended, each with the claim this replica took on it."""
        due = []
        for delivery in self.queue.webhooks.pending():
            with self._busy_lock:
                if delivery.job in self._busy:
                    continue
            try:
                state = self.queue.state(delivery.job)
            except UnknownJob:
                self.queue.webhooks.finish(delivery.job, {"delivered": False, "error": "the input was deleted"})
                continue
            if not state.status.ended:
                continue
            event = EVENT_OF[state.status]
            if event not in delivery.events:
                self.queue.webhooks.finish(delivery.job, {"delivered": False, "skipped": f"{event.value} is not "
                                                          "among the webhook's events", "url": delivery.url})
                continue
            claim = self.queue.webhooks.claim(delivery.job, state.input_key, state.etag, self.replica,
                                              DELIVERY_TTL_S)
            if claim is None:
                continue  # another replica is sending it
            with self._busy_lock:
                self._busy.add(delivery.job)
            due.append((delivery, state, claim))
        return due

    async def _deliver(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, delivery: WebhookDelivery,
                       state: JobState, claim: Claim) -> None:
        try:
            outcome = await self.send_with(client, delivery, state, gate=gate)
            await asyncio.to_thread(self.queue.webhooks.finish, delivery.job, {
                "delivered": outcome.delivered, "attempts": outcome.attempts, "status": outcome.status,
                "error": outcome.error, "url": delivery.url})
            log.info("webhook_sent" if outcome.delivered else "webhook_gave_up",
                     extra={"job": delivery.job, "attempts": outcome.attempts, "status": outcome.status})
        except (StoreError, StoreAccessError) as exc:
            log.warning("webhook_record_failed", extra={"job": delivery.job, "error": type(exc).__name__})
        finally:
            # Cut short (the server stopping) or not: the claim goes back, so another replica may send
            # a delivery whose pending record is still there.
            await asyncio.shield(asyncio.to_thread(self.queue.webhooks.release, claim, self.replica))
            with self._busy_lock:
                self._busy.discard(delivery.job)

    def send(self, delivery: WebhookDelivery, state: JobState) -> Outcome:
        """``send_with`` from outside the sender's loop (a client of its own, closed after)."""

        async def once() -> Outcome:
            async with self.client() as client:
                return await self.send_with(client, delivery, state)

        return asyncio.run(once())

    async def send_with(self, client: httpx.AsyncClient, delivery: WebhookDelivery, state: JobState, *,
                        gate: asyncio.Semaphore | None = None) -> Outcome:
        """POST the job with retries and back-off (``ATTEMPTS``, ``FIRST_BACKOFF_S`` doubling); each
        attempt within ``attempt_deadline_s``, holding one of ``gate``'s senders."""
        body = json.dumps(self.render(state), separators=(",", ":")).encode()
        msg_id = f"{state.id}.{state.etag}"
        status: int | None = None
        error: str | None = None
        for attempt in range(1, ATTEMPTS + 1):
            if attempt > 1:
                paused = self.sleep(FIRST_BACKOFF_S * 2 ** (attempt - 2))
                if inspect.isawaitable(paused):
                    await paused
            try:  # again: DNS may have changed
                target = await asyncio.to_thread(vet_webhook, delivery.url, self.allow, self.resolve)
            except Problem as exc:
                return Outcome(False, attempt, None, exc.detail)
            if gate is None:
                status, error = await self._attempt(client, target.pinned(), msg_id, body)
            else:
                async with gate:
                    status, error = await self._attempt(client, target.pinned(), msg_id, body)
            if status is not None and 200 <= status < 300:
                return Outcome(True, attempt, status)
            if status is not None and status not in RETRY_STATUSES:
                return Outcome(False, attempt, status, error + " (not retried; redirects are not followed)"
                               if error and 300 <= status < 400 else error)
        return Outcome(False, ATTEMPTS, status, error)

    async def _attempt(self, client: httpx.AsyncClient, pinned: tuple[str, dict[str, str], dict[str, str]],
                       msg_id: str, body: bytes) -> tuple[int | None, str | None]:
        """One POST to the vetted address: (status or None, what went wrong or None)."""
        url, host_header, extensions = pinned  # connect to what was vetted, nothing else
        stamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                   "webhook-signature": sign(self.secret, msg_id, stamp, body),
                   "user-agent": "toy-cartoonizer-webhooks", **host_header}
        try:
            with anyio.fail_after(self.attempt_deadline_s):
                async with client.stream("POST", url, content=body, headers=headers, extensions=extensions) as resp:
                    read = 0
                    async for chunk in resp.aiter_raw():
                        read += len(chunk)
                        if read >= RESPONSE_BYTES:
                            break  # the status is what counts; the rest is never read
        except TimeoutError:
            return None, f"no whole answer within {self.attempt_deadline_s:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        ok = 200 <= resp.status_code < 300
        return resp.status_code, None if ok else f"HTTP {resp.status_code}"


__all__ = ["Outcome", "WebhookDispatcher", "read_secret", "sign"]
