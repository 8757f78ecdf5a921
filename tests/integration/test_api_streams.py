"""Event streams on a real ``processor serve``: capped per client and in total (429 with Retry-After
past either cap), given back when a client goes, ended by their lifetime; with the most streams
open, health and job reads still answer. No worker runs, so every job stays queued and every
stream stays open until the test closes it. Asserts on completion, under a hang guard."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, closing

import httpx
import pytest

from testkit.api_service import OTHER_TOKEN, TOKEN, Service, serve, write_env
from testkit.images import photo_bytes

THIRD = "carol-token"
#: The caps of the test server.
PER_CLIENT, TOTAL = 2, 4
#: Seconds any one answer may take before the test calls the server hung (it should take far less):
#: the timeout of every test client (``Service.client``).
HANG_GUARD_S = 30.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("api-streams")
    env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")},
                    keys=f"tester:{TOKEN}:admin,{OTHER_TOKEN},carol:{THIRD}",
                    api={"max_streams": TOTAL, "max_streams_per_client": PER_CLIENT, "stream_max_s": 120})
    with serve(env, tmp) as api:
        yield api


def submit(service: Service, token: str) -> str:
    with service.client(token) as c:
        resp = c.post("/v1/jobs", files={"image": ("t.jpg", photo_bytes(90, 70))})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def open_stream(stack: ExitStack, service: Service, token: str, job: str) -> httpx.Response:
    """A stream of ``job``'s events, held open in ``stack``; its first event read when it is 200."""
    client = stack.enter_context(service.client(token))
    resp = stack.enter_context(client.stream("GET", f"/v1/jobs/{job}/events"))
    if resp.status_code == 200:
        # Kept until the stack closes: a line iterator dropped half-read closes its connection.
        lines = stack.enter_context(closing(resp.iter_lines()))
        assert next(lines) == "event: status"
    else:
        resp.read()
    return resp


def test_streams_are_capped_per_client_and_in_total_while_reads_stay_answered(service: Service) -> None:
    mine, theirs, carols = submit(service, TOKEN), submit(service, OTHER_TOKEN), submit(service, THIRD)
    with ExitStack() as stack:
        held = [open_stream(stack, service, TOKEN, mine) for _ in range(PER_CLIENT)]
        assert [r.status_code for r in held] == [200] * PER_CLIENT
        over = open_stream(stack, service, TOKEN, mine)
        assert over.status_code == 429 and over.headers["retry-after"].isdigit()
        assert "api.max_streams_per_client" in over.json()["detail"]
        held += [open_stream(stack, service, OTHER_TOKEN, theirs) for _ in range(TOTAL - PER_CLIENT)]
        assert [r.status_code for r in held] == [200] * TOTAL
        full = open_stream(stack, service, THIRD, carols)
        assert full.status_code == 429 and "api.max_streams" in full.json()["detail"]
        # The most streams open: health and a job read still answer, within the hang guard.
        with service.client(TOKEN) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get(f"/v1/jobs/{mine}").json()["status"] == "queued"
            assert c.get("/readyz").status_code == 200
        with service.client(THIRD) as c:
            assert c.get(f"/v1/jobs/{carols}").status_code == 200
    # Every client went away: their slots come back as the server notices (at its next poll).
    deadline = time.monotonic() + HANG_GUARD_S
    with ExitStack() as stack:
        for _ in range(PER_CLIENT):
            while (resp := open_stream(stack, service, THIRD, carols)).status_code == 429:
                assert time.monotonic() < deadline, "the closed streams' slots never came back"
                time.sleep(0.1)
            assert resp.status_code == 200


def test_a_stream_ends_at_its_lifetime_with_an_expired_event(tmp_path) -> None:
    env = write_env(tmp_path, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp_path / "bucket")},
                    api={"stream_max_s": 1})
    with serve(env, tmp_path) as service:
        job = submit(service, TOKEN)
        with service.client(TOKEN) as c, c.stream("GET", f"/v1/jobs/{job}/events") as resp:
            kinds = [line.split(": ", 1)[1] for line in resp.iter_lines() if line.startswith("event: ")]
    assert kinds == ["status", "expired"], kinds
