"""A picture of the look sent with the photo to ``POST /v1/jobs`` (multipart ``style_image``) steers
that job's variants when a worker with the tiny IP-Adapter runs it, on the local store and on a
real SeaweedFS."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.cli.compose import build_registry
from processor.queue.jobs import relpath_of
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes
from tests.models.test_diffusion import img2img_style, make_settings, manifest_of
from tests.models.test_ip_adapter import ip_adapter

PHOTO = photo_bytes(160, 120, seed=5)
PICTURES = [photo_bytes(96, 96, fmt="PNG", seed=41), photo_bytes(96, 80, fmt="WEBP", seed=42)]


@pytest.mark.parametrize("backend", ["local", "seaweedfs"])
def test_an_uploaded_picture_steers_its_job(backend, request, tiny_sd, tiny_ip_adapter, tmp_path):
    # A style whose every input brings its picture: nothing of it is read from the config.
    settings = make_settings(tmp_path, {"yours": img2img_style(tiny_sd, variants=1,
                                                               ip_adapter=ip_adapter(tiny_ip_adapter))})
    store = LocalStore(settings.store.root) if backend == "local" else request.getfixturevalue("s3_store")
    client = TestClient(create_app(settings, store, keys=[]), base_url=OPEN_BASE_URL)
    jobs = []
    for i, picture in enumerate(PICTURES):
        resp = client.post("/v1/jobs", files={"image": ("toy.jpg", PHOTO), "style_image": (f"l{i}", picture)})
        assert resp.status_code == 202, resp.text
        jobs.append(resp.json()["id"])
    worker = Worker(store, settings, build_registry(settings), worker_id="w1")
    worker.setup()
    assert worker.run_once() == 0
    layout = KeyLayout(settings.prefixes)
    shas = []
    for job, picture, ext in zip(jobs, PICTURES, (".png", ".webp"), strict=True):
        assert client.get(f"/v1/jobs/{job}").json()["status"] == "done"
        relpath = relpath_of(job)
        [variant] = manifest_of(store, layout, "inputs/" + relpath).variants
        record = variant.parameters["ip_adapter"]
        key = "styles/" + relpath.rsplit(".", 1)[0] + ext
        assert record["style_image"] == f"bucket:{key}" and record["style_image_source"] == "input"
        assert record["style_image_sha256"] == hashlib.sha256(picture).hexdigest()
        assert record["style_image_etag"] == store.head(key).etag
        shas.append(variant.sha256)
    assert shas[0] != shas[1]  # one photo, one seed: the pictures made the difference
