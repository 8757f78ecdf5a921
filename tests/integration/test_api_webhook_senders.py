"""The webhook sender against receivers that misbehave, each a real TCP server on a free port: one
that never answers, one that trickles its answer a byte at a time (a timeout per read would never
fire), one that answers with a gigabyte. Each attempt ends at its one deadline, reads at most
``RESPONSE_BYTES`` of an answer, and a slow receiver holds one sender, never the others. The asserts
bound what the sender took from each receiver and the order of events, not the wall time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from processor.api.webhooks import ATTEMPTS, RESPONSE_BYTES, WebhookDispatcher
from processor.config import load_settings
from processor.pipeline.render import EngineRegistry
from processor.pipeline.toon import ToonEngine
from processor.queue.protocol import BucketQueue
from processor.queue.submit import Submission
from processor.queue.webhook_records import WebhookDelivery
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.api_service import WEBHOOK_SECRET
from testkit.images import photo_bytes

#: Seconds between two bytes of the trickling receiver.
TRICKLE_S = 0.05
#: Bytes of the huge receiver's answer body.
HUGE_BYTES = 1024 ** 3
MIB = 1024 * 1024
#: Seconds an attempt may take in these tests.
DEADLINE_S = 0.5


class Receiver:
    """A TCP server on a free port: reads each request's head and body, then ``behave(conn, self,
    index)`` (``index``: the connection's, for ``count``)."""

    def __init__(self, behave: Callable[[socket.socket, Receiver, int], None]) -> None:
        self.behave = behave
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.connections = 0
        self.open = 0
        #: Bytes of answer sent on each connection.
        self.sent: list[int] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            self.open += 1
            self.sent.append(0)
            index = len(self.sent) - 1
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += conn.recv(65536)
            self.behave(conn, self, index)
        except OSError:
            pass  # the sender hung up: what the test wants to see
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    def count(self, index: int, size: int) -> None:
        with self.lock:
            self.sent[index] += size

    def close(self) -> None:
        self.stopped.set()
        self.server.close()


def silent(conn: socket.socket, receiver: Receiver, index: int) -> None:
    """Never answers; holds the connection until the sender closes it."""
    while conn.recv(65536):
        pass


def trickle(conn: socket.socket, receiver: Receiver, index: int) -> None:
    """A status line and headers one byte at a time, forever."""
    answer = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 10_000_000
    for i in range(len(answer)):
        conn.sendall(answer[i:i + 1])
        receiver.count(index, 1)
        time.sleep(TRICKLE_S)


def huge(conn: socket.socket, receiver: Receiver, index: int) -> None:
    """200, with a body of ``HUGE_BYTES``, sent as fast as the sender takes it."""
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE_BYTES}\r\n\r\n".encode())
    block = bytes(64 * 1024)
    for _ in range(HUGE_BYTES // len(block)):
        conn.sendall(block)
        receiver.count(index, len(block))


def fast(conn: socket.socket, receiver: Receiver, index: int) -> None:
    conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {name: Receiver(behave) for name, behave in
            (("silent", silent), ("trickle", trickle), ("huge", huge), ("fast", fast))}
    yield made
    for r in made.values():
        r.close()


def dispatcher(queue: Any = None, **kwargs: Any) -> WebhookDispatcher:
    return WebhookDispatcher(queue, lambda state: {"id": state.id}, WEBHOOK_SECRET, replica="r1",
                             allow=["127.0.0.1"], sleep=lambda s: None, attempt_deadline_s=DEADLINE_S, **kwargs)


def test_each_attempt_has_one_deadline_and_reads_a_few_kib(receivers: dict[str, Receiver]) -> None:
    sender = dispatcher()
    state = SimpleNamespace(id="job-1", etag="e1")
    outcomes = {name: sender.send(WebhookDelivery("job-1", r.url), state)  # type: ignore[arg-type]
                for name, r in receivers.items()}
    # A gigabyte answered: delivered, after reading a few KiB of it (and what the sockets buffered).
    assert outcomes["huge"].delivered and outcomes["huge"].status == 200
    assert receivers["huge"].sent[0] < 16 * MIB, receivers["huge"].sent
    assert outcomes["fast"].delivered and outcomes["fast"].attempts == 1
    # No answer, or one a byte at a time: every attempt cut at its deadline, then the next.
    for name in ("silent", "trickle"):
        outcome, receiver = outcomes[name], receivers[name]
        assert not outcome.delivered and outcome.attempts == ATTEMPTS, outcome
        assert f"within {DEADLINE_S:g} s" in (outcome.error or ""), outcome
        assert receiver.connections == ATTEMPTS
    # A trickle gets no more than a deadline's worth of bytes out of any attempt.
    assert max(receivers["trickle"].sent) <= DEADLINE_S / TRICKLE_S + 5, receivers["trickle"].sent
    assert RESPONSE_BYTES <= 64 * 1024


def test_slow_receivers_hold_one_sender_each_never_the_others(tmp_path, receivers: dict[str, Receiver]) -> None:
    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                             styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                             run={"styles": ["toon"]}, pipeline={"contact_sheet_height": 32})
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    # The slow receivers' jobs first: their deliveries start first and take two of three senders.
    urls = [receivers["silent"].url, receivers["trickle"].url] + [receivers["fast"].url] * 3
    jobs = [queue.submit(Submission(photo_bytes(64, 64, seed=i), "JPEG", webhook=url))[0] for i, url in enumerate(urls)]
    worker = Worker(store, settings, EngineRegistry(settings.styles, lambda n, s: ToonEngine(n, s)), worker_id="w1")
    worker.setup()
    assert worker.run_once() == 0
    sender = WebhookDispatcher(queue, lambda state: {"id": state.id}, WEBHOOK_SECRET, replica="r1",
                               allow=["127.0.0.1"], poll_s=0.05, attempt_deadline_s=30, senders=3)
    sender.start()
    try:
        deadline = time.monotonic() + 60  # a hang guard: this takes well under a second
        while any(queue.webhooks.outcome(job) is None for job in jobs[2:]):
            assert time.monotonic() < deadline, "the fast receivers were never sent to"
            time.sleep(0.05)
        # Every fast delivery is done while both slow receivers still hold their first attempt.
        assert receivers["fast"].connections == 3
        for name in ("silent", "trickle"):
            assert (receivers[name].connections, receivers[name].open) == (1, 1), name
        assert all(queue.webhooks.outcome(job)["delivered"] for job in jobs[2:])
    finally:
        sender.close()
    assert all(queue.webhooks.outcome(job) is None for job in jobs[:2])  # cut short: still pending
    assert {d.job for d in queue.webhooks.pending()} == set(jobs[:2])
