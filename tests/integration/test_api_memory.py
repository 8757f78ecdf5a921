"""Peak memory and disk of a real ``processor serve`` under hostile requests, against the API pod's
memory limit (``deploy/overlays/api/deployment.yaml``).

One server with the default upload cap (``pipeline.decode.max_bytes``, 50 MiB) and the default
body budget; each attack runs alone and its peak resident memory is the server's ``VmHWM``, reset
before it (``tests.api_attacks``). The spool folder is the server's ``TMPDIR``. The asserts bound
the work each attack gets out of the server (bytes it accepts, memory, disk), never the wall time.

    python -m tests.integration.test_api_memory      # prints the table in docs/security.md
"""

from __future__ import annotations

import base64
import json
import re
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.api_service import TOKEN, serve, write_env
from tests.api_attacks import (
    JPEG_START,
    MIB,
    Answer,
    Cost,
    concurrently,
    measure,
    multipart,
    multipart_length,
    post,
    repeat,
)

REPO = Path(__file__).resolve().parents[2]
#: The upload cap of the server under test: the default, pipeline.decode.max_bytes.
UPLOAD_LIMIT = 50 * MIB
#: Bytes of the JSON attack: empty objects, which json.loads turns into 25 times their size.
EMPTY_OBJECTS_BYTES = 20_000_000
#: Bytes of the file part posted to the unauthenticated login form.
LOGIN_PART_BYTES = 300 * MIB
#: Bytes after a form's closing boundary, which a multipart parser reads and ignores.
EPILOGUE_BYTES = 256 * MIB
#: Uploads sent at once, and the size of each photo in them (just under the cap).
CONCURRENT = 6
PHOTO_BYTES = 40 * MIB
#: The peak may use at most this share of the pod's memory limit (the rest is the margin).
POD_SHARE = 0.75


def pod_memory_limit() -> int:
    """Bytes: the API container's memory limit in the deploy overlay."""
    text = (REPO / "deploy/overlays/api/deployment.yaml").read_text()
    limits = text[text.index("limits:"):]
    value, unit = re.search(r"memory:\s*(\d+)(Mi|Gi)", limits).groups()
    return int(value) * (MIB if unit == "Mi" else 1024 * MIB)


def attacks(url: str) -> dict[str, Callable[[], list[Answer]]]:
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def empty_objects() -> list[Answer]:
        count = (EMPTY_OBJECTS_BYTES - 2) // 3
        body = b"[" + b"{}," * count + b"{}]"
        answer = post(url, "/v1/jobs", auth | {"Content-Type": "application/json"},
                      iter([body[i:i + MIB] for i in range(0, len(body), MIB)]), length=len(body))
        return [answer]

    def login_part() -> list[Answer]:
        boundary = uuid.uuid4().hex
        answer = post(url, "/login", {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                      "Origin": url},
                      multipart(boundary, "token", b"x", LOGIN_PART_BYTES),
                      length=multipart_length(boundary, "token", b"x", LOGIN_PART_BYTES))
        return [answer]

    def epilogue() -> list[Answer]:
        boundary = uuid.uuid4().hex
        answer = post(url, "/v1/jobs", auth | {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                      multipart(boundary, "image", JPEG_START, 64 * 1024, epilogue=EPILOGUE_BYTES))
        return [answer]

    def json_photos() -> list[Answer]:
        head = base64.b64encode(JPEG_START + b"\x00")  # 12 bytes: whole base64 quanta
        quanta = (PHOTO_BYTES - 12) // 3

        def body() -> Iterator[bytes]:
            yield b'{"image": "' + head
            yield from repeat(b"AAAA", quanta * 4)
            yield b'"}'

        length = len(b'{"image": "' + head) + quanta * 4 + 2
        return concurrently(CONCURRENT, lambda _: post(url, "/v1/jobs", auth | {
            "Content-Type": "application/json"}, body(), length=length))

    def form_photos() -> list[Answer]:
        def one(_: int) -> Answer:
            boundary = uuid.uuid4().hex
            return post(url, "/v1/jobs", auth | {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                        multipart(boundary, "image", JPEG_START, PHOTO_BYTES),
                        length=multipart_length(boundary, "image", JPEG_START, PHOTO_BYTES))

        return concurrently(CONCURRENT, one)

    return {
        "JSON body of empty objects (20 MB)": empty_objects,
        "POST /login, one 300 MiB form part, no token": login_part,
        "chunked form, 256 MiB after its closing boundary": epilogue,
        f"{CONCURRENT} JSON uploads at once, 40 MiB photo each": json_photos,
        f"{CONCURRENT} form uploads at once, 40 MiB photo each": form_photos,
    }


@pytest.fixture(scope="module")
def costs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cost]:
    tmp = tmp_path_factory.mktemp("api-memory")
    return run_all(tmp)


def run_all(tmp: Path) -> dict[str, Cost]:
    """Each attack against a fresh server, so that none inherits another's memory."""
    spool = tmp / "spool"
    spool.mkdir()
    env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")},
                    max_upload=UPLOAD_LIMIT)
    env["TMPDIR"] = str(spool)
    costs = {}
    for name in attacks("http://unused").keys():
        with serve(env, tmp) as api:
            costs[name] = measure(name, api.proc.pid, spool, attacks(api.url)[name])
    return costs


