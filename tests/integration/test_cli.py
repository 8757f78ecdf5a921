"""The command line on the embedded default store: every subcommand, config errors, --help."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from processor.cli.main import main
from processor.errors import EXIT_CONFIG, EXIT_SOME_FAILED
from processor.manifest import Manifest
from testkit.images import photo_bytes


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with a config pointing at ./bucket, like the quickstart."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROCESSOR_CONFIG", raising=False)
    (tmp_path / "config.yaml").write_text(
        "store: {kind: local, root: bucket}\n"
        "styles: {toon: {engine: toon, variants: 2, max_side: 256}}\n"
        # No fixed port: test sessions run side by side on one machine.
        "metrics: {port: 0}\n"
    )
    photos = tmp_path / "photos" / "shelf"
    photos.mkdir(parents=True)
    (photos / "cow.jpg").write_bytes(photo_bytes(320, 240))
    (photos / "bear.png").write_bytes(photo_bytes(240, 320, fmt="PNG", seed=1))
    (photos / "broken.jpg").write_bytes(b"<!DOCTYPE html><html></html>")
    return tmp_path


@pytest.mark.parametrize("command", ["run", "process", "submit", "status", "results", "retry", "doctor", "schema"])
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out) > 200


def drop_in_bucket(project: Path, relpath: str) -> None:
    """Put a file from photos/ straight into the bucket's inputs/, as a user may: the way a file
    that is no photo reaches the worker (``submit`` refuses it)."""
    target = project / "bucket/inputs" / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(project / "photos" / relpath, target)


def test_submit_run_status_results(project, capsys):
    assert main(["submit", "photos", "-q"]) == EXIT_SOME_FAILED  # broken.jpg is refused, the photos go
    assert not (project / "bucket/inputs/shelf/broken.jpg").exists()
    drop_in_bucket(project, "shelf/broken.jpg")
    assert (project / "bucket/inputs/shelf/cow.jpg").exists()
    assert main(["run", "--once"]) == 0
    manifest = Manifest.model_validate_json((project / "bucket/outputs/shelf/cow/manifest.json").read_text())
    assert [v.key for v in manifest.variants] == ["outputs/shelf/cow/toon-00.png", "outputs/shelf/cow/toon-01.png"]
    assert (project / "bucket/failed/shelf/broken.jpg.json").exists()

    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["done"], status["failed"], status["pending"], status["in_progress"]) == (2, 1, 0, 0)
    assert status["recent_failures"][0]["input"] == "inputs/shelf/broken.jpg"
    assert "HTML" in status["recent_failures"][0]["message"]

    assert main(["results", "shelf/cow.jpg", "--out", "got"]) == 0
    assert sorted(p.name for p in (project / "got/cow").iterdir()) == [
        "contact-sheet.jpg", "manifest.json", "toon-00.png", "toon-01.png"]
    assert main(["results", "shelf/broken.jpg", "--out", "got"]) == 1
    assert "UnsupportedFormat" in capsys.readouterr().err


def test_run_style_override_must_exist(project, capsys):
    assert main(["run", "--once", "--style", "nope"]) == EXIT_CONFIG
    assert "nope" in capsys.readouterr().err


def test_process_local_files(project, capsys):
    assert main(["process", "photos", "--out", "out", "-q"]) == 1  # one input is broken
    assert (project / "out/shelf/cow/toon-01.png").exists()
    assert (project / "out/shelf/cow/manifest.json").exists()
    failure = json.loads((project / "out/shelf/broken.failed.json").read_text())
    assert failure["error"] == "UnsupportedFormat"


def test_process_honours_a_sidecar_like_the_worker(project, capsys):
    """`process` and `run` share one item pipeline: a photo.json beside a photo changes both the
    same way, and both write the same variant bytes."""
    (project / "photos/shelf/cow.json").write_text('{"variants": 1, "seed": 7}')
    (project / "photos/shelf/broken.jpg").unlink()
    assert main(["process", "photos", "--out", "out", "-q"]) == 0
    local = Manifest.model_validate_json((project / "out/shelf/cow/manifest.json").read_text())
    assert [(v.key, v.seed) for v in local.variants] == [("toon-00.png", 7)]
    assert not (project / "out/shelf/cow.failed.json").exists()  # the sidecar is not an input
    assert "2 processed, 0 failed" in capsys.readouterr().out

    assert main(["submit", "photos", "-q"]) == 0
    assert main(["run", "--once"]) == 0
    bucket = Manifest.model_validate_json((project / "bucket/outputs/shelf/cow/manifest.json").read_text())
    assert [(v.seed, v.sha256) for v in bucket.variants] == [(v.seed, v.sha256) for v in local.variants]


def test_process_reports_a_bad_sidecar_as_a_failure_of_its_photo(project, capsys):
    (project / "photos/shelf/cow.json").write_text('{"variants": 0}')
    assert main(["process", "photos", "--out", "out", "-q"]) == 1
    failure = json.loads((project / "out/shelf/cow.failed.json").read_text())
    assert failure["error"] == "InvalidSidecar" and "variants" in failure["message"]


def test_unknown_key_names_the_key_and_the_file(project, capsys):
    (project / "bad.yaml").write_text("store:\n  kind: local\n  rot: bucket\n")
    assert main(["status", "--config", "bad.yaml"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "store.rot" in err and "bad.yaml" in err


def test_bad_value_from_the_environment_names_the_variable(project, capsys, monkeypatch):
    monkeypatch.setenv("PROCESSOR_CLAIMS__TTL_S", "soon")
    assert main(["status"]) == EXIT_CONFIG
    assert "PROCESSOR_CLAIMS__TTL_S" in capsys.readouterr().err


def test_missing_explicit_config_is_fatal(project, capsys):
    assert main(["run", "--once", "--config", "nowhere.yaml"]) == EXIT_CONFIG
    assert "nowhere.yaml" in capsys.readouterr().err


def test_doctor_on_the_local_store(project, capsys):
    (project / "bucket").mkdir()  # doctor only reads: it checks a bucket, never makes one
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "conditional create" in out and "atomic" in out and "style toon" in out


def test_schema_matches_the_committed_docs(tmp_path):
    assert main(["schema", "--write", str(tmp_path)]) == 0
    docs = Path(__file__).resolve().parents[2] / "docs"
    for name in ("manifest.schema.json", "failure.schema.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((docs / name).read_text())


def test_python_dash_m_and_json_logs(project):
    """The installed entry point, as a user runs it; logs are JSON lines when not on a terminal."""
    submitted = subprocess.run([sys.executable, "-m", "processor", "submit", "photos", "-q"], check=False)
    assert submitted.returncode == EXIT_SOME_FAILED
    drop_in_bucket(project, "shelf/broken.jpg")
    proc = subprocess.run([sys.executable, "-m", "processor", "run", "--once"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    names = {e["event"] for e in events}
    assert {"worker_start", "committed", "input_failed", "worker_stop"} <= names
    assert all("key" in e for e in events if e["event"] in ("committed", "input_failed"))


def test_exit_codes_are_distinct_and_leave_2_to_argparse(capsys):
    from processor import errors

    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes), codes
    assert [name for name, value in codes.items() if value == 2] == ["EXIT_USAGE"]
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--no-such-flag"])
    assert exit_info.value.code == errors.EXIT_USAGE
