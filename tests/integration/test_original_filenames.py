"""A photo's original file name travels with it: ``processor submit`` and a form upload record it
(``x-amz-meta-filename``: ASCII, bounded), the worker copies it into the manifest or failure record
(``source.filename``), and the job (``JobOut.filename``), its page, the browse page and
``processor status`` show it. ``submit`` refuses a file that is no photo before uploading anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.cli.main import main
from processor.config import Settings, load_settings
from processor.errors import EXIT_SOME_FAILED
from processor.manifest import FailureRecord, Manifest
from processor.pipeline.render import EngineRegistry
from processor.pipeline.toon import ToonEngine
from processor.queue.submit import (
    FILENAME_METADATA_KEY,
    MAX_FILENAME_BYTES,
    clean_filename,
    filename_from_metadata,
    filename_metadata,
)
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes
from tests.cli_project import cli_project

# --------------------------------------------------------------------------- the stored value


@pytest.mark.parametrize("name", ["bear.jpg", "Teddy Bär 🧸.jpeg", "100%41 wool.png", "a=b&c;(d) [e].webp"])
def test_a_name_is_stored_as_ascii_and_reads_back_exactly(name: str) -> None:
    stored = filename_metadata(name)
    value = stored[FILENAME_METADATA_KEY]
    assert value.isascii() and value.isprintable() and len(value) <= MAX_FILENAME_BYTES
    assert filename_from_metadata({"Filename": value}) == name  # S3 may hand back another case


def test_only_the_last_path_segment_is_kept_and_control_characters_go() -> None:
    assert clean_filename("C:\\Users\\me\\Pictures\\toy.jpg") == "toy.jpg"
    assert clean_filename("../../etc/toy.jpg") == "toy.jpg"
    assert clean_filename("to\x00y\n.jpg") == "toy.jpg"
    assert clean_filename("photos/") is None and clean_filename("..") is None and clean_filename("") is None


def test_a_long_name_is_shortened_to_the_bound_keeping_its_extension() -> None:
    value = filename_metadata("ü" * 400 + ".jpeg")[FILENAME_METADATA_KEY]
    assert len(value) <= MAX_FILENAME_BYTES
    back = filename_from_metadata({FILENAME_METADATA_KEY: value})
    assert back is not None and back.endswith("~.jpeg") and back.startswith("ü" * 10)
    assert filename_metadata("toy.jpg", budget=3) == {}  # nothing fits: no name rather than a broken one
    assert filename_metadata("toy.jpg", budget=7) == {FILENAME_METADATA_KEY: "toy.jpg"}


def test_a_hand_written_value_is_cleaned_on_the_way_out() -> None:
    assert filename_from_metadata({FILENAME_METADATA_KEY: "%2E%2E%2Fsecret%0A.jpg"}) == "secret.jpg"
    assert filename_from_metadata({"prompt": "x"}) is None and filename_from_metadata(None) is None


# --------------------------------------------------------------------------- processor submit


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return cli_project(tmp_path, monkeypatch, {"Teddy Bär.jpg": photo_bytes(96, 80), "notes.txt": b"buy more toys\n",
                                               "page.png": b"<!DOCTYPE html><html>saved the page</html>"})


def test_submit_refuses_what_is_no_photo_and_uploads_the_rest(project: Path, capsys) -> None:
    assert main(["submit", "photos", "-q"]) == EXIT_SOME_FAILED
    captured = capsys.readouterr()
    refused = [line for line in captured.err.splitlines() if line.startswith("refused ")]
    assert len(refused) == 2, captured.err
    assert any(line.startswith("refused photos/notes.txt: ") and "text" in line and "JPEG, PNG, WebP or HEIC" in line
               for line in refused)
    assert any(line.startswith("refused photos/page.png: ") and "HTML" in line for line in refused)
    assert "uploaded 1 file(s)" in captured.out and "refused 2 that are not photos" in captured.out
    inputs = sorted(p.name for p in (project / "bucket/inputs").iterdir())
    assert inputs == ["Teddy Bär.jpg"]
    head = LocalStore(project / "bucket").head("inputs/Teddy Bär.jpg")
    assert filename_from_metadata(head.metadata) == "Teddy Bär.jpg"


def test_submit_of_nothing_but_refusals_uploads_nothing(project: Path, capsys) -> None:
    assert main(["submit", "photos/notes.txt", "-q"]) == EXIT_SOME_FAILED
    assert not (project / "bucket/inputs").exists()
    assert not (project / "bucket/.processor/rescan.json").exists()  # no hint for nothing


def test_the_name_reaches_the_manifest_the_failure_record_and_status(project: Path, capsys) -> None:
    assert main(["submit", "photos/Teddy Bär.jpg", "-q"]) == 0
    store = LocalStore(project / "bucket")
    # What the HTTP API writes: a time-ordered key, the name in metadata; here a photo that is bad.
    store.put("inputs/api/0001-abc.jpg", b"<!DOCTYPE html><html></html>", metadata=filename_metadata("Eule.jpg"))
    assert main(["run", "--once", "-q"]) == 0
    manifest = Manifest.model_validate_json(store.get("outputs/Teddy Bär/manifest.json").body)
    assert manifest.source.filename == "Teddy Bär.jpg"
    failure = FailureRecord.model_validate_json(store.get("failed/api/0001-abc.jpg.json").body)
    assert failure.source.filename == "Eule.jpg"
    capsys.readouterr()
    assert main(["status"]) == 0
    assert "  inputs/api/0001-abc.jpg (Eule.jpg): UnsupportedFormat: " in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    (recent,) = json.loads(capsys.readouterr().out)["recent_failures"]
    assert recent["filename"] == "Eule.jpg"


# --------------------------------------------------------------------------- the HTTP API and the pages


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 1, "max_side": 64}},
                         run={"styles": ["toon"]}, pipeline={"contact_sheet_height": 32})


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "bucket")


@pytest.fixture
def client(settings: Settings, store: LocalStore) -> Iterator[TestClient]:
    yield TestClient(create_app(settings, store, keys=[]), base_url=OPEN_BASE_URL)


def run_worker(store: Any, settings: Settings) -> None:
    worker = Worker(store, settings, EngineRegistry(settings.styles, lambda name, style: ToonEngine(name, style)),
                    worker_id="w1")
    worker.setup()
    assert worker.run_once() == 0


def test_a_form_upload_keeps_its_file_name_from_queued_to_done(client: TestClient, settings: Settings,
                                                                 store: LocalStore) -> None:
    resp = client.post("/v1/jobs", files={"image": ("C:\\fakepath\\Mein Bär.jpg", photo_bytes(96, 72))})
    assert resp.status_code == 202, resp.text
    job = resp.json()["id"]
    queued = client.get(f"/v1/jobs/{job}").json()
    assert queued["status"] == "queued" and queued["filename"] == "Mein Bär.jpg"
    assert queued["input"].startswith("inputs/api/") and not queued["input"].endswith("Bär.jpg")
    run_worker(store, settings)
    done = client.get(f"/v1/jobs/{job}").json()
    assert done["status"] == "done" and done["filename"] == "Mein Bär.jpg"
    assert done["manifest"]["source"]["filename"] == "Mein Bär.jpg"
    # A page of jobs has no HEAD per job: an ended job's name comes from its result.
    (listed,) = client.get("/v1/jobs").json()["jobs"]
    assert listed["filename"] == "Mein Bär.jpg"
    page = client.get(f"/jobs/{job}").text
    assert "<title>Job Mein Bär.jpg · Toy cartoonizer</title>" in page
    assert 'data-role="filename">Mein Bär.jpg</span>' in page
    assert 'data-role="link">Mein Bär.jpg</a>' in client.get("/browse").text


def test_a_json_upload_and_a_dropped_in_photo_have_no_name(client: TestClient, store: LocalStore) -> None:
    import base64

    resp = client.post("/v1/jobs", json={"image": base64.b64encode(photo_bytes(96, 72)).decode()})
    assert resp.status_code == 202, resp.text
    assert client.get(f"/v1/jobs/{resp.json()['id']}").json()["filename"] is None
    store.put("inputs/dropped.jpg", photo_bytes(96, 72, seed=3))
    jobs = {j["input"]: j for j in client.get("/v1/jobs").json()["jobs"]}
    assert jobs["inputs/dropped.jpg"]["filename"] is None
    assert 'data-role="link">inputs/dropped.jpg</a>' in client.get("/browse").text