def test_every_attack_stays_well_under_the_pod_memory_limit(costs: dict[str, Cost]) -> None:
    limit = pod_memory_limit()
    for cost in costs.values():
        assert cost.peak_rss < POD_SHARE * limit, f"{cost.name}: peak {cost.peak_rss / MIB:.0f} MiB"


def test_a_body_that_is_not_the_schema_is_refused_before_it_costs_memory(costs: dict[str, Cost]) -> None:
    cost = costs["JSON body of empty objects (20 MB)"]
    assert cost.outcome == "422", cost
    # The body itself, read under its cap, and little else: json.loads alone would take 500 MiB.
    assert cost.peak_rss - cost.idle_rss < 3 * EMPTY_OBJECTS_BYTES, cost


def test_the_login_form_reads_a_few_kib_and_spools_nothing(costs: dict[str, Cost]) -> None:
    cost = costs["POST /login, one 300 MiB form part, no token"]
    assert cost.outcome in ("413", "415"), cost
    assert cost.spool_peak == 0, cost
    assert cost.sent < 16 * MIB, cost  # what the sockets' buffers took before the client saw the answer


def test_a_form_is_capped_in_total_as_it_streams(costs: dict[str, Cost]) -> None:
    cost = costs["chunked form, 256 MiB after its closing boundary"]
    assert cost.outcome == "413", cost
    assert cost.sent < 2 * UPLOAD_LIMIT + 16 * MIB, cost


@pytest.mark.parametrize("name", [f"{CONCURRENT} JSON uploads at once, 40 MiB photo each",
                                  f"{CONCURRENT} form uploads at once, 40 MiB photo each"])
def test_uploads_in_flight_share_one_budget_and_the_rest_hear_503(costs: dict[str, Cost], name: str) -> None:
    cost = costs[name]
    assert "503" in cost.outcome and "202" in cost.outcome, cost
    for refused in (a for a in cost.answers if a.status == 503):
        assert refused.headers.get("retry-after", "").isdigit(), refused.headers
        assert "nothing was written" in json.loads(refused.body)["detail"], refused.body


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        results = run_all(Path(folder))
    print("| attack | answers | body sent (MiB) | peak RSS (MiB) | over idle (MiB) | spool on disk (MiB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for c in results.values():
        print(f"| {c.name} | {c.outcome} | {c.sent / MIB:,.0f} | {c.peak_rss / MIB:,.0f} | "
              f"{(c.peak_rss - c.idle_rss) / MIB:+,.0f} | {c.spool_peak / MIB:,.0f} |")
    sys.exit(0)
