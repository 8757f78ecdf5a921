"""The upload page's picture of the look, in a real headless browser against a real ``processor
serve`` on the local store: offered only while a chosen style reads one (an IP-Adapter style), and
sent as the job's ``style_image``. No worker: what is checked is what the page wrote."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.api_service import Service, serve, write_env
from testkit.images import photo_bytes
from tests.web.test_web_pages import CHROMIUM, WAIT_MS, log_in

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM}")

CONFIG = """\
styles:
  toon: {engine: toon, variants: 1}
  look: {engine: img2img, model: some/model, ip_adapter: {model: h94/IP-Adapter}}
run: {styles: [toon]}
metrics: {port: 0}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("web-look")
    env = write_env(tmp, {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")})
    Path(env["PROCESSOR_CONFIG"]).write_text(CONFIG)
    with serve(env, tmp) as api:
        yield api


@pytest.fixture
def page(service: Service, tmp_path: Path) -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = browser.new_context(base_url=service.url, viewport={"width": 1200, "height": 900})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield pg
        finally:
            browser.close()
        assert not errors, errors


def test_the_look_picture_is_offered_for_ip_adapter_styles_and_sent_with_the_job(service, page, tmp_path):
    pg = page
    log_in(pg)
    look = pg.locator("#look")
    assert pg.locator("#look-picture").count() == 1
    assert not look.is_visible()  # toon, the default, reads no picture
    pg.check("input[name=styles][value=look]")
    assert look.is_visible() and "look" in look.inner_text()
    pg.uncheck("input[name=styles][value=toon]")
    photo, picture = tmp_path / "toy.jpg", tmp_path / "pastel.png"
    photo.write_bytes(photo_bytes(120, 90))
    picture.write_bytes(photo_bytes(96, 96, fmt="PNG", seed=4))
    pg.set_input_files("#photos", str(photo))
    pg.set_input_files("#look-picture", str(picture))
    shots = Path(os.environ.get("WEB_SCREENSHOTS", tmp_path))  # looked at by whoever changes the form
    pg.screenshot(path=str(shots / "look-01-form.png"), full_page=True)
    pg.click("#submit")
    card = pg.locator("#jobs article.job[data-job]")
    card.wait_for(timeout=WAIT_MS)
    bucket = Path(service.env["PROCESSOR_STORE__ROOT"])
    [sidecar] = list((bucket / "inputs" / "api").rglob("*.json"))  # in the client's folder
    written = json.loads(sidecar.read_text())
    assert written["styles"] == ["look"] and written["style_image"].startswith("styles/api/")
    assert (bucket / written["style_image"]).read_bytes() == picture.read_bytes()

    # Back to toon alone: the picture is hidden again and not sent (toon would refuse it).
    pg.uncheck("input[name=styles][value=look]")
    pg.check("input[name=styles][value=toon]")
    assert not look.is_visible()
    pg.set_input_files("#photos", str(photo))
    pg.click("#submit")
    pg.locator("#jobs article.job[data-job]").nth(1).wait_for(timeout=WAIT_MS)
    sidecars = [json.loads(p.read_text()) for p in (bucket / "inputs" / "api").rglob("*.json")]
    assert sorted("style_image" in s for s in sidecars) == [False, True]
