"""A clip (``engine: animate``) on the job page, in a real headless browser (Debian's chromium driven
by Playwright) against a real ``processor serve`` on the local store: the ``<video>`` loads the MP4
the worker's encoder wrote (through the files route, byte ranges and all) with the animated WebP
preview as its poster. The job is committed as the worker commits one (``testkit.clips``); the
clip's frames are drawn, so no model runs.

The screenshot is kept as a test artefact (pytest's tmp dir; ``$SCREENSHOT_DIR`` when set).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.config import load_settings
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.api_service import TOKEN, Service, serve, write_env
from testkit.clips import clip_variant, commit_clip_job, moving_frames
from testkit.images import photo_bytes, photo_image

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytest.importorskip("av", reason="PyAV (the sd extra) encodes the clip")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM} (apt-get install chromium; "
                                "CI installs it in .ci/run)")

#: Milliseconds the page may take to load the clip's metadata (a hang guard, not a timing).
WAIT_MS = 60_000
#: The clip: frames, rate and size (even sides; big enough to see in the screenshot).
FRAMES, FPS, SIZE = 24, 12, (192, 128)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("web-clips")
    env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")})
    with serve(env, tmp) as api:
        yield api


def test_the_job_page_plays_a_clip_with_its_preview_as_poster(service: Service, tmp_path: Path) -> None:
    with service.client() as api:
        made = api.post("/v1/jobs", files={"image": ("bear.jpg", photo_bytes(180, 120, seed=8))})
        assert made.status_code == 202, made.text
        job = made.json()["id"]
        input_key = api.get(f"/v1/jobs/{job}").json()["input"]
    # No worker here: the job is finished as the worker would finish it, with a 2-second clip.
    store = LocalStore(Path(service.env["PROCESSOR_STORE__ROOT"]))
    settings = load_settings(service.env["PROCESSOR_CONFIG"])
    commit_clip_job(store, KeyLayout(settings.prefixes), input_key, store.head(input_key).etag, photo_image(180, 120),
                    [clip_variant("dance", 0, moving_frames(*SIZE, FRAMES), FPS)])

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = browser.new_context(base_url=service.url, viewport={"width": 900, "height": 700})
            pg = context.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            pg.goto(f"/login?next=/jobs/{job}")
            pg.fill("input[name=token]", TOKEN)
            pg.click("#login")
            pg.wait_for_url(f"**/jobs/{job}")
            video = pg.locator("article.single video[data-role=clip]")
            assert video.count() == 1
            assert video.get_attribute("poster").endswith("/files/dance-00.webp")
            assert video.get_attribute("src").endswith("/files/dance-00.mp4")
            # HAVE_METADATA (1) or more: chromium read the MP4's index and knows its length.
            pg.wait_for_function("() => document.querySelector('video[data-role=clip]').readyState >= 1",
                                 timeout=WAIT_MS)
            state = pg.evaluate("""() => { const v = document.querySelector('video[data-role=clip]');
                return {ready: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
                        error: v.error && v.error.code}; }""")
            assert state["ready"] >= 1 and state["error"] is None, state
            assert state["duration"] == pytest.approx(FRAMES / FPS, abs=0.1), state
            assert (state["width"], state["height"]) == SIZE
            assert "24 frames at 12 fps" in pg.inner_text("article.single figcaption")
            shots = [tmp_path / "clip-job-page-poster.png", tmp_path / "clip-job-page-playing.png"]
            pg.screenshot(path=str(shots[0]), full_page=True)  # as a visitor finds it: the poster
            # Play it (muted, so the browser allows it) until past half-way, then pause there.
            pg.evaluate("() => document.querySelector('video[data-role=clip]').play()")
            pg.wait_for_function("() => document.querySelector('video[data-role=clip]').currentTime >= 1.0",
                                 timeout=WAIT_MS)
            played = pg.evaluate("""() => { const v = document.querySelector('video[data-role=clip]'); v.pause();
                return {time: v.currentTime, ready: v.readyState, error: v.error && v.error.code}; }""")
            assert played["time"] >= 1.0 and played["ready"] >= 2 and played["error"] is None, played
            pg.screenshot(path=str(shots[1]), full_page=True)
            for shot in shots:
                if os.environ.get("SCREENSHOT_DIR"):
                    target = Path(os.environ["SCREENSHOT_DIR"])
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(shot, target / shot.name)
                print(f"\nscreenshot: {shot}")
            context.close()
        finally:
            browser.close()
    assert not errors, errors
