"""The ``sqs`` hint source: S3 event notifications read from an SQS queue. The chain runs on moto's
S3 and SQS (a bucket whose notification configuration sends ObjectCreated events for inputs/ to
a queue); the messages' shapes (S3, SNS, EventBridge) are checked one by one."""

from __future__ import annotations

import json
import time

import pytest

from processor.errors import StoreError
from processor.queue.hints.base import Wakeup
from processor.queue.hints.sqs import SqsNotifications
from processor.store.sqs import QueueMessage, SqsQueue

moto = pytest.importorskip("moto")

REGION = "us-east-1"
#: Seconds a test waits for a hint that must come.
HINT_DEADLINE_S = 20.0


def _s3_event(key: str, event: str = "ObjectCreated:Put", bucket: str = "toys") -> dict:
    return {"Records": [{"eventSource": "aws:s3", "eventName": event,
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 5}}}]}


@pytest.mark.parametrize(("message", "prefixes"), [
    (_s3_event("inputs/toy.jpg"), ["inputs/toy."]),
    (_s3_event("inputs/a+toy%C3%A9.jpg"), ["inputs/a toyé."]),  # S3 URL-encodes keys, spaces as '+'
    (_s3_event("inputs/toy.jpg", event="ObjectRemoved:Delete"), []),
    (_s3_event("outputs/toy/manifest.json"), []),
    (_s3_event("inputs/toy.jpg", bucket="someone-elses"), []),
    ({"Type": "Notification", "Message": json.dumps(_s3_event("inputs/sns.png"))}, ["inputs/sns."]),
    ({"detail-type": "Object Created", "source": "aws.s3",
      "detail": {"bucket": {"name": "toys"}, "object": {"key": "inputs/bridge toy.jpg"}}}, ["inputs/bridge toy."]),
    ({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "toys"}, []),
    ("not json at all", []),
    ({"Records": ["garbage", {"eventName": 7}]}, []),
])
def test_a_message_is_a_hint_about_the_inputs_it_created(message: object, prefixes: list[str]) -> None:
    body = message if isinstance(message, str) else json.dumps(message)
    source = SqsNotifications(_NoQueue(), "inputs/", bucket="toys")
    assert source.prefixes_of(body) == prefixes


class _NoQueue:
    def receive(self, wait_s: int) -> list[QueueMessage]:
        raise StoreError("the queue is down")

    def delete(self, messages: list[QueueMessage]) -> None:
        raise AssertionError("nothing to delete")

    def close(self) -> None:
        pass


def test_a_queue_that_fails_is_retried_with_a_pause_and_never_raises() -> None:
    calls: list[float] = []

    class Failing(_NoQueue):
        def receive(self, wait_s: int) -> list[QueueMessage]:
            calls.append(time.monotonic())
            raise StoreError("the queue is down")

    source = SqsNotifications(Failing(), "inputs/")
    source.start(Wakeup())
    time.sleep(1.5)
    source.close()
    assert 1 <= len(calls) <= 2  # the first try, then one after a one-second pause


def test_uploads_to_a_notifying_bucket_reach_the_worker_through_the_queue(monkeypatch) -> None:
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    with moto.mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        url = sqs.create_queue(QueueName="toy-uploads")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.create_bucket(Bucket="toys")
        s3.put_bucket_notification_configuration(Bucket="toys", NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
             "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "inputs/"}]}}}]})
        wakeup = Wakeup()
        source = SqsNotifications(SqsQueue(sqs, url), "inputs/", bucket="toys", wait_s=1)
        source.start(wakeup)
        try:
            s3.put_object(Bucket="toys", Key="outputs/not-an-input.png", Body=b"x")
            s3.put_object(Bucket="toys", Key="inputs/album/toy one.jpg", Body=b"photo")
            hint = wakeup.wait(HINT_DEADLINE_S)
        finally:
            source.close()
        assert hint is not None and hint.sources == {"sqs"} and hint.prefixes == {"inputs/album/toy one."}
        # Read messages are deleted: the queue is empty again.
        left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        assert left["Attributes"]["ApproximateNumberOfMessages"] == "0"
