"""The command line given wrong names, paths and endpoints: a clear error that says what to
change and a documented exit code, never a traceback."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from processor.cli.main import main
from processor.errors import EXIT_CONFIG, EXIT_DOCTOR, EXIT_INCOMPLETE, EXIT_MODEL
from testkit.images import photo_bytes


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # main() logs to the stderr it finds at its first call; a handler left by an earlier test
    # writes to that test's closed capture and prints a logging traceback into this one's.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    for name in [n for n in os.environ if n.startswith("PROCESSOR_")]:
        monkeypatch.delenv(name)
    (tmp_path / "config.yaml").write_text(
        "store: {kind: local, root: bucket}\n"
        "styles: {toon: {engine: toon, variants: 1, max_side: 128}}\n"
        "metrics: {port: 0}\n"
    )
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cow.jpg").write_bytes(photo_bytes(96, 80))
    return tmp_path


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def wrong_endpoint(project, monkeypatch):
    monkeypatch.setenv("PROCESSOR_STORE__KIND", "s3")
    monkeypatch.setenv("PROCESSOR_STORE__BUCKET", "toys")
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("PROCESSOR_STORE__ENDPOINT_URL", url)
    monkeypatch.setenv("PROCESSOR_STORE__MAX_ATTEMPTS", "1")
    monkeypatch.setenv("PROCESSOR_STORE__CONNECT_TIMEOUT_S", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    return url


def test_process_with_an_unknown_style(project, capsys):
    assert main(["process", "photos", "--out", "out", "--style", "nope"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "--style ['nope']: not defined under styles (defined: toon)" in err and "Traceback" not in err


def test_a_style_given_twice_is_refused(project, capsys):
    assert main(["run", "--once", "--style", "toon", "--style", "toon"]) == EXIT_CONFIG
    assert "more than once" in capsys.readouterr().err


def test_process_out_naming_a_file(project, capsys):
    (project / "taken").write_text("a file")
    assert main(["process", "photos", "--out", "taken"]) == EXIT_CONFIG
    assert "--out taken is a file; name a folder" in capsys.readouterr().err
    assert main(["process", "photos", "--out", "taken/sub"]) == EXIT_CONFIG
    assert "is inside taken, which is a file" in capsys.readouterr().err
    assert (project / "taken").read_text() == "a file"


def test_an_endpoint_without_a_scheme(project, capsys, monkeypatch):
    monkeypatch.setenv("PROCESSOR_STORE__KIND", "s3")
    monkeypatch.setenv("PROCESSOR_STORE__BUCKET", "toys")
    monkeypatch.setenv("PROCESSOR_STORE__ENDPOINT_URL", "127.0.0.1:8333")
    assert main(["status"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "store.endpoint_url" in err and "https://127.0.0.1:8333" in err and "Traceback" not in err


def test_status_against_a_wrong_endpoint_says_to_check_it(wrong_endpoint, capsys):
    assert main(["status"]) == EXIT_INCOMPLETE
    err = capsys.readouterr().err
    assert f"check store.endpoint_url ({wrong_endpoint})" in err and "Traceback" not in err


def test_the_endpoint_hint_never_prints_credentials(wrong_endpoint, capsys, monkeypatch):
    port = wrong_endpoint.rsplit(":", 1)[1]
    monkeypatch.setenv("PROCESSOR_STORE__ENDPOINT_URL", f"http://AKIDSECRET:hunter2@127.0.0.1:{port}")
    main(["status"])
    err = capsys.readouterr().err
    assert f"check store.endpoint_url (http://127.0.0.1:{port})" in err
    assert "hunter2" not in err.split("check store.endpoint_url", 1)[1]


def test_doctor_does_not_say_store_ok_above_a_failing_listing(wrong_endpoint, capsys):
    assert main(["doctor"]) == EXIT_DOCTOR
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert " FAIL " in rows["store"] and "store.endpoint_url" in rows["store"]
    assert "list inputs" in out and " FAIL " in out.split("list inputs", 1)[1].splitlines()[0]


def test_results_for_an_input_that_does_not_exist(project, capsys):
    assert main(["submit", "photos", "-q"]) == 0
    assert main(["results", "nope.jpg", "--out", "got"]) == 1
    err = capsys.readouterr().err
    assert "inputs/nope.jpg: no such input" in err
    # An input that exists but has no result yet says so instead.
    assert main(["results", "cow.jpg", "--out", "got"]) == 1
    assert "no results yet" in capsys.readouterr().err


def test_a_model_missing_when_offline_mode_is_off_says_the_hub_is_unreachable(project, monkeypatch):
    """Without offline mode, huggingface_hub raises LocalEntryNotFoundError when it could not reach
    the Hub: the message must say that, not that offline mode is on."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from processor.config import ModelSettings
    from processor.errors import ModelUnavailableError
    from processor.models.loader import ModelLoader

    def unreachable(*args, **kwargs):
        assert kwargs.get("local_files_only") is False
        raise LocalEntryNotFoundError("Connection refused and not in the cache")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(ModelUnavailableError) as info:
        ModelLoader(ModelSettings(offline=False)).resolve("org/missing")
    assert "Hub could not be reached" in str(info.value) and "offline mode is on" not in str(info.value)
    assert info.value.exit_code == EXIT_MODEL

    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: (_ for _ in ()).throw(LocalEntryNotFoundError("offline")))
    with pytest.raises(ModelUnavailableError, match="offline mode is on"):
        ModelLoader(ModelSettings(offline=True)).resolve("org/missing")


def test_submit_prompt_refuses_what_the_worker_would_refuse(project, capsys):
    assert main(["submit", "photos", "-q", "--prompt", "x" * 2001]) == EXIT_CONFIG
    assert "at most 2000 characters" in capsys.readouterr().err
    assert main(["submit", "photos", "-q", "--prompt", "ü" * 800]) == EXIT_CONFIG
    assert "S3 keeps at most 2,048" in capsys.readouterr().err
    assert not (project / "bucket" / "inputs").exists()
