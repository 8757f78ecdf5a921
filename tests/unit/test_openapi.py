"""The OpenAPI document tells the truth: it is valid OpenAPI 3.1; ``POST /v1/jobs`` declares its
form and JSON bodies with exactly the fields the route reads; every protected route declares the
bearer scheme; every error is a problem; the event stream declares its events. And a tour of the
real app (a worker included: done, failed, cancelled and running jobs; the errors of every route)
gets only answers whose status its route declares, with a body its schema accepts."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from processor.api.app import create_app
from processor.api.openapi import EVENTS
from processor.api.problems import MEDIA_TYPE
from processor.api.validate import FIELDS
from processor.cli.compose import build_registry
from processor.config import load_settings
from processor.queue.claims import ClaimManager
from processor.queue.protocol import BucketQueue
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes

TOKEN, OTHER = "token-alice", "token-bob"
PROTECTED = ("/v1/", "/generate_image_rest_direct")
PROBLEM = {"$ref": "#/components/schemas/ProblemOut"}


@dataclass
class Seen:
    """One answer of the tour."""

    method: str
    path: str
    status: int
    media: str
    body: bytes
    request_media: str
    request_body: bytes


@pytest.fixture(scope="module")
def app_and_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, LocalStore, Any]:
    root = tmp_path_factory.mktemp("openapi") / "bucket"
    settings = load_settings(None, store={"kind": "local", "root": str(root)},
                             styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                             run={"styles": ["toon"]}, pipeline={"contact_sheet_height": 32},
                             api={"poll_s": 0.02, "direct_timeout_s": 0.2, "max_upload_bytes": 200_000})
    store = LocalStore(root)
    return create_app(settings, store, keys=[f"alice:{TOKEN}:admin", f"bob:{OTHER}"]), store, settings


@pytest.fixture(scope="module")
def doc(app_and_store) -> dict[str, Any]:
    return app_and_store[0].openapi()


def test_the_document_is_valid_openapi_3_1(doc) -> None:
    assert doc["openapi"].startswith("3.1")
    validate_openapi(doc)


def test_submit_declares_a_form_and_a_json_body_with_the_fields_the_route_reads(doc) -> None:
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"multipart/form-data", "application/json"}
    schemas = doc["components"]["schemas"]
    for media, name in (("multipart/form-data", "JobForm"), ("application/json", "JobJson")):
        assert body["content"][media]["schema"] == {"$ref": f"#/components/schemas/{name}"}
        schema = schemas[name]
        assert set(schema["properties"]) == set(FIELDS), name
        assert schema["required"] == ["image"] and schema["additionalProperties"] is False
    assert schemas["JobForm"]["properties"]["image"]["format"] == "binary"
    assert schemas["JobJson"]["properties"]["image"]["contentEncoding"] == "base64"
    prototype = doc["paths"]["/generate_image_rest_direct"]["post"]["requestBody"]["content"]
    assert prototype == {"application/json": {"schema": {"$ref": "#/components/schemas/DirectRequest"}}}


def test_every_protected_route_declares_the_bearer_scheme(doc) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["cookie"]["in"] == "cookie"
    operations = [(path, op) for path, ops in doc["paths"].items() for op in ops.values()]
    assert len(operations) >= 8
    for path, op in operations:
        assert path.startswith(PROTECTED), path
        assert {"bearer": []} in op["security"] and {"cookie": []} in op["security"], path
        assert "401" in op["responses"], path


def test_every_error_answer_is_a_problem(doc) -> None:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert response["content"] == {MEDIA_TYPE: {"schema": PROBLEM}}, (method, path, status)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_the_event_stream_declares_its_events_and_their_data(doc) -> None:
    ok = doc["paths"]["/v1/jobs/{job}/events"]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["text/event-stream"]
    assert set(ok["x-events"]) == set(EVENTS)
    for name in EVENTS:
        assert f"`{name}`" in ok["description"]


# --------------------------------------------------------------------------- the tour


@pytest.fixture(scope="module")
def tour(app_and_store) -> list[Seen]:
    """Every route, its successes and its errors, against the real app and a real worker."""
    app, store, settings = app_and_store
    seen: list[Seen] = []

    def record(response: httpx.Response) -> None:
        response.read()
        request = response.request
        seen.append(Seen(request.method, request.url.path, response.status_code,
                         response.headers.get("content-type", "").split(";")[0], response.content,
                         request.headers.get("content-type", "").split(";")[0], request.read()))

    with TestClient(app, base_url=OPEN_BASE_URL) as http:
        http.event_hooks = {"request": [], "response": [record]}
        _tour(http, store, settings)
    return seen


def _tour(http: TestClient, store: LocalStore, settings: Any) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    photo = photo_bytes(90, 70)

    def submit(**kw: Any) -> httpx.Response:
        return http.post("/v1/jobs", headers=auth | kw.pop("headers", {}), **kw)

    good = submit(files={"image": ("a.jpg", photo)}, data={"variants": "1", "styles": "toon"}).json()["id"]
    as_json = submit(json={"image": base64.b64encode(photo_bytes(90, 70, seed=2)).decode(), "seed": 3,
                           "webhook_events": None}).json()["id"]
    broken = submit(files={"image": ("b.png", b"\x89PNG\r\n\x1a\n" + bytes(64))}).json()["id"]
    submit(files={"image": ("c.jpg", photo_bytes(90, 70, seed=4))}, headers={"Idempotency-Key": "k-1"})
    Worker(store, settings, build_registry(settings), worker_id="w-tour").run_once()
    # 200 from POST: the repeat of a request whose job ended, waited for.
    submit(files={"image": ("c.jpg", photo_bytes(90, 70, seed=4))}, headers={"Idempotency-Key": "k-1",
                                                                            "Prefer": "wait=1"})
    done = http.get(f"/v1/jobs/{good}", headers=auth).json()
    http.get(f"/v1/jobs/{as_json}", headers=auth)
    http.get("/v1/jobs", headers=auth, params={"limit": 2})
    http.get(done["variants"][0]["url"], headers=auth)
    http.get(done["contact_sheet"], headers=auth)
    http.get(f"/v1/jobs/{good}/files/nothing.png", headers=auth)
    http.get(f"/v1/jobs/{good}/files/toon-00.png", headers=auth, params={"download": "maybe"})
    http.get(f"/v1/jobs/{good}/events", headers=auth)
    http.post(f"/v1/jobs/{broken}/retry", headers=auth)
    http.post(f"/v1/jobs/{good}/retry", headers=auth)
    http.delete(f"/v1/jobs/{good}", headers=auth)
    # Cancel: a queued job (removed: 200, and again), a running one (a live claim: 202), unknown ones.
    queued = submit(files={"image": ("d.jpg", photo_bytes(90, 70, seed=5))}).json()["id"]
    http.delete(f"/v1/jobs/{queued}", headers=auth)
    http.delete(f"/v1/jobs/{queued}", headers=auth)
    http.get(f"/v1/jobs/{queued}/events", headers=auth)
    running = submit(files={"image": ("e.jpg", photo_bytes(90, 70, seed=6))}).json()["id"]
    queue = BucketQueue.for_settings(store, settings)
    state = queue.state(running)
    ClaimManager(store, "w-elsewhere", 60).acquire(queue.keys_of(running).claim, state.input_key, state.etag)
    http.delete(f"/v1/jobs/{running}", headers=auth)
    with TestClient(http.app, base_url=OPEN_BASE_URL) as bob:  # another client: a 404, as for no job
        bob.event_hooks = http.event_hooks
        bob.delete(f"/v1/jobs/{good}", headers={"Authorization": f"Bearer {OTHER}"})
    for method in ("GET", "DELETE"):
        http.request(method, "/v1/jobs/bm8tc3VjaC1qb2IucG5n", headers=auth)
    http.post("/v1/jobs/bm8tc3VjaC1qb2IucG5n/retry", headers=auth)
    http.get("/v1/jobs/bm8tc3VjaC1qb2IucG5n/events", headers=auth)
    # The errors of a submit.
    submit(content=b"x", headers={"Content-Type": "text/plain"})
    submit(content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    submit(files={"image": ("big.jpg", photo[:3] + bytes(300_000))})
    submit(files={"image": ("a.jpg", photo)}, data={"colour": "red"})
    submit(json={"image": base64.b64encode(photo).decode(), "colour": "red"})
    submit(files={"image": ("a.jpg", photo)}, headers={"Idempotency-Key": "k" * 300})
    http.get("/v1/jobs", headers=auth, params={"limit": 0})
    http.get("/v1/jobs", headers=auth, params={"cursor": "!!"})
    # The login cookie, sent from another site's page.
    with TestClient(http.app, base_url=OPEN_BASE_URL, cookies={"processor_token": TOKEN}) as browser:
        browser.event_hooks = http.event_hooks
        browser.post("/v1/jobs", files={"image": ("a.jpg", photo)}, headers={"Origin": "https://elsewhere.example"})
    # The prototype's route: a bad body, and a job that does not finish within api.direct_timeout_s.
    http.post("/generate_image_rest_direct", headers=auth, json={"prompt": "x"})
    http.post("/generate_image_rest_direct", headers=auth,
              json={"initial_image": base64.b64encode(photo).decode(), "final_images_to_return": 1})
    # Without a token, a wrong one, and wrong ones until the address is refused for a while.
    http.get("/v1/jobs")
    for _ in range(12):
        http.get("/v1/jobs", headers={"Authorization": "Bearer wrong"})


def _operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, ops in doc["paths"].items():
        pattern = "^" + re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            return ops[method.lower()]
    raise AssertionError(f"{method} {path} is answered but not in the document")


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": doc["components"]})


def _sse(body: bytes) -> list[tuple[str, Any]]:
    events, name = [], None
    for line in body.decode().splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
    return events


def test_every_answer_of_the_tour_is_declared_with_its_body(doc, tour) -> None:
    statuses: dict[str, set[int]] = {}
    for seen in tour:
        op = _operation(doc, seen.method, seen.path)
        where = f"{seen.method} {seen.path} -> {seen.status}"
        declared = op["responses"].get(str(seen.status))
        assert declared is not None, f"{where}: not among the declared {sorted(op['responses'])}"
        content = declared.get("content", {})
        assert seen.media in content, f"{where}: {seen.media} is not among {sorted(content)}"
        schema = content[seen.media].get("schema", {})
        if seen.media in ("application/json", MEDIA_TYPE):
            errors = [e.message for e in _validator(doc, schema).iter_errors(json.loads(seen.body))]
            assert not errors, f"{where}: {errors}"
        elif seen.media == "text/event-stream":
            events = _sse(seen.body)
            assert events, where
            for name, data in events:
                assert name in declared["x-events"], f"{where}: undeclared event {name}"
                assert not list(_validator(doc, declared["x-events"][name]).iter_errors(data)), (where, name)
        statuses.setdefault(f"{seen.method} {_template(doc, seen.method, seen.path)}", set()).add(seen.status)
    # The tour reached what it set out to: every route, with the statuses that matter.
    assert {200, 202, 400, 403, 413, 415, 422} <= statuses["POST /v1/jobs"]
    assert {200, 202, 404, 409} <= statuses["DELETE /v1/jobs/{job}"]
    assert {202, 404, 409} <= statuses["POST /v1/jobs/{job}/retry"]
    assert {200, 404} <= statuses["GET /v1/jobs/{job}/events"]
    assert {200, 404, 422} <= statuses["GET /v1/jobs/{job}/files/{name}"]
    assert {200, 401, 422, 429} <= statuses["GET /v1/jobs"]
    assert {422, 504} <= statuses["POST /generate_image_rest_direct"]


def _template(doc: dict[str, Any], method: str, path: str) -> str:
    op = _operation(doc, method, path)
    return next(t for t, ops in doc["paths"].items() if ops.get(method.lower()) is op)


def test_the_json_bodies_the_server_takes_are_the_ones_the_schema_takes(doc, tour) -> None:
    schema = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = _validator(doc, schema)
    sent = [s for s in tour if s.method == "POST" and s.path == "/v1/jobs" and s.request_media == "application/json"]
    assert len(sent) >= 2
    for seen in sent:
        accepted_by_schema = validator.is_valid(json.loads(seen.request_body))
        accepted_by_server = seen.status in (200, 202)
        assert accepted_by_schema == accepted_by_server, (seen.status, seen.request_body[:80])
    form = doc["components"]["schemas"]["JobForm"]["properties"]
    for seen in tour:
        if seen.method == "POST" and seen.path == "/v1/jobs" and seen.status in (200, 202) \
                and seen.request_media == "multipart/form-data":
            names = set(re.findall(rb'; name="([^"]+)"', seen.request_body))
            assert {n.decode() for n in names} <= set(form), names


def test_the_document_is_what_docs_links_to(app_and_store, doc) -> None:
    with TestClient(app_and_store[0], base_url=OPEN_BASE_URL) as http:
        served = http.get("/openapi.json")
    assert served.status_code == 200 and served.json() == json.loads(json.dumps(doc))
