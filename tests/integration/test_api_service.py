"""The HTTP API end to end: a real ``processor serve`` (uvicorn on a free port) and a real
``processor run`` daemon (toon style), on the local store and on SeaweedFS, driven through the
Python client (``processor.client``) where a test is about what a route does, and through raw
HTTP where it is about the wire (headers, problem bodies)."""

from __future__ import annotations

import base64
import io
import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from processor.client import ApiError, Client
from testkit.api_service import MAX_WAIT_S, OTHER_TOKEN, TOKEN, Service, serve, wait_status, worker, write_env
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module", params=["local", "s3"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp(f"api-{request.param}")
    if request.param == "local":
        store_env = {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")}
    else:
        s3 = request.getfixturevalue("s3_server")
        store_env = {"PROCESSOR_STORE__KIND": "s3", "PROCESSOR_STORE__BUCKET": s3.new_bucket(),
                     "PROCESSOR_STORE__ENDPOINT_URL": s3.endpoint_url, "PROCESSOR_STORE__REGION": "us-east-1",
                     "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    env = write_env(tmp, store_env)
    with serve(env, tmp) as api, worker(env, tmp) as daemon:
        api.worker = daemon
        yield api


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


@pytest.fixture
def api(service: Service) -> Iterator[Client]:
    with Client(service.url, TOKEN, timeout_s=HANG_GUARD_S) as c:
        yield c


def submit(client: httpx.Client, image: bytes | None = None, **fields: str) -> httpx.Response:
    return client.post("/v1/jobs", files={"image": ("toy.jpg", image or photo_bytes(160, 120))}, data=fields)


def assert_problem(resp: httpx.Response, status: int, field: str | None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["detail"] and body["title"]
    if field is not None:
        assert body["field"] == field, body
    assert body.get("hint") or (status == 404 and body["detail"])
    return body


def test_submit_answers_202_with_the_job_location(client: httpx.Client) -> None:
    resp = submit(client, variants="1")
    assert resp.status_code == 202, resp.text
    created = resp.json()
    assert created["status"] == "queued" and created["links"]["self"].endswith(created["id"])
    assert resp.headers["location"] == created["links"]["self"]


def test_submit_runs_to_done_with_variants_and_files(service: Service, client: httpx.Client, api: Client) -> None:
    created = api.submit(photo_bytes(160, 120), variants=2, seed=7)
    assert created.status.value == "queued" and created.links.self.endswith(created.id)
    done = api.wait(created.id, timeout_s=HANG_GUARD_S)
    assert done.status.value == "done", done
    assert [(v.style, v.index, v.seed) for v in done.variants] == [("toon", 0, 7), ("toon", 1, 8)]
    assert done.manifest is not None and done.manifest["source"]["key"] == done.input and done.failure is None
    for v in done.variants:
        # Local store: streamed by the API (with the token). S3: a presigned URL, fetched without one.
        assert api.file(v.url) == (client.get(v.url) if v.url.startswith(service.url) else httpx.get(v.url)).content
        image = Image.open(io.BytesIO(api.file(v.url)))
        assert (image.width, image.height) == (v.width, v.height)
    saved = api.download(done.variants[0].url, service.log.parent / "downloads")
    assert saved.read_bytes() == api.file(done.variants[0].url)
    _files_answer_as_attachments(service, client, done.model_dump(mode="json"))


def _files_answer_as_attachments(service: Service, client: httpx.Client, done: dict) -> None:
    for v in done["variants"]:
        got = client.get(v["url"]) if v["url"].startswith(service.url) else httpx.get(v["url"])
        assert got.status_code == 200
        assert "content-disposition" not in got.headers  # shown in the page, not saved
        # The Download link: the same bytes, answered as an attachment. For S3 the header is part
        # of the signed URL (a link's download attribute is ignored across origins).
        saved = client.get(v["download"]) if v["download"].startswith(service.url) else httpx.get(v["download"])
        assert saved.status_code == 200 and saved.content == got.content
        assert (
            saved.headers["content-disposition"]
            == f'attachment; filename="{v["url"].split("?")[0].rsplit("/", 1)[-1]}"'
        )
    assert "Signature" not in json.dumps(done["manifest"])  # the manifest itself carries no URL
    sheet = done["contact_sheet"]
    assert (client.get(sheet) if sheet.startswith(service.url) else httpx.get(sheet)).status_code == 200
    sheet_saved = done["contact_sheet_download"]
    got = client.get(sheet_saved) if sheet_saved.startswith(service.url) else httpx.get(sheet_saved)
    assert got.headers["content-disposition"] == 'attachment; filename="contact-sheet.jpg"'


def test_json_submission_with_base64_and_prefer_wait(client: httpx.Client) -> None:
    image = base64.b64encode(photo_bytes(150, 110, fmt="PNG")).decode()
    resp = client.post("/v1/jobs", json={"image": image, "variants": 1}, headers={"Prefer": "wait=60"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "done" and len(resp.json()["variants"]) == 1


def test_prefer_wait_answers_202_when_the_job_is_not_done_in_time(service: Service, client: httpx.Client) -> None:
    service.worker.send_signal(signal.SIGSTOP)  # a busy fleet: nobody takes the job meanwhile
    try:
        started = time.monotonic()
        resp = client.post("/v1/jobs", files={"image": ("t.jpg", photo_bytes(140, 100, seed=3))},
                           headers={"Prefer": "wait=1"})
        waited = time.monotonic() - started
    finally:
        service.worker.send_signal(signal.SIGCONT)
    assert resp.status_code == 202 and resp.json()["status"] in ("queued", "running"), resp.text
    assert 1 <= waited < MAX_WAIT_S  # it answered at the client's wait=1, not at the server's cap
    assert wait_status(client, resp.json()["id"], {"done"})["variants"]


def test_idempotency_key_returns_the_same_job_and_writes_nothing_new(service: Service, client: httpx.Client) -> None:
    image = photo_bytes(130, 100, seed=11)
    headers = {"Idempotency-Key": "order-4711"}
    first = client.post("/v1/jobs", files={"image": ("a.jpg", image)}, headers=headers)
    second = client.post("/v1/jobs", files={"image": ("a.jpg", image)}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    listed = [j["id"] for j in client.get("/v1/jobs", params={"limit": 200}).json()["jobs"]]
    assert listed.count(first.json()["id"]) == 1
    # The same key with another photo is refused, naming the header.
    other = client.post("/v1/jobs", files={"image": ("b.jpg", photo_bytes(130, 100, seed=12))}, headers=headers)
    assert_problem(other, 422, "Idempotency-Key")
    # Keys are per token: another client's same key is its own job.
    with service.client(OTHER_TOKEN) as other_client:
        theirs = other_client.post("/v1/jobs", files={"image": ("a.jpg", image)}, headers=headers)
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


def test_events_stream_status_until_done(service: Service, client: httpx.Client, api: Client) -> None:
    job = api.submit(photo_bytes(160, 120), variants=1).id
    with client.stream("GET", f"/v1/jobs/{job}/events", timeout=HANG_GUARD_S) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = [(e.name, e.data.model_dump(mode="json")) for e in api.events(job)]
    kinds = [k for k, _ in events]
    # A stream opens on the job's state then: queued or running ("status", then on to "done"), or
    # done already when the worker was quicker than this client (tests/integration/
    # test_api_bucket_face.py holds the worker back to see the whole sequence).
    assert kinds[-1] == "done" and (kinds == ["done"] or kinds[0] == "status"), kinds
    assert events[-1][1]["status"] == "done" and events[-1][1]["variants"]
    assert set(kinds) <= {"status", "progress", "done"}


def test_bad_photo_fails_with_its_record_and_retry_requeues_it(service: Service, client: httpx.Client,
                                                              api: Client) -> None:
    # A PNG signature then garbage: sniffed as PNG (accepted), undecodable (the worker fails it).
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    job = api.submit(broken, filename="broken.png").id
    failed = api.wait(job, timeout_s=HANG_GUARD_S)
    assert failed.status.value == "failed" and failed.failure is not None and failed.failure.permanent, failed
    assert failed.failure.hint and failed.links.retry
    first_record = failed.failure
    retried = api.retry(job)
    assert retried.status.value in ("queued", "running", "failed")
    again = wait_status(client, job, {"failed"})
    assert again["failure"]["error"] == first_record.error
    # The worker really took it again: two failures of this input in its log.
    (log,) = service.log.parent.glob("worker-*.log")
    deadline = time.monotonic() + HANG_GUARD_S
    while sum(1 for line in log.read_text().splitlines()
              if '"input_failed"' in line and failed.input in line) < 2:
        assert time.monotonic() < deadline, "the retried job was not processed again"
        time.sleep(0.2)
    # Only a failed job can be retried.
    good = client.post("/v1/jobs", files={"image": ("g.jpg", photo_bytes(120, 90))}, headers={"Prefer": "wait=60"})
    assert good.json()["status"] == "done"
    assert_problem(client.post(f"/v1/jobs/{good.json()['id']}/retry"), 409, "id")


def test_listing_pages_and_includes_inputs_dropped_in_the_bucket(service: Service, client: httpx.Client,
                                                                api: Client) -> None:
    for seed in range(3):
        api.submit(photo_bytes(100, 80, seed=seed + 20))
    seen: list[str] = []
    cursor = None
    while True:
        page = api.list(cursor=cursor, limit=2)
        assert len(page.jobs) <= 2
        seen += [j.id for j in page.jobs]
        cursor = page.next_cursor
        if not cursor:
            break
    assert len(seen) == len(set(seen)) >= 3
    assert [j.id for j in api.jobs(page_size=2)] == seen
    # An input dropped straight into the bucket (processor submit) is a job too.
    photo = service.log.parent / "dropped.jpg"
    photo.write_bytes(photo_bytes(100, 80, seed=99))
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "processor", "submit", "-q", str(photo)], env=service.env, check=True,
                   capture_output=True)
    inputs = [j.input for j in api.jobs(page_size=200)]
    assert "inputs/dropped.jpg" in inputs


def test_auth_is_required_on_every_v1_route_and_the_seed_route(service: Service) -> None:
    routes = [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/abc"), ("GET", "/v1/jobs/abc/events"),
              ("POST", "/v1/jobs/abc/retry"), ("DELETE", "/v1/jobs/abc"), ("GET", "/v1/jobs/abc/files/toon-00.png"),
              ("POST", "/generate_image_rest_direct")]
    for token in (None, "wrong-token"):
        with service.client(token) as c:
            for method, path in routes:
                resp = c.request(method, path)
                assert_problem(resp, 401, "Authorization")
                assert resp.headers["www-authenticate"].startswith("Bearer")
    with service.client(None) as c:  # probes and metrics stay open for the kubelet and Prometheus
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert "processor_pending_inputs" in c.get("/metrics").text


def test_every_error_status_names_the_field(client: httpx.Client) -> None:
    too_big = photo_bytes(100, 80)[:3] + b"\x00" * 4_100_000
    assert_problem(submit(client, too_big), 413, "image")
    assert_problem(submit(client, b"<!doctype html><html>not a photo</html>"), 415, "image")
    assert_problem(client.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"}), 415, "Content-Type")
    assert_problem(submit(client, variants="99"), 422, "variants")
    assert_problem(submit(client, styles="no-such-style"), 422, "styles")
    assert_problem(submit(client, background_mode="sideways"), 422, "background_mode")
    assert_problem(submit(client, colour="red"), 422, "colour")
    assert_problem(client.post("/v1/jobs", json={"variants": 2}), 422, "image")
    assert_problem(client.post("/v1/jobs", json={"image": "not base64!"}), 422, "image")
    assert_problem(client.get("/v1/jobs/bm8tc3VjaC1qb2IucG5n"), 404, "id")
    assert_problem(client.get("/v1/jobs/!!"), 404, "id")
    assert_problem(client.get("/v1/jobs", params={"limit": 0}), 422, "limit")
    assert_problem(client.get("/v1/jobs", params={"cursor": "!!"}), 422, "cursor")


def test_webhook_hosts_off_the_allow_list_are_refused(client: httpx.Client) -> None:
    body = assert_problem(submit(client, webhook="https://evil.example.net/hook"), 422, "webhook")
    assert "allow-list" in body["detail"]
    assert_problem(submit(client, webhook="ftp://127.0.0.1/x"), 422, "webhook")


def test_seed_route_serves_the_prototype_client(service: Service, api: Client) -> None:
    """A client written like the prototype's: a JSON body with a base64 photo, base64 PNGs back;
    its job skips the review outputs that client never sees (no contact sheet, no scores)."""
    payload = {
        "initial_image": base64.b64encode(photo_bytes(160, 120, seed=5)).decode("utf-8"),
        "prompt": "a toy robot",
        "negative_prompt": "blurry",
        "final_images_to_return": 3,
        "seed": 42,
    }
    response = httpx.post(service.url + "/generate_image_rest_direct", json=payload, timeout=HANG_GUARD_S,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    images = response.json()["generated_images"]
    assert len(images) == 3
    for encoded in images:
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.format == "PNG" and image.width > 0
    job = max(api.jobs(page_size=200), key=lambda j: j.submitted_at)  # the route's job, the newest
    assert job.manifest is not None and len(job.manifest["variants"]) == 3
    assert job.contact_sheet is None and job.manifest.get("contact_sheet") is None
    assert all(v.get("structure") is None for v in job.manifest["variants"])
    # It says which style ran, and that this style (toon) ignored the prompt it was sent.
    assert response.headers["X-Processor-Style"] == "toon" and response.json()["style"] == "toon"
    assert response.headers["X-Processor-Ignored"] == "prompt, negative_prompt"
    assert response.json()["ignored"] == ["prompt", "negative_prompt"]
    assert response.json()["generated_image"] is None  # three asked for: the later client's shape only
    # The first (Flask) client asked for one image and read `generated_image`: served too.
    flask = httpx.post(service.url + "/generate_image_rest_direct", json={"initial_image": payload["initial_image"]},
                       timeout=HANG_GUARD_S, headers={"Authorization": f"Bearer {TOKEN}"})
    assert flask.status_code == 200, flask.text
    assert flask.json()["generated_image"] == flask.json()["generated_images"][0]
    assert "X-Processor-Ignored" not in flask.headers and flask.json()["ignored"] == []
    bad = httpx.post(service.url + "/generate_image_rest_direct", json=payload | {"final_images_to_return": 0},
                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert_problem(bad, 422, "final_images_to_return")


def test_a_queued_job_is_cancelled_and_an_ended_one_is_not(service: Service, api: Client) -> None:
    service.worker.send_signal(signal.SIGSTOP)  # a busy fleet: the job stays queued meanwhile
    try:
        job = api.submit(photo_bytes(140, 100, seed=31), variants=1).id
        cancelled = api.cancel(job)
    finally:
        service.worker.send_signal(signal.SIGCONT)
    assert cancelled.status.value == "cancelled" and cancelled.cancel is not None
    assert cancelled.cancel.stage == "queued"
    assert api.wait(job, timeout_s=HANG_GUARD_S).status.value == "cancelled"
    assert job not in [j.id for j in api.jobs(page_size=200)]  # its input is gone: listings leave it out
    done = api.submit(photo_bytes(140, 100, seed=32), variants=1).id
    assert api.wait(done, timeout_s=HANG_GUARD_S).status.value == "done"
    with pytest.raises(ApiError) as refused:
        api.cancel(done)
    assert refused.value.status == 409 and refused.value.problem.hint
    with Client(service.url, OTHER_TOKEN) as other, pytest.raises(ApiError) as hidden:
        other.cancel(done)
    assert hidden.value.status == 404


def test_processor_submit_over_the_api_waits_for_its_jobs(service: Service, api: Client) -> None:
    """``processor submit --api URL --wait``: the photos as jobs of the API (the token from the
    environment, a sidecar's fields as the job's), each followed until it ends."""
    import subprocess
    import sys

    folder = service.log.parent / "over-api"
    folder.mkdir()
    (folder / "one.jpg").write_bytes(photo_bytes(120, 90, seed=41))
    (folder / "two.jpg").write_bytes(photo_bytes(120, 90, seed=42))
    (folder / "two.json").write_text(json.dumps({"variants": 2, "seed": 5}))
    env = service.env | {"PROCESSOR_API_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-m", "processor", "submit", "--api", service.url, "--wait", str(folder)],
                          env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    submitted = dict(line.split(" -> ") for line in done.stdout.splitlines() if " -> " in line)
    assert set(submitted) == {"one.jpg", "two.jpg"}
    assert "one.jpg done" in done.stdout and "two.jpg done" in done.stdout
    two = api.get(submitted["two.jpg"].split()[0])
    assert [(v.index, v.seed) for v in two.variants] == [(0, 5), (1, 6)]
    no_token = subprocess.run([sys.executable, "-m", "processor", "submit", "--api", service.url, str(folder)],
                              env=service.env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert no_token.returncode != 0 and "401" in no_token.stderr and "Authorization" in no_token.stderr


def test_processor_submit_over_the_api_refuses_what_is_no_photo(service: Service, api: Client) -> None:
    """``processor submit --api URL``: a file that is no photo is refused before it is sent (one line
    each), the photos still become jobs, and each job keeps its photo's file name."""
    import subprocess
    import sys

    from processor.errors import EXIT_SOME_FAILED

    folder = service.log.parent / "over-api-refused"
    folder.mkdir()
    (folder / "Teddy Bear.jpg").write_bytes(photo_bytes(120, 90, seed=43))
    (folder / "notes.txt").write_text("not a photo\n")
    env = service.env | {"PROCESSOR_API_TOKEN": TOKEN}
    proc = subprocess.run([sys.executable, "-m", "processor", "submit", "--api", service.url, str(folder),
                           "--log-format", "text"], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == EXIT_SOME_FAILED, proc.stderr
    # Where the jobs went: the API, not the configured bucket.
    first = proc.stderr.splitlines()[0]
    assert first.startswith("using config ") and first.endswith(f"; the HTTP API at {service.url}"), first
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("refused ")]
    assert len(refusals) == 1 and "notes.txt" in refusals[0], proc.stderr
    submitted = dict(line.split(" -> ") for line in proc.stdout.splitlines() if " -> " in line)
    assert set(submitted) == {"Teddy Bear.jpg"}
    assert api.get(submitted["Teddy Bear.jpg"].split()[0]).filename == "Teddy Bear.jpg"
