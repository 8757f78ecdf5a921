"""``POST /v1/jobs`` with a picture of the look (``style_image``): a file part, base64 in JSON, or the
key of a picture already under ``prefixes.styles``. In-process on the local store; no models are
loaded (the API validates, the worker runs: ``tests/models/test_ip_adapter_api.py``)."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.config import load_settings
from processor.queue.jobs import relpath_of
from processor.store.local import LocalStore
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes

IP = {"model": "h94/IP-Adapter"}
PHOTO = photo_bytes(120, 90)
LOOK = photo_bytes(80, 80, fmt="PNG", seed=9)


@pytest.fixture
def settings(tmp_path):
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")}, run={"styles": ["toon"]},
                         api={"max_upload_bytes": 200_000},
                         styles={"toon": {"engine": "toon", "variants": 1},
                                 "look": {"engine": "img2img", "model": "m", "ip_adapter": IP}})


@pytest.fixture
def client(settings):
    return TestClient(create_app(settings, LocalStore(settings.store.root), keys=[]),
                      base_url=OPEN_BASE_URL)


def sidecar_of(store: LocalStore, job: str) -> dict:
    relpath = relpath_of(job)
    return json.loads(store.get(f"inputs/{relpath.rsplit('.', 1)[0]}.json").body)


def test_a_picture_file_is_written_under_the_styles_prefix_with_the_jobs_name(settings, client):
    store = LocalStore(settings.store.root)
    resp = client.post("/v1/jobs", files={"image": ("toy.jpg", PHOTO), "style_image": ("look.png", LOOK)},
                       data={"styles": "look"})
    assert resp.status_code == 202, resp.text
    job = resp.json()["id"]
    stem = relpath_of(job).rsplit(".", 1)[0]  # api/<time>-<random>
    sidecar = sidecar_of(store, job)
    assert sidecar == {"styles": ["look"], "style_image": f"styles/{stem}.png"}
    assert store.get(sidecar["style_image"]).body == LOOK


def test_base64_and_an_existing_key_are_taken_in_json(settings, client):
    store = LocalStore(settings.store.root)
    body = {"image": base64.b64encode(PHOTO).decode(), "styles": ["look"],
            "style_image": "data:image/png;base64," + base64.b64encode(LOOK).decode()}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    key = sidecar_of(store, resp.json()["id"])["style_image"]
    assert key.startswith("styles/api/") and store.get(key).body == LOOK

    store.put("styles/shared/pastel.png", LOOK)
    resp = client.post("/v1/jobs", json=body | {"style_image": "styles/shared/pastel.png"})
    assert resp.status_code == 202, resp.text
    assert sidecar_of(store, resp.json()["id"])["style_image"] == "styles/shared/pastel.png"
    # A form's text field is a key too.
    resp = client.post("/v1/jobs", files={"image": ("t.jpg", PHOTO)},
                       data={"styles": "look", "style_image": "styles/shared/pastel.png"})
    assert resp.status_code == 202 and sidecar_of(store, resp.json()["id"])["style_image"] == "styles/shared/pastel.png"


@pytest.mark.parametrize(("files", "data", "status", "says"), [
    ({"style_image": ("x.png", b"MZ not a picture" * 8)}, {"styles": "look"}, 415, "style_image: "),
    ({"style_image": ("x.png", b"")}, {"styles": "look"}, 415, "style_image: "),
    ({"style_image": ("x.png", LOOK)}, {}, 422, "style 'toon' has none"),
    ({}, {"styles": "look", "style_image": "inputs/other.jpg"}, 422, "neither a key under 'styles/'"),
    ({}, {"styles": "look", "style_image": "styles/../inputs/a.jpg"}, 422, "'..' parts"),
    ({}, {"styles": "look"}, 422, "style 'look' takes its style picture from each input"),
    ({"style_image": ("x.png", LOOK)}, {"styles": "look", "style_image": "styles/a.png"}, 422, "given twice"),
    ({"style_image": ("x.png", photo_bytes(400, 400, fmt="BMP"))}, {"styles": "look"}, 413, "200,000"),
])
def test_bad_pictures_are_named_and_nothing_is_written(settings, client, files, data, status, says):
    resp = client.post("/v1/jobs", files={"image": ("toy.jpg", PHOTO)} | files, data=data)
    assert resp.status_code == status, resp.text
    problem = resp.json()
    assert problem["field"] == ("styles" if "each input" in says else "style_image"), problem
    assert says in problem["detail"], problem
    assert not list(LocalStore(settings.store.root).list(""))


def test_two_picture_parts_are_refused(client):
    resp = client.post("/v1/jobs", files=[("image", ("t.jpg", PHOTO)), ("style_image", ("a.png", LOOK)),
                                          ("style_image", ("b.png", LOOK))], data={"styles": "look"})
    assert resp.status_code == 422 and resp.json()["field"] == "style_image"


def test_the_picture_is_part_of_the_idempotency_fingerprint(client):
    headers = {"Idempotency-Key": "one"}
    first = client.post("/v1/jobs", files={"image": ("t.jpg", PHOTO), "style_image": ("a.png", LOOK)},
                        data={"styles": "look"}, headers=headers)
    again = client.post("/v1/jobs", files={"image": ("t.jpg", PHOTO), "style_image": ("a.png", LOOK)},
                        data={"styles": "look"}, headers=headers)
    assert first.status_code == 202 and again.status_code == 202 and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", files={"image": ("t.jpg", PHOTO),
                                           "style_image": ("b.png", photo_bytes(80, 80, fmt="PNG", seed=10))},
                        data={"styles": "look"}, headers=headers)
    assert other.status_code == 422 and other.json()["field"] == "Idempotency-Key"
