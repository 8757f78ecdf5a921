"""The subject mask on the web pages, in a real headless browser: a real ``processor serve`` and a
real ``processor run`` daemon whose style changes the background (toon, then a generated beach
from a tiny random-weight SD) with the default mask (the real u2netp, from the test model cache).
The upload page's card and the job's own page both show the mask drawn over the photo."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.api_service import Service, serve, worker, write_env
from testkit.images import encode
from testkit.photos import composed_photo
from tests.web.test_web_pages import CHROMIUM, WAIT_MS, images_loaded, log_in

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytest.importorskip("diffusers", reason="the background style needs the sd extra")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM}")

CONFIG = """\
styles:
  beach:
    engine: toon
    variants: 1
    max_side: 192
    background: {mode: generate, model: "%(model)s", prompt: a sunny beach, steps: 2}
run: {styles: [beach], poll_interval_s: 0.2, idle_backoff_max_s: 0.5, full_rescan_s: 2}
claims: {ttl_s: 60, renew_s: 5, progress_s: 0.2}
pipeline: {contact_sheet_height: 64}
metrics: {port: 0}
api: {poll_s: 0.1}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, u2netp_model: Path) -> Iterator[Service]:
    from testkit.models.sd import build_sd

    tmp = tmp_path_factory.mktemp("web-mask")
    model = build_sd(tmp / "tiny-sd")
    env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")})
    Path(env["PROCESSOR_CONFIG"]).write_text(CONFIG % {"model": model})
    with serve(env, tmp) as api, worker(env, tmp) as daemon:
        api.worker = daemon
        yield api


@pytest.fixture
def page(service: Service) -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = browser.new_context(base_url=service.url, viewport={"width": 1200, "height": 1100})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield pg
        finally:
            browser.close()
        assert not errors, errors


def test_the_job_page_shows_the_mask_over_the_photo(service: Service, page: object, tmp_path: Path) -> None:
    pg = page
    log_in(pg, "/")
    photo = tmp_path / "bear.jpg"
    photo.write_bytes(encode(composed_photo("window", 2).image, "JPEG"))
    pg.set_input_files("#photos", [str(photo)])
    pg.click("#submit")
    pg.wait_for_function("() => document.querySelectorAll('#jobs [data-role=job][data-status=done]').length == 1",
                         timeout=WAIT_MS * 4)  # the first job loads the models
    # The card drawn by the page's script from the job's final event.
    card = pg.locator("#jobs [data-role=job]").first
    assert card.locator("[data-role=mask-overlay] img").count() == 1
    assert all(w > 0 for w in images_loaded(pg, "#jobs [data-role=mask-overlay]"))
    job = card.get_attribute("data-job")
    with service.client() as api:
        body = api.get(f"/v1/jobs/{job}").json()
    background = body["manifest"]["variants"][0]["background"]
    assert background["segmenter"] == "onnx:u2netp" and background["mask_overlay"].endswith("/mask-overlay.jpg")
    overlay = pg.request.get(body["mask_overlay"])
    assert overlay.status == 200 and overlay.headers["content-type"] == "image/jpeg"

    # The job's own page, rendered by the server.
    pg.goto(f"/jobs/{job}")
    figure = pg.locator("article.single [data-role=mask-overlay]")
    assert figure.count() == 1 and "Subject mask" in figure.inner_text()
    (width,) = images_loaded(pg, "article.single [data-role=mask-overlay]")
    assert width == 384  # the photo's own size (under the overlay's 1024 px cap)
    shot = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path) / "mask-01-job-page.png"  # looked at by whoever
    shot.parent.mkdir(parents=True, exist_ok=True)                                       # changes the page
    pg.screenshot(path=str(shot), full_page=True)
