"""The front door before any route: how a server is opened, who may knock how often, and how long.

- An unconfigured ``processor serve`` makes an admin token and prints the URL that carries it;
  opening that URL logs a browser in (a real server). Only that token may ride in a URL.
- ``api.open`` serves without tokens, for this machine's host names only, and no other site's
  Origin (a real server): what stops web pages and DNS rebinding.
- Wrong tokens are rate-limited per address, in bounded memory; the login form reads at most a
  few KiB of one encoding.
- ``/readyz`` fails while the bucket takes no writes (a full disk), probing at most every
  ``READY_WRITE_EVERY_S``.
- Slow clients: headers sent a byte at a time are cut at ``api.header_timeout_s`` (a real server);
  a body that pauses is answered 408.
- Bodies: a JSON body is parsed with a value and depth limit; the budget must hold one request.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.api.auth import COOKIE
from processor.api.guard import AUTH_FAILURE_BURST, AuthFailures
from processor.api.limits import BodyBudget, BodyLimits
from processor.api.problems import Problem
from processor.api.readiness import READY_WRITE_EVERY_S
from processor.api.upload import MAX_JSON_DEPTH, MAX_JSON_VALUES, parse_json_object
from processor.config import Settings, load_settings
from processor.errors import ConfigError
from processor.store.local import LocalStore
from testkit.api_service import TOKEN, serve, write_env
from testkit.images import photo_bytes

#: Seconds the real servers here give a client to send its headers.
HEADER_TIMEOUT_S = 1.0


@pytest.fixture
def settings(tmp_path) -> Settings:
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 1}}, run={"styles": ["toon"]})


def local_env(tmp: Path, **kwargs: Any) -> dict[str, str]:
    return write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")}, **kwargs)


# --------------------------------------------------------------------------- opening a server


def test_an_unconfigured_serve_makes_a_token_and_its_url_logs_a_browser_in(tmp_path) -> None:
    with serve(local_env(tmp_path, keys=""), tmp_path) as service:
        printed = re.search(r"open (http://\S+)", service.log.read_text()).group(1)
        token = re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=([\w-]+)", printed).group(1)
        assert len(token) >= 40
        assert token not in "".join(line for line in service.log.read_text().splitlines() if line.startswith("{"))
        with httpx.Client(base_url=service.url, timeout=30) as browser:
            assert browser.get("/v1/jobs").status_code == 401  # not open
            assert browser.get("/?token=wrong", follow_redirects=False).headers["location"].startswith("/login")
            entered = browser.get(urlsplit(printed)._replace(netloc=urlsplit(service.url).netloc).geturl(),
                                  follow_redirects=False)
            assert entered.status_code == 303 and entered.headers["location"] == "/"  # the token leaves the URL
            assert f"{COOKIE}={token}" in entered.headers["set-cookie"] and "HttpOnly" in entered.headers["set-cookie"]
            assert entered.headers["referrer-policy"] == "no-referrer"
            assert browser.get("/v1/jobs").status_code == 200  # the cookie now
            resp = browser.post("/v1/jobs", files={"image": ("t.jpg", photo_bytes(80, 60))},
                                headers={"Origin": service.url})
            assert resp.status_code == 202, resp.text
        with httpx.Client(base_url=service.url, timeout=30) as script:
            assert script.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_only_the_generated_token_may_ride_in_a_url(settings: Settings, tmp_path) -> None:
    c = TestClient(create_app(settings, LocalStore(tmp_path / "bucket"), keys=["alice:a-token"]))
    resp = c.get("/browse?token=a-token", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/login")
    assert COOKIE not in resp.headers.get("set-cookie", "")


def test_an_open_server_answers_its_own_host_names_and_origin_only(tmp_path) -> None:
    env = local_env(tmp_path, keys="", api={"open": True, "allowed_hosts": ["toys.lan"]})
    with serve(env, tmp_path) as service:
        port = urlsplit(service.url).port
        with httpx.Client(base_url=service.url, timeout=30) as c:
            assert c.get("/v1/jobs").status_code == 200  # no token
            assert c.get("/v1/jobs", headers={"Host": f"localhost:{port}"}).status_code == 200
            assert c.get("/v1/jobs", headers={"Host": f"toys.lan:{port}"}).status_code == 200
            # DNS rebinding: another name that resolves here. Its answers are not this page's to read.
            rebound = c.get("/v1/jobs", headers={"Host": f"evil.example:{port}"})
            assert rebound.status_code == 421 and rebound.json()["field"] == "Host"
            assert c.get("/healthz", headers={"Host": f"10.1.2.3:{port}"}).status_code == 200  # a kubelet's probe
            photo = {"image": ("t.jpg", photo_bytes(80, 60))}
            for origin in ("http://evil.example", f"http://localhost:{port + 1}", "null"):
                refused = c.post("/v1/jobs", files=photo, headers={"Origin": origin})
                assert refused.status_code == 403 and refused.json()["field"] == "Origin", origin
            assert c.post("/v1/jobs", files=photo, headers={"Origin": service.url}).status_code == 202
            assert c.post("/v1/jobs", files=photo).status_code == 202  # curl and scripts send no Origin


# --------------------------------------------------------------------------- who knocks how often


def test_wrong_tokens_are_rate_limited_per_address(settings: Settings, tmp_path) -> None:
    c = TestClient(create_app(settings, LocalStore(tmp_path / "bucket"), keys=["alice:a-token"]))
    for _ in range(AUTH_FAILURE_BURST):
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer guess"}).status_code == 401
    blocked = c.get("/v1/jobs", headers={"Authorization": "Bearer a-token"})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1  # even the right one now
    login = c.post("/login", data={"token": "a-token"}, headers={"Origin": "http://testserver"})
    assert login.status_code == 429 and login.headers["retry-after"].isdigit()
    assert c.get("/v1/jobs").status_code == 401  # no token sent: not a guess, still a 401


def test_the_failure_count_forgets_and_stays_bounded() -> None:
    now = [0.0]
    failures = AuthFailures(burst=2, refill_s=10, max_addresses=100, clock=lambda: now[0])
    failures.failed("a")
    failures.failed("a")
    assert failures.retry_after("a") == 10 and failures.retry_after("b") is None
    now[0] += 10
    assert failures.retry_after("a") is None  # one try earned back
    for i in range(10_000):
        failures.failed(f"10.0.{i // 256}.{i % 256}")
    assert failures.tracked() == 100


def test_the_login_form_reads_a_few_kib_of_one_encoding(settings: Settings, tmp_path) -> None:
    c = TestClient(create_app(settings, LocalStore(tmp_path / "bucket"), keys=["alice:a-token"]))
    origin = {"Origin": "http://testserver"}
    big = c.post("/login", data={"token": "x" * 10_000}, headers=origin)
    assert big.status_code == 413
    form = c.post("/login", files={"token": ("t", b"a-token")}, headers=origin)
    assert form.status_code == 415 and form.json()["field"] == "Content-Type"
    assert c.post("/login", data={"token": "a-token"}, headers=origin, follow_redirects=False).status_code == 303


# --------------------------------------------------------------------------- readiness


class FullDisk(LocalStore):
    """The local store on a disk that fills up: writes fail as the OS fails them (ENOSPC)."""

    full = False
    writes = 0

    def _write_temp(self, body: bytes, **kwargs: Any) -> Any:
        self.writes += 1
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super()._write_temp(body, **kwargs)


def test_readyz_fails_while_the_bucket_takes_no_writes(settings: Settings, tmp_path) -> None:
    now = [0.0]
    store = FullDisk(tmp_path / "bucket")
    c = TestClient(create_app(settings, store, keys=["a"], clock=lambda: now[0]))
    assert c.get("/readyz").status_code == 200
    store.full = True
    assert c.get("/readyz").status_code == 200  # the last probe's answer, for READY_WRITE_EVERY_S
    now[0] += READY_WRITE_EVERY_S
    refused = c.get("/readyz")
    assert refused.status_code == 503 and "No space left" in refused.json()["detail"], refused.text
    for _ in range(20):  # a probe every request: still one write per period
        assert c.get("/readyz").status_code == 503
    assert store.writes == 2
    store.full = False
    now[0] += READY_WRITE_EVERY_S
    assert c.get("/readyz").status_code == 200 and c.get("/healthz").status_code == 200


# --------------------------------------------------------------------------- slow clients


def test_headers_sent_a_byte_at_a_time_are_cut_at_the_header_timeout(tmp_path) -> None:
    with serve(local_env(tmp_path, api={"header_timeout_s": HEADER_TIMEOUT_S}), tmp_path) as service:
        parts = urlsplit(service.url)
        trickle = 0.1
        sent = 0
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            head = f"GET /v1/jobs HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Slow: " + "a" * 1000
            try:
                for ch in head:
                    sock.sendall(ch.encode())
                    sent += 1
                    time.sleep(trickle)
                closed = False
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if not closed:
                closed = sock.recv(1024) == b""
        assert closed
        # Closed after about HEADER_TIMEOUT_S of trickling: far fewer bytes than the headers had.
        assert sent < 3 * HEADER_TIMEOUT_S / trickle + 10, sent
        # A prompt client on the same server is served as ever.
        with service.client(TOKEN) as c:
            assert c.get("/v1/jobs").status_code == 200


def test_a_body_that_pauses_is_answered_408() -> None:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

    from processor.api.app import add_problem_handlers

    async def upload(request: Request) -> Response:
        async for _ in request.stream():
            pass
        return Response(status_code=204)

    app = FastAPI()
    app.add_route("/", upload, methods=["POST"])
    add_problem_handlers(app)
    guarded = BodyLimits(app, BodyBudget(1 << 20), idle_timeout_s=0.2)
    sent: list[dict] = []

    async def first_chunk_then_nothing() -> dict:
        if not sent and not hasattr(first_chunk_then_nothing, "done"):
            first_chunk_then_nothing.done = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b"x" * 100, "more_body": True}
        await asyncio.sleep(3600)  # the client stopped sending
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b"", "root_path": "",
             "scheme": "http", "server": ("x", 80), "client": ("c", 1), "http_version": "1.1"}
    asyncio.run(asyncio.wait_for(guarded(scope, first_chunk_then_nothing, send), timeout=30))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408


# --------------------------------------------------------------------------- bodies


def test_json_bodies_are_parsed_with_limits() -> None:
    assert parse_json_object(b'{"image": "aGk=", "styles": ["a", "b"], "seed": 3}', hint="h")["seed"] == 3
    for body, said in [(b"[" + b"{}," * 100_000 + b"{}]", f"more than {MAX_JSON_VALUES} values"),
                       (b'{"styles": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
                        f"deeper than {MAX_JSON_DEPTH}"),
                       (b'{"styles": [' + b'"s",' * MAX_JSON_VALUES + b'"s"]}', "values"),
                       (b'"just a string"', "must be an object"), (b"{", "not valid JSON"),
                       (b'{"seed": ' + b"9" * 5000 + b"}", "not valid JSON"), (b"\xff\xfe{", "not valid JSON")]:
        with pytest.raises(Problem) as err:
            parse_json_object(body, hint="h")
        assert err.value.status == 422 and said in err.value.detail, (body[:40], err.value.detail)


def test_a_budget_smaller_than_one_request_is_a_config_error(tmp_path) -> None:
    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                             api={"body_budget_bytes": 10 * 1024 * 1024})
    with pytest.raises(ConfigError, match=r"api\.body_budget_bytes"):
        create_app(settings, LocalStore(tmp_path / "bucket"), keys=["a"])


def test_the_budget_is_given_back_after_each_request(settings: Settings, tmp_path) -> None:
    app = create_app(settings, LocalStore(tmp_path / "bucket"), keys=["alice:a-token"])
    c = TestClient(app, headers={"Authorization": "Bearer a-token"})
    for _ in range(3):
        assert c.post("/v1/jobs", files={"image": ("t.jpg", photo_bytes(80, 60))}).status_code == 202
        assert c.post("/v1/jobs", json={"image": "!!"}).status_code == 422
    assert app.state.context.budget.used == 0


def test_the_budget_refuses_what_does_not_fit(settings: Settings) -> None:
    budget = BodyBudget(100)
    assert budget.take(60) and not budget.take(41) and budget.take(40)
    budget.give(100)
    assert budget.used == 0
