"""The Gradio Space (deploy/space/app.py): launched as a Space launches it (``python app.py``) on a
free port, driven with ``gradio_client`` on the ``toon`` style; its progress bridge; and its front
end to an API (``PROCESSOR_API_URL``): a real ``processor serve`` and ``processor run`` daemon over a
local bucket, the Space's handler called directly."""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from testkit.api_service import TOKEN, serve, worker, write_env
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S

gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (the space extra)")
pytest.importorskip("gradio", reason="gradio is not installed (the space extra)")

APP = Path(__file__).resolve().parents[2] / "deploy" / "space" / "app.py"
CONFIG = """\
styles: {toon: {engine: toon, variants: 3, max_side: 128}}
run: {styles: [toon]}
pipeline: {contact_sheet_height: 64}
"""
#: Seconds the app gets to import gradio and the pipeline and answer: a hang guard.
START_TIMEOUT_S = HANG_GUARD_S


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("space")
    (tmp / "config.yaml").write_text(CONFIG)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "GRADIO_"))}
    env |= {"PROCESSOR_CONFIG": str(tmp / "config.yaml"), "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
            "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    log = tmp / "space.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(APP)], env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the Space did not answer:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_space_makes_toon_variants_for_gradio_client(space: str, tmp_path: Path) -> None:
    photo = tmp_path / "bear.jpg"
    photo.write_bytes(photo_bytes(200, 150, seed=3))
    client = gradio_client.Client(space, verbose=False, download_files=str(tmp_path / "downloads"))
    gallery, sheet, files, details = client.predict(gradio_client.handle_file(str(photo)), "toon", 2, 7,
                                                    api_name="/cartoonize")
    assert [item["caption"] for item in gallery] == ["toon #0 · seed 7", "toon #1 · seed 8"]
    for item in gallery:
        image = Image.open(item["image"])
        assert image.size == (128, 96)
    names = sorted(Path(f).name for f in files)
    assert names == ["contact-sheet.jpg", "toon-00.png", "toon-01.png"], names
    sheet_file = Image.open(next(f for f in files if f.endswith("contact-sheet.jpg")))
    assert Image.open(sheet).size == sheet_file.size and sheet_file.height >= 64
    png = Image.open(io.BytesIO(Path(next(f for f in files if f.endswith("toon-00.png"))).read_bytes()))
    assert "parameters" in png.text  # the real output files, with how they were made
    assert [(v["style"], v["index"], v["seed"]) for v in details["variants"]] == [("toon", 0, 7), ("toon", 1, 8)]


