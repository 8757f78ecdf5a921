"""The ``sqs`` hint source: S3 event notifications, read from an SQS queue.

Configure the bucket to send ``s3:ObjectCreated:*`` events for the prefix ``inputs/`` to a queue
(directly, through an SNS topic, or through an EventBridge rule whose target is the queue) and
set ``run.sqs_queue_url``. Each message names the keys that changed; a key under the inputs prefix
is a hint naming its stem, so the worker lists just that. Messages are deleted once read, whether
or not they named an input: a hint is never retried (the scans are the safety net), and a message
SQS redelivers only repeats a hint.

One queue serves a whole fleet: SQS hands each message to one worker, and one worker is what an
input needs (the others learn of it at their own scans). Requests: one long poll of up to
``SQS_WAIT_S`` per worker while the queue is empty, 180 an idle hour.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol
from urllib.parse import unquote_plus

from processor.errors import StoreError
from processor.queue.hints.base import Wakeup, listing_prefix
from processor.store.sqs import QueueMessage

log = logging.getLogger("processor.hints")

#: Seconds one receive waits for a message (SQS's longest long poll).
SQS_WAIT_S = 20
#: Seconds before the first retry of a failed receive; doubled up to ``MAX_RETRY_S``.
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0


class MessageQueue(Protocol):
    """What the source needs of a queue (``processor.store.sqs.SqsQueue``)."""

    def receive(self, wait_s: int) -> list[QueueMessage]: ...

    def delete(self, messages: list[QueueMessage]) -> None: ...

    def close(self) -> None: ...


class SqsNotifications:
    """Long-polls ``queue`` on a thread of its own; every created object under ``inputs_prefix``
    (of ``bucket``, when given) is a hint."""

    name = "sqs"

    def __init__(self, queue: MessageQueue, inputs_prefix: str, *, bucket: str | None = None,
                 wait_s: int = SQS_WAIT_S) -> None:
        self.queue = queue
        self.inputs_prefix = inputs_prefix
        self.bucket = bucket
        self.wait_s = wait_s
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        #: Messages read so far (for tests and logs).
        self.messages = 0

    def start(self, wakeup: Wakeup) -> None:
        self._thread = threading.Thread(target=self._run, args=(wakeup,), name="hint-sqs", daemon=True)
        self._thread.start()

    def _run(self, wakeup: Wakeup) -> None:
        pause = FIRST_RETRY_S
        while not self._closed.is_set():
            try:
                messages = self.queue.receive(self.wait_s)
                prefixes = [p for m in messages for p in self.prefixes_of(m.body)]
                if prefixes:
                    wakeup.notify(self.name, prefixes)
                self.messages += len(messages)
                self.queue.delete(messages)
                pause = FIRST_RETRY_S
            except StoreError as exc:
                log.warning("hints_source_down", extra={"source": self.name, "error": type(exc).__name__,
                                                        "detail": str(exc), "retry_in_s": pause})
                self._closed.wait(pause)
                pause = min(pause * 2, MAX_RETRY_S)

    def prefixes_of(self, body: str) -> list[str]:
        """The listing prefixes a message's created objects are hints about (none for anything else)."""
        try:
            message = json.loads(body)
        except ValueError:
            log.debug("hints_message_unreadable", extra={"source": self.name, "detail": body[:200]})
            return []
        return [listing_prefix(k) for k in self._created_keys(message) if k.startswith(self.inputs_prefix)]

    def _created_keys(self, message: Any) -> list[str]:
        if not isinstance(message, dict):
            return []
        if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
            return self._created_keys(_json_or_none(message["Message"]))  # through an SNS topic
        keys: list[str] = []
        for record in message.get("Records") or []:  # S3's own notification
            if not isinstance(record, dict):
                continue
            s3 = record.get("s3") or {}
            if str(record.get("eventName", "")).startswith("ObjectCreated") and self._ours(s3.get("bucket")):
                key = (s3.get("object") or {}).get("key")
                if isinstance(key, str):
                    keys.append(unquote_plus(key))  # S3 sends keys URL-encoded, spaces as '+'
        detail = message.get("detail")
        if message.get("detail-type") == "Object Created" and isinstance(detail, dict):  # EventBridge
            key = (detail.get("object") or {}).get("key")
            if isinstance(key, str) and self._ours(detail.get("bucket")):
                keys.append(key)
        return keys

    def _ours(self, bucket: Any) -> bool:
        name = bucket.get("name") if isinstance(bucket, dict) else None
        return self.bucket is None or name == self.bucket

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=1)  # a long poll in flight ends with the process
        self.queue.close()

    def __enter__(self) -> SqsNotifications:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
