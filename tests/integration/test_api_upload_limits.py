"""A 1 GiB upload to a real ``processor serve`` is refused (413) once it passes api.max_upload_bytes,
while it streams, without the server's memory growing: the body is a generator sent chunked (no
Content-Length the server could check first), and the server's RSS is read from /proc."""

from __future__ import annotations

import json
import select
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from testkit.api_service import TOKEN, Service, rss_bytes, serve, write_env
from testkit.waits import REQUEST_GUARD_S

GIB = 1024 ** 3
CHUNK = 1024 * 1024
#: The cap of this server (api.max_upload_bytes).
LIMIT = 4_000_000
#: Bytes the server's RSS may grow by over all uploads: far below one upload (1 GiB), and below
#: what even one capped photo and its spool could hold twice.
MAX_RSS_GROWTH = 48 * 1024 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("api-limits")
    env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")},
                    max_upload=LIMIT)
    with serve(env, tmp) as api:
        yield api


def stream_request(url: str, path: str, content_type: str, body: Iterator[bytes],
                   extra_headers: str = "") -> tuple[int, dict, int]:
    """POST ``body`` chunked over a raw socket, stopping as soon as the server answers: (status, the
    JSON body, bytes of body sent)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=REQUEST_GUARD_S)
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n{extra_headers}\r\n")
    sock.sendall(head.encode())
    sent = 0
    with sock:
        for chunk in body:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server answered: stop sending, as a client reading its response does
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = b""
        while b"\r\n\r\n" not in response or len(response) < _expected_length(response):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    head_bytes, _, payload = response.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return status, json.loads(payload[:_expected_length(response) - len(head_bytes) - 4]), sent


def _expected_length(response: bytes) -> int:
    head, sep, _ = response.partition(b"\r\n\r\n")
    if not sep:
        return 1 << 62
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value.strip())
    return 1 << 62


def multipart_gib(boundary: str) -> Iterator[bytes]:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"huge.png\"\r\n"
           "Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n"
    zeros = bytes(CHUNK)
    for _ in range(GIB // CHUNK):
        yield zeros
    yield f"\r\n--{boundary}--\r\n".encode()


def json_gib() -> Iterator[bytes]:
    yield b'{"image": "iVBORw0KGgo'
    letters = b"A" * CHUNK
    for _ in range(GIB // CHUNK):
        yield letters
    yield b'"}'


def test_a_gib_upload_is_refused_while_it_streams_without_memory_growth(service: Service) -> None:
    before = rss_bytes(service.proc.pid)
    boundary = uuid.uuid4().hex
    status, problem, sent = stream_request(service.url, "/v1/jobs", f"multipart/form-data; boundary={boundary}",
                                           multipart_gib(boundary))
    assert status == 413 and problem["field"] == "image" and "api.max_upload_bytes" in problem["detail"], problem
    assert sent < 64 * CHUNK, f"the server read {sent:,} bytes of a 1 GiB upload before refusing it"
    status, problem, sent = stream_request(service.url, "/v1/jobs", "application/json", json_gib())
    assert status == 413 and problem["field"] == "image", problem
    assert sent < 64 * CHUNK
    grown = rss_bytes(service.proc.pid) - before
    assert grown < MAX_RSS_GROWTH, f"the server's RSS grew by {grown:,} bytes"
    # Nothing was written for either upload.
    inputs = Path(service.env["PROCESSOR_STORE__ROOT"]) / "inputs"
    assert not inputs.exists() or not [p for p in inputs.rglob("*") if p.is_file()]


def test_a_declared_gib_is_refused_before_its_body_is_read(service: Service) -> None:
    parts = urlsplit(service.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=REQUEST_GUARD_S) as sock:
        sock.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {GIB}\r\n\r\n").encode())
        response = b""
        while len(response) < _expected_length(response):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"api.max_upload_bytes" in response