def test_a_bad_photo_or_bad_choice_says_what_to_change(space: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    client = gradio_client.Client(space, verbose=False, download_files=str(tmp_path / "downloads"))
    with pytest.raises(Exception, match="What to change"):
        client.predict(gradio_client.handle_file(str(broken)), "toon", 1, -1, api_name="/cartoonize")
    photo = tmp_path / "ok.jpg"
    photo.write_bytes(photo_bytes(120, 90))
    with pytest.raises(Exception, match="maximum value 8"):  # the form's own bound (MAX_VARIANTS)
        client.predict(gradio_client.handle_file(str(photo)), "toon", 5000, -1, api_name="/cartoonize")


def _load_app():
    if "space_app" in sys.modules:
        return sys.modules["space_app"]
    spec = importlib.util.spec_from_file_location("space_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_progress_is_one_bar_per_round_over_its_steps() -> None:
    app = _load_app()
    calls: list[tuple[object, str]] = []
    bridge = app.ProgressBridge(lambda value, desc, **_: calls.append((value, desc)))
    bridge(stage="style:modern-disney", round=2, rounds=4, step=3, steps=12)
    bridge(stage="style:modern-disney", round=3, rounds=4)
    bridge(stage="style:toon")
    assert calls == [((3, 12), "modern-disney · round 2 of 4"), ((2, 4), "modern-disney · round 3 of 4"),
                     (0, "toon")]


def test_the_pipeline_reports_to_the_bar_in_process(tmp_path: Path) -> None:
    app = _load_app()
    from processor.config import load_settings

    settings = load_settings(None, styles={"toon": {"engine": "toon", "variants": 1, "max_side": 96}},
                             run={"styles": ["toon"]})
    photo = tmp_path / "p.jpg"
    photo.write_bytes(photo_bytes(120, 90))
    reports: list[dict] = []
    result = app.Cartoonizer(settings)(str(photo), "toon", 1, 0, report=lambda **r: reports.append(r))
    assert {"stage": "style:toon"} in reports and len(result.gallery) == 1


def test_old_request_folders_are_pruned(tmp_path: Path) -> None:
    app = _load_app()
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "toon-00.png").write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    app._prune(tmp_path, 3600)
    assert not old.exists() and (new / "toon-00.png").exists()


# ----------------------------------------------------------------- in front of an API


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real ``processor serve`` with a ``processor run`` daemon over a local bucket: its URL and
    the config both were given (the Space reads the same one for its styles)."""
    tmp = tmp_path_factory.mktemp("space-api")
    env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")})
    with serve(env, tmp) as service, worker(env, tmp):
        yield service.url, Path(env["PROCESSOR_CONFIG"])


@pytest.fixture
def front_end(api_url: tuple[str, Path]):
    from processor.config import load_settings

    app = _load_app()
    url, config = api_url
    return app.build_form(load_settings(str(config)), {app.API_URL_ENV: url, app.API_TOKEN_ENV: TOKEN})


def test_the_space_in_front_of_an_api_shows_what_in_process_shows(front_end, tmp_path: Path) -> None:
    app = _load_app()
    assert isinstance(front_end, app.ApiCartoonizer) and front_end.concurrency == app.API_CONCURRENCY
    photo = tmp_path / "bear.jpg"
    photo.write_bytes(photo_bytes(200, 150, seed=3))
    reports: list[dict] = []
    result = front_end(str(photo), "toon", 2, 7, report=lambda **r: reports.append(r))
    assert isinstance(result, app.SpaceResult)
    assert [caption for _, caption in result.gallery] == ["toon #0 · seed 7", "toon #1 · seed 8"]
    assert [image.size for image, _ in result.gallery] == [(128, 96), (128, 96)]
    names = sorted(Path(f).name for f in result.files)
    assert names == ["contact-sheet.jpg", "toon-00.png", "toon-01.png"], names
    sheet_file = Image.open(next(f for f in result.files if f.endswith("contact-sheet.jpg")))
    assert result.contact_sheet is not None and result.contact_sheet.size == sheet_file.size
    assert sheet_file.height >= 64
    png = Image.open(next(f for f in result.files if f.endswith("toon-00.png")))
    assert "parameters" in png.text  # the worker's own output files, downloaded through the API
    assert [(v["style"], v["index"], v["seed"]) for v in result.details["variants"]] == [("toon", 0, 7),
                                                                                         ("toon", 1, 8)]
    assert all(v["sha256"] for v in result.details["variants"])
    assert reports[0] == {"stage": "queued"} and all("stage" in r for r in reports)


def test_a_corrupt_photo_through_the_api_is_a_message_naming_the_problem(front_end, tmp_path: Path) -> None:
    import gradio as gr

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # sniffed as PNG, undecodable: the worker fails it
    with pytest.raises(gr.Error, match="What to change") as caught:
        front_end(str(broken), "toon", 1, -1)
    # The worker's failure record: what is wrong with the file, and what to do about it.
    assert "PNG file is truncated or damaged" in caught.value.message, caught.value.message
    assert "could not be decoded" in caught.value.message and "Traceback" not in caught.value.message


def test_what_the_api_refuses_is_a_message_with_the_field_and_the_fix(api_url: tuple[str, Path],
                                                                      tmp_path: Path) -> None:
    import gradio as gr

    from processor.config import load_settings

    app = _load_app()
    url, config = api_url
    settings = load_settings(str(config))
    photo = tmp_path / "ok.jpg"
    photo.write_bytes(photo_bytes(120, 90))
    good = app.ApiCartoonizer(settings, url, TOKEN)
    with pytest.raises(gr.Error, match=r"refused the request \(variants\).*What to change"):
        good(str(photo), "toon", 5000, -1)  # past the API's own bound
    with pytest.raises(gr.Error, match=r"refused the request.*What to change"):
        app.ApiCartoonizer(settings, url, "not-a-token")(str(photo), "toon", 1, -1)
    with pytest.raises(gr.Error, match="Upload a photo first"):
        good(None, "toon", 1, -1)


def test_an_api_that_does_not_answer_is_a_message_naming_the_setting(tmp_path: Path) -> None:
    import gradio as gr

    from processor.config import load_settings

    app = _load_app()
    settings = load_settings(None, styles={"toon": {"engine": "toon", "variants": 1, "max_side": 96}},
                             run={"styles": ["toon"]})
    photo = tmp_path / "ok.jpg"
    photo.write_bytes(photo_bytes(120, 90))
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(gr.Error, match=f"{app.API_URL_ENV}.*processor serve"):
        app.ApiCartoonizer(settings, closed, TOKEN)(str(photo), "toon", 1, -1)
    with pytest.raises(SystemExit, match=app.API_URL_ENV):
        app.build_form(settings, {app.API_URL_ENV: "cartoons.example.com"})
    assert isinstance(app.build_form(settings, {}), app.Cartoonizer)  # in-process stays the default
