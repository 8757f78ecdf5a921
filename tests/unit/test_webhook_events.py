"""Webhook signatures verify with the reference ``standardwebhooks`` library for every secret the
project accepts, and a webhook is sent only for the events its submit chose."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from processor.api.problems import Problem
from processor.api.validate import build_submission
from processor.api.webhooks import WebhookDispatcher, read_secret, sign
from processor.config import load_settings
from processor.queue.protocol import BucketQueue
from processor.queue.webhook_records import ALL_EVENTS, WebhookDelivery, WebhookEvent
from processor.store.local import LocalStore
from testkit.images import photo_bytes

#: The secret formats ``api.webhook_secret_env`` accepts, and what a receiver hands the library.
SECRETS = {
    "whsec": ("whsec_" + base64.b64encode(b"a secret of 24 bytes!!!!").decode(), None),
    "raw": ("a plain passphrase, any string", b"a plain passphrase, any string"),
}
HOOK = "https://hooks.example.com/toys"
#: How a problem about webhook_events lists the known events.
KNOWN = "job.done, job.failed, job.cancelled"


def receiver_key(secret: str, raw: bytes | None) -> str | bytes:
    """The library takes a ``whsec_`` secret as the string and any other secret as its bytes."""
    return raw if raw is not None else secret


@pytest.mark.parametrize("kind", SECRETS)
def test_signatures_verify_with_the_reference_library(kind: str) -> None:
    secret, raw = SECRETS[kind]
    assert read_secret("HOOK_SECRET", {"HOOK_SECRET": secret}) == secret
    body = b'{"id":"job-1","status":"done"}'
    stamp = int(time.time())
    headers = {"webhook-id": "job-1.etag", "webhook-timestamp": str(stamp),
               "webhook-signature": sign(secret, "job-1.etag", stamp, body)}
    assert Webhook(receiver_key(secret, raw)).verify(body, headers) == {"id": "job-1", "status": "done"}
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver_key(secret, raw)).verify(body.replace(b"done", b"fail"), headers)
    with pytest.raises(WebhookVerificationError):  # another secret
        Webhook(b"someone else's secret").verify(body, headers)


@pytest.mark.parametrize("kind", SECRETS)
def test_a_delivery_as_sent_verifies_with_the_reference_library(kind: str) -> None:
    """The dispatcher's own request (headers and body as they leave it) through ``Webhook.verify``."""
    secret, raw = SECRETS[kind]
    sent: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204, stream=httpx.ByteStream(b""))  # read as a stream, as a receiver answers

    class State:
        id, etag = "job-7", "etag-7"

    dispatcher = WebhookDispatcher(None, lambda state: {"id": state.id, "status": "done"}, secret,  # type: ignore[arg-type]
                                   replica="r1", allow=["hooks.example.com"], resolve=lambda host: ["93.184.216.34"],
                                   transport=httpx.MockTransport(receive), sleep=lambda s: None)
    try:
        outcome = dispatcher.send(WebhookDelivery("job-7", HOOK), State())  # type: ignore[arg-type]
    finally:
        dispatcher.close()
    assert outcome.delivered and len(sent) == 1
    request = sent[0]
    payload = Webhook(receiver_key(secret, raw)).verify(request.content, dict(request.headers))
    assert payload == {"id": "job-7", "status": "done"} and request.headers["webhook-id"] == "job-7.etag-7"


def test_a_whsec_secret_that_is_not_base64_is_refused_at_start() -> None:
    with pytest.raises(Problem) as caught:
        read_secret("HOOK_SECRET", {"HOOK_SECRET": "whsec_not base64!"})
    assert "HOOK_SECRET" in caught.value.detail


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                         run={"styles": ["toon"]}, api={"webhook_allow": ["hooks.example.com"]})


def submission(settings, **fields):
    return build_submission(photo_bytes(80, 60), {"webhook": HOOK, **fields}, settings, limit=1_000_000,
                            resolve=lambda host: ["93.184.216.34"])


@pytest.mark.parametrize(("given", "chosen"), [
    (None, ALL_EVENTS),
    (["job.failed"], {WebhookEvent.failed}),
    ("job.done, job.cancelled", {WebhookEvent.done, WebhookEvent.cancelled}),
    (["job.done", "job.done"], {WebhookEvent.done}),
])
def test_webhook_events_are_read_from_a_list_or_a_form_field(settings, given, chosen) -> None:
    fields = {} if given is None else {"webhook_events": given}
    assert submission(settings, **fields).webhook_events == chosen


@pytest.mark.parametrize(("fields", "detail", "hint"), [
    ({"webhook_events": ["job.started"]}, "unknown webhook event(s): job.started", KNOWN),
    ({"webhook_events": []}, "names no event", KNOWN),
    ({"webhook_events": [3]}, "must be a list", KNOWN),
    ({"webhook": None, "webhook_events": ["job.done"]}, "without a webhook", "Send the webhook URL"),
])
def test_bad_webhook_events_are_a_problem_naming_the_field(settings, fields, detail, hint) -> None:
    with pytest.raises(Problem) as caught:
        submission(settings, **fields)
    assert caught.value.status == 422 and caught.value.field == "webhook_events"
    assert detail in caught.value.detail and hint in (caught.value.hint or "")


def test_chosen_events_are_part_of_the_request_for_its_idempotency_key(settings) -> None:
    assert submission(settings).fingerprint() == submission(settings, webhook_events=["job.done", "job.failed",
                                                                                       "job.cancelled"]).fingerprint()
    assert submission(settings).fingerprint() != submission(settings, webhook_events=["job.done"]).fingerprint()


def test_a_webhook_is_sent_only_for_the_events_it_chose(settings) -> None:
    """A cancelled (queued) job: sent to the webhook that takes every event, recorded as skipped
    for the one that wants only job.done."""
    queue = BucketQueue.for_settings(LocalStore(settings.store.root), settings)
    every, _ = queue.submit(submission(settings))
    only_done, _ = queue.submit(submission(settings, webhook_events=["job.done"]))
    pending = {d.job: d for d in queue.webhooks.pending()}
    assert pending[every].events == ALL_EVENTS and pending[only_done].events == {WebhookEvent.done}
    for job in (every, only_done):
        assert queue.cancel(job).status.value == "cancelled"
    dispatcher = WebhookDispatcher(queue, lambda state: {"id": state.id}, "whsec_" + base64.b64encode(b"k").decode(),
                                   replica="r1", allow=["hooks.example.com"])
    due = dispatcher.claim_due()
    assert [(d.job, s.status.value) for d, s, _ in due] == [(every, "cancelled")]
    skipped = queue.webhooks.outcome(only_done)
    assert skipped is not None and skipped["delivered"] is False
    assert "job.cancelled is not among the webhook's events" in str(skipped["skipped"])
    assert [d.job for d in queue.webhooks.pending()] == [every]  # the skipped one is never sent


def test_a_pending_record_without_events_is_sent_for_every_end(settings) -> None:
    """A record written without ``events`` (by hand, or by an older API) takes every event."""
    store = LocalStore(settings.store.root)
    queue = BucketQueue.for_settings(store, settings)
    store.put(queue.layout.webhooks_prefix + "pending/job-1.json", json.dumps({"url": HOOK}).encode())
    [delivery] = queue.webhooks.pending()
    assert delivery.events == ALL_EVENTS
