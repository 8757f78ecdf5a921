"""Webhooks from real ``processor serve`` replicas to a local receiver: signed (Standard Webhooks,
verified here with the reference library), retried with back-off, sent exactly once with two
replicas on one bucket, and never to a host off the allow-list."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from testkit.api_service import WEBHOOK_SECRET, Service, serve, wait_status, worker, write_env
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S

#: Seconds to keep listening after the first delivery, for a second (duplicate) one to show up:
#: longer than the replicas' poll period (2 s) and one back-off.
QUIET_S = 5.0


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: the reference library's ``Webhook.verify`` (signature and timestamp)."""
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


class Receiver:
    """An HTTP server on a free port that records every request and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.script: list[int] = []  # statuses to answer, in order; then 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_path(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            return [r for r in self.requests if r[0] == path]

    def wait(self, path: str, count: int, timeout: float = HANG_GUARD_S) -> list[tuple[str, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.for_path(path)) < count:
            assert time.monotonic() < deadline, f"{path}: {len(self.for_path(path))} of {count} deliveries"
            time.sleep(0.1)
        return self.for_path(path)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp("api-webhooks")
    env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")})
    with serve(env, tmp) as one, serve(env, tmp) as two, worker(env, tmp):
        yield one, two


def test_a_finished_job_is_posted_once_signed_by_one_of_two_replicas(replicas, receiver: Receiver) -> None:
    one, _two = replicas
    with one.client() as client:
        job = client.post("/v1/jobs", files={"image": ("w.jpg", photo_bytes(120, 90))},
                          data={"webhook": receiver.url + "/once", "variants": "1"}).json()["id"]
        done = wait_status(client, job, {"done"})
    (delivery,) = receiver.wait("/once", 1)
    time.sleep(QUIET_S)
    assert len(receiver.for_path("/once")) == 1, "two replicas both sent the webhook"
    _, headers, body = delivery
    assert verify(WEBHOOK_SECRET, headers, body)
    assert not verify(WEBHOOK_SECRET, headers, body.replace(b"done", b"fail"))  # the signature covers the body
    assert headers["webhook-signature"].startswith("v1,") and headers["webhook-id"].startswith(job)
    sent = json.loads(body)
    assert sent["id"] == job and sent["status"] == "done" and len(sent["variants"]) == len(done["variants"]) == 1


def test_a_failing_receiver_gets_retries_with_the_same_id(replicas, receiver: Receiver) -> None:
    one, _ = replicas
    receiver.script[:] = [503, 500]
    with one.client() as client:
        job = client.post("/v1/jobs", files={"image": ("r.jpg", b"\x89PNG\r\n\x1a\n" + bytes(40))},
                          data={"webhook": receiver.url + "/retry"}).json()["id"]
        wait_status(client, job, {"failed"})
    attempts = receiver.wait("/retry", 3)
    assert len({h["webhook-id"] for _, h, _ in attempts}) == 1
    stamps = [int(h["webhook-timestamp"]) for _, h, _ in attempts]
    assert stamps[2] - stamps[0] >= 2  # back-off: 1 s, then 2 s (whole-second stamps)
    assert all(verify(WEBHOOK_SECRET, h, b) for _, h, b in attempts)
    assert json.loads(attempts[-1][2])["status"] == "failed"


def test_redirects_are_not_followed(replicas, receiver: Receiver) -> None:
    one, _ = replicas
    receiver.script[:] = [302]
    with one.client() as client:
        job = client.post("/v1/jobs", files={"image": ("d.jpg", photo_bytes(110, 90, seed=4))},
                          data={"webhook": receiver.url + "/redirect", "variants": "1"}).json()["id"]
        wait_status(client, job, {"done"})
    receiver.wait("/redirect", 1)
    time.sleep(QUIET_S)
    assert len(receiver.for_path("/redirect")) == 1  # a 3xx ends the delivery: no retry, no redirect


def test_hosts_off_the_allow_list_and_private_addresses_are_refused_at_submit(replicas) -> None:
    one, _ = replicas
    with one.client() as client:
        for url in ("http://localhost:9/x", "http://10.1.2.3/x", "https://example.org/x"):
            resp = client.post("/v1/jobs", files={"image": ("x.jpg", photo_bytes(100, 80))}, data={"webhook": url})
            assert resp.status_code == 422 and resp.json()["field"] == "webhook", resp.text


# --------------------------------------------------------------------------- DNS pinning


def test_a_delivery_connects_to_the_address_it_vetted_not_a_second_lookup(receiver: Receiver) -> None:
    """DNS rebinding: the name is resolved once, checked, and the request goes to that address
    with the name in ``Host``. ``hooks.invalid`` cannot resolve through the system resolver
    (RFC 6761), so a request that reached the receiver went to the vetted address."""
    from types import SimpleNamespace

    from processor.api.webhooks import WebhookDispatcher
    from processor.queue.webhook_records import WebhookDelivery

    port = receiver.url.rsplit(":", 1)[1]
    answers: list[str] = []

    def resolve(host: str) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"]

    dispatcher = WebhookDispatcher(None, lambda state: {"id": state.id}, WEBHOOK_SECRET,  # type: ignore[arg-type]
                                   replica="r1", allow=["hooks.invalid"], resolve=resolve, sleep=lambda s: None)
    try:
        outcome = dispatcher.send(WebhookDelivery("job-1", f"http://hooks.invalid:{port}/pinned"),
                                  SimpleNamespace(id="job-1", etag="e1"))  # type: ignore[arg-type]
    finally:
        dispatcher.close()
    assert outcome.delivered, outcome
    assert answers == ["hooks.invalid"]
    [(_, headers, _)] = receiver.for_path("/pinned")
    assert headers["host"] == f"hooks.invalid:{port}"


def test_a_pinned_https_request_keeps_the_name_for_tls() -> None:
    from processor.api.validate import WebhookTarget

    url, headers, extensions = WebhookTarget("https://hooks.example.com/x?y=1", ("2001:db8::1",)).pinned()
    assert url == "https://[2001:db8::1]/x?y=1"
    assert headers == {"host": "hooks.example.com"} and extensions == {"sni_hostname": "hooks.example.com"}
    url, headers, extensions = WebhookTarget("http://hooks.example.com:8080/x", ("203.0.113.5",)).pinned()
    assert url == "http://203.0.113.5:8080/x" and headers == {"host": "hooks.example.com:8080"} and not extensions
