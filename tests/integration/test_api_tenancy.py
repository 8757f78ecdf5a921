"""Tenancy: a job belongs to the client that submitted it. Another client gets the same 404 as for a
job that does not exist on every route that names it (status, files, events, retry, the pages),
and its listings leave it out; an admin sees every job, the inputs dropped into the bucket directly
included. In-process (TestClient) over the local store and SeaweedFS; the clients' configuration
(``PROCESSOR_API_KEYS`` entries) is parsed by ``processor.api.clients``."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.api.clients import AccessMode, Role, derived_name, parse_clients, resolve_access
from processor.config import Settings, load_settings
from processor.errors import ConfigError
from processor.queue.jobs import job_id, relpath_of
from processor.queue.keys import KeyLayout
from processor.queue.submit import owner_folder, upload_owner
from processor.store.local import LocalStore
from testkit.images import photo_bytes

ALICE, BOB, OPS, PLAIN = "alice-token", "bob-token", "ops-token", "plain-token"
KEYS = [f"alice:{ALICE}", f"bob:{BOB}", f"ops:{OPS}:admin", PLAIN]
#: What every 404 of a job says, whether it does not exist or is another client's.
NOT_FOUND = {"field": "id", "hint": "Use an id returned by POST /v1/jobs or listed by GET /v1/jobs."}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> Any:
    if request.param == "local":
        return LocalStore(tmp_path / "bucket")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                         run={"styles": ["toon"]},
                         # Short waits: no worker runs here, so a stream ends by its lifetime.
                         api={"direct_timeout_s": 0.2, "poll_s": 0.05, "stream_max_s": 0.3})


def client(app: Any, token: str) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def submit(c: TestClient, seed: int = 0) -> str:
    resp = c.post("/v1/jobs", files={"image": ("t.jpg", photo_bytes(96, 72, seed=seed))})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def test_another_clients_job_is_404_everywhere_and_an_admin_sees_all(settings: Settings, store: Any) -> None:
    app = create_app(settings, store, keys=KEYS)
    alice, bob, ops = client(app, ALICE), client(app, BOB), client(app, OPS)
    job = submit(alice)
    assert alice.get(f"/v1/jobs/{job}").json()["input"].startswith("inputs/api/alice/")
    missing = job_id("api/alice/0000000000000-0000000000000000.jpg")  # well-formed, never written
    for who in (bob, alice):
        for target in (job, missing) if who is bob else (missing,):
            for method, path in [("GET", f"/v1/jobs/{target}"), ("GET", f"/v1/jobs/{target}/events"),
                                 ("POST", f"/v1/jobs/{target}/retry"),
                                 ("GET", f"/v1/jobs/{target}/files/contact-sheet.jpg")]:
                resp = who.request(method, path)
                body = resp.json()
                # The same answer as for a job that does not exist (the files route names the file).
                assert resp.status_code == 404, (method, path, resp.text)
                if "/files/" not in path:
                    assert {k: body[k] for k in NOT_FOUND} == NOT_FOUND and body["detail"] == f"no job {target!r}"
    page = bob.get(f"/jobs/{job}", follow_redirects=False)
    assert page.status_code == 404 and "No such job" in page.text
    assert bob.post(f"/jobs/{job}/retry", headers={"Origin": "http://testserver"},
                    follow_redirects=False).status_code == 404
    assert job not in bob.get("/browse").text and job in alice.get("/browse").text
    # Listings: each client its own; the admin every job.
    theirs = submit(bob, seed=1)
    assert [j["id"] for j in alice.get("/v1/jobs").json()["jobs"]] == [job]
    assert [j["id"] for j in bob.get("/v1/jobs").json()["jobs"]] == [theirs]
    assert {j["id"] for j in ops.get("/v1/jobs").json()["jobs"]} == {job, theirs}
    assert ops.get(f"/v1/jobs/{job}").status_code == 200
    stream = ops.get(f"/v1/jobs/{theirs}/events")
    assert stream.status_code == 200 and stream.text.startswith("event: status") and "event: expired" in stream.text
    # A cursor from another client's folder is not a cursor of this one's listing.
    assert bob.get("/v1/jobs", params={"cursor": job}).status_code == 422


def test_inputs_dropped_into_the_bucket_are_for_admins_only(settings: Settings, store: Any) -> None:
    store.put("inputs/dropped.jpg", photo_bytes(80, 60))
    store.put("inputs/api/legacy-upload.jpg", photo_bytes(80, 60, seed=2))  # before clients had folders
    app = create_app(settings, store, keys=KEYS)
    dropped, legacy = job_id("dropped.jpg"), job_id("api/legacy-upload.jpg")
    ops, alice, plain = client(app, OPS), client(app, ALICE), client(app, PLAIN)
    assert {j["id"] for j in ops.get("/v1/jobs").json()["jobs"]} == {dropped, legacy}
    for c in (alice, plain):
        assert c.get("/v1/jobs").json()["jobs"] == []
        assert c.get(f"/v1/jobs/{dropped}").status_code == 404 and c.get(f"/v1/jobs/{legacy}").status_code == 404
    assert ops.get(f"/v1/jobs/{dropped}").json()["status"] == "queued"


def test_the_prototype_route_records_its_caller_as_owner(settings: Settings, store: Any) -> None:
    import base64

    app = create_app(settings, store, keys=KEYS)
    alice, bob = client(app, ALICE), client(app, BOB)
    photo = base64.b64encode(photo_bytes(90, 70)).decode()
    resp = alice.post("/generate_image_rest_direct", json={"initial_image": photo})
    assert resp.status_code == 504, resp.text  # no worker runs here: its job is still queued
    job = resp.json()["job"]
    assert relpath_of(job).startswith("api/alice/")
    assert alice.get(f"/v1/jobs/{job}").status_code == 200 and bob.get(f"/v1/jobs/{job}").status_code == 404


def test_idempotency_keys_belong_to_the_client_name_not_the_token(settings: Settings, tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    photo = {"image": ("t.jpg", photo_bytes(96, 72))}
    before = client(create_app(settings, store, keys=[f"alice:{ALICE}"]), ALICE)
    first = before.post("/v1/jobs", files=photo, headers={"Idempotency-Key": "k"}).json()["id"]
    # The operator replaces alice's token: her jobs and her keys stay hers.
    after = client(create_app(settings, store, keys=["alice:new-token"]), "new-token")
    assert after.post("/v1/jobs", files=photo, headers={"Idempotency-Key": "k"}).json()["id"] == first
    assert after.get(f"/v1/jobs/{first}").status_code == 200


def test_a_users_listing_is_one_listing_of_its_own_folder(settings: Settings, tmp_path) -> None:
    store = LocalStore(tmp_path / "bucket")
    for i in range(30):  # other clients' jobs and dropped inputs the listing must not walk
        store.put(f"inputs/api/bob/{i:04d}.jpg", photo_bytes(40, 40))
        store.put(f"inputs/x{i:04d}.jpg", photo_bytes(40, 40))
    app = create_app(settings, store, keys=KEYS)
    alice = client(app, ALICE)
    job = submit(alice)
    listed: list[str] = []
    real_list = store.list

    def spy(prefix: str, **kwargs: Any):
        listed.append(prefix)
        return real_list(prefix, **kwargs)

    store.list = spy  # type: ignore[method-assign]
    assert [j["id"] for j in alice.get("/v1/jobs").json()["jobs"]] == [job]
    inputs = [p for p in listed if p.startswith("inputs/")]
    assert inputs == ["inputs/api/alice/"], listed


def test_clients_are_parsed_from_their_entries(settings: Settings) -> None:
    clients = parse_clients(["alice:t1", "ops:t2:admin", "t3"], "PROCESSOR_API_KEYS")
    assert [(c.identity.name, c.identity.role) for c in clients] == [
        ("alice", Role.user), ("ops", Role.admin), (derived_name("t3"), Role.user)]
    assert derived_name("t3").startswith("key-") and "t3" not in derived_name("t3")
    for entries, said in [(["a:b:c:d"], "entry 1 is not"), (["ok:t", "a:b:root"], "entry 2 is not"),
                          (["a:t1", "a:t2"], "given twice"), (["a:t1", "b:t1"], "token is given twice"),
                          (["../x:t"], "client name"), ([":t"], "client name"), (["a:"], "empty token")]:
        with pytest.raises(ConfigError, match=said) as err:
            parse_clients(entries, "PROCESSOR_API_KEYS")
        assert "t1" not in str(err.value).replace("entry 1", "") or "token" in said  # tokens are never quoted
    assert resolve_access(settings, environ={"PROCESSOR_API_KEYS": " alice:t1 , "}).mode is AccessMode.TOKENS
    generated = resolve_access(settings, environ={})
    assert generated.generated_token and generated.clients[0].identity.admin
    opened = settings.model_copy(update={"api": settings.api.model_copy(update={"open": True})})
    assert resolve_access(opened, environ={}).open
    with pytest.raises(ConfigError, match=r"api\.open"):
        resolve_access(opened, environ={"PROCESSOR_API_KEYS": "t"})


def test_the_owner_is_read_from_the_upload_folder_only() -> None:
    assert owner_folder("api/", "alice") == "api/alice/" and owner_folder("api/", None) == "api/"
    assert upload_owner("api/", "api/alice/1-2.jpg") == "alice"
    for relpath in ("api/1-2.jpg", "api/alice/sub/1.jpg", "alice/1.jpg", "other/api/alice/1.jpg", "api//1.jpg"):
        assert upload_owner("api/", relpath) is None, relpath
    layout = KeyLayout(load_settings(None).prefixes)
    assert layout.for_input("inputs/api/alice/1-2.jpg").output_prefix.startswith("outputs/api/alice/")
