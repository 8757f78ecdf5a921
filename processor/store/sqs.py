"""An SQS queue as the worker reads bucket notifications from it (``processor.queue.hints.sqs``).

S3 sends its event notifications to SQS (directly, through SNS, or through EventBridge); the
worker long-polls the queue and deletes what it read. Only this module talks to SQS: botocore's
errors become ``StoreError`` here, with their cause. The client comes from boto3's own credential
chain and region (``store.region``, ``store.profile``, the standard AWS variables); an
SQS-compatible server elsewhere (LocalStack, ElasticMQ) is named by ``AWS_ENDPOINT_URL_SQS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from processor.config import StoreSettings
from processor.errors import StoreError
from processor.store.base import Closeable

#: Messages one receive returns at most (SQS's own limit).
MAX_MESSAGES = 10


@dataclass(frozen=True)
class QueueMessage:
    """One message: its body, and the handle that deletes it."""

    body: str
    receipt: str


class SqsQueue(Closeable):
    """Receive (long poll) and delete messages of one queue."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url

    @classmethod
    def from_settings(cls, queue_url: str, store: StoreSettings) -> SqsQueue:
        import boto3

        session = boto3.session.Session(profile_name=store.profile, region_name=store.region)
        return cls(session.client("sqs"), queue_url)

    def receive(self, wait_s: int) -> list[QueueMessage]:
        """The messages waiting, after waiting up to ``wait_s`` seconds for one (a long poll)."""
        try:
            answer = self.client.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=MAX_MESSAGES,
                                                 WaitTimeSeconds=wait_s)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StoreError(f"SQS {self.queue_url}: receive failed: {exc}") from exc
        return [QueueMessage(m.get("Body", ""), m["ReceiptHandle"]) for m in answer.get("Messages", [])]

    def delete(self, messages: list[QueueMessage]) -> None:
        if not messages:
            return
        entries = [{"Id": str(n), "ReceiptHandle": m.receipt} for n, m in enumerate(messages)]
        try:
            self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StoreError(f"SQS {self.queue_url}: delete failed: {exc}") from exc

    def close(self) -> None:
        self.client.close()
