"""The pages in a real headless browser (Debian's chromium, driven by Playwright) against a real
``processor serve`` and real ``processor run`` daemons on the local store, at desktop (1280 px)
and phone (390 px) widths: what the upload page offers while no worker runs and once one does
(a style no worker can load is greyed out with the reason), a job that waits for a worker that can
run its style, Browse in natural key order with a bad photo's failure (no Retry: it says what to
change) and the waiting job's Retry, which a capable worker then runs.

Every page is screenshot at both widths, under pytest's tmp dir or ``$WEB_SCREENSHOTS`` when set:
look at them after changing a page.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.api_service import TOKEN, Service, serve, stop, wait_status, worker, write_env
from testkit.images import photo_bytes
from testkit.waits import wait_until
from tests.web.test_web_pages import BROKEN_PNG, CHROMIUM, WAIT_MS, page_errors

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM} (apt-get install chromium; "
                                "CI installs it in .ci/run)")

#: The widths every page is checked and screenshot at: a desktop browser and a phone.
WIDTHS = {"desktop": 1280, "phone": 390}
#: Pixels a checkbox's centre may sit off its label's centre and still count as on its line.
SAME_LINE_PX = 6
#: Characters: a word this long may break where it must (a key with no spaces); shorter ones never.
LONG_WORD = 24

#: Per label: the vertical gap between the centres of its checkbox and its text, and the horizontal
#: gap from the checkbox's right edge to the text's left edge.
CHOICE_GAPS_JS = """() => [...document.querySelectorAll('fieldset.styles label')].map((l) => {
    const box = l.querySelector('input').getBoundingClientRect();
    const text = l.querySelector('span').getBoundingClientRect();
    return [l.textContent.trim(), Math.abs((box.top + box.bottom) / 2 - (text.top + text.bottom) / 2),
            text.left - box.right]; })"""
#: Words of an element's text broken across lines between two letters or digits (a break after a
#: hyphen or a slash is where a browser may break).
BROKEN_WORDS_JS = """(el) => {
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT), range = document.createRange(), broken = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const text = node.textContent; let top = null;
        for (let i = 0; i < text.length; i++) {
            range.setStart(node, i); range.setEnd(node, i + 1);
            const rect = range.getClientRects()[0];
            if (!rect) continue;
            if (top !== null && rect.top > top + 2 && /\\w/.test(text[i - 1]) && /\\w/.test(text[i])) {
                const start = text.lastIndexOf(' ', i) + 1, end = text.indexOf(' ', i);
                broken.push(text.slice(start, end < 0 ? text.length : end));
            }
            top = rect.top;
        }
    }
    return broken; }"""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    store_env = {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp_path / "bucket")}
    # 'disney' cannot load on any worker of this test (its model folder is missing).
    env = write_env(tmp_path, store_env, styles={"disney": {"engine": "img2img", "model": str(tmp_path / "no-model"),
                                                            "variants": 1}})
    with serve(env, tmp_path) as api:
        yield api


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WEB_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(service: Service) -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = browser.new_context(base_url=service.url, viewport={"width": WIDTHS["desktop"], "height": 900})
        pg = context.new_page()
        errors = page_errors(pg)
        try:
            yield pg
        finally:
            browser.close()
        assert not errors, errors


def at_both_widths(pg: object, shots: Path, name: str, path: str) -> Iterator[str]:
    """Load ``path`` at each width, yield the width's name (the caller checks the page), then
    screenshot it."""
    for width_name, width in WIDTHS.items():
        pg.set_viewport_size({"width": width, "height": 900})
        pg.goto(path)
        yield width_name
        pg.screenshot(path=str(shots / f"{name}-{width_name}.png"), full_page=True)


def assert_choices_keep_their_labels(pg: object, where: str) -> None:
    for label, off_centre, gap in pg.evaluate(CHOICE_GAPS_JS):
        assert off_centre <= SAME_LINE_PX and 0 <= gap <= 16, (where, label, off_centre, gap)


def assert_no_word_broken(pg: object, selector: str, where: str) -> None:
    for element in pg.query_selector_all(selector):
        broken = [w for w in element.evaluate(BROKEN_WORDS_JS) if len(w) < LONG_WORD]
        assert not broken, (where, selector, broken)


def test_pages_offer_what_workers_run_and_say_what_to_do_at_desktop_and_phone_width(
    service: Service, page: object, shots: Path, tmp_path: Path
) -> None:
    pg = page
    pg.goto("/")
    pg.fill("input[name=token]", TOKEN)
    pg.click("#login")
    pg.wait_for_url("**/")
    for width in at_both_widths(pg, shots, "01-upload-no-worker", "/"):
        assert "No worker is running: jobs will wait" in pg.inner_text("[data-role=no-worker]"), width
        assert not pg.query_selector_all("[data-role=unavailable-style]")  # no worker: nothing to judge by
        assert_choices_keep_their_labels(pg, width)

    # With no worker to judge by, every style is offered: a photo for 'disney' goes in, and waits.
    photo = tmp_path / "bear-for-disney.jpg"
    photo.write_bytes(photo_bytes(140, 100, seed=8))
    pg.uncheck("input[value=toon]")
    pg.check("input[value=disney]")
    pg.set_input_files("#photos", [str(photo)])
    pg.click("#submit")
    pg.wait_for_selector("#jobs [data-role=job][data-status=queued]", timeout=WAIT_MS)

    with service.client() as api, worker(service.env, tmp_path):
        # The card follows the job's events: once the worker could not load the style, it says so.
        card = pg.locator("#jobs [data-role=job]")
        card.locator("[data-role=waiting]").wait_for(timeout=WAIT_MS)
        assert "style 'disney' cannot run on this worker" in card.inner_text()
        assert card.locator("[data-role=retry]").count() == 1
        card.locator("[data-role=progress]", has_text="waiting for a worker").wait_for(timeout=WAIT_MS)
        pg.screenshot(path=str(shots / "01b-card-waiting-phone.png"), full_page=True)
        wait_until(lambda: any(s["workers"] for s in api.get("/v1/styles").json()["styles"]), "a live worker",
                   timeout_s=120)
        for width in at_both_widths(pg, shots, "02-upload", "/"):
            assert not pg.query_selector_all("[data-role=no-worker]"), width
            assert pg.get_attribute("[data-role=unavailable-style]", "value") == "disney"
            assert pg.is_disabled("[data-role=unavailable-style]") and pg.is_checked("input[value=toon]")
            why = pg.inner_text("[data-role=unavailable-why]")
            assert why.startswith("Greyed out: disney: no running worker can load it:") and "no-model" in why, why
            assert_choices_keep_their_labels(pg, width)

        # Keys that sort wrongly as strings, a corrupt photo, and a job for the style no worker runs.
        drop = Path(service.env["PROCESSOR_STORE__ROOT"])
        for n in (1, 10, 2):
            (drop / "inputs").mkdir(parents=True, exist_ok=True)
            (drop / f"inputs/toy_{n}.jpg").write_bytes(photo_bytes(150, 110, seed=n))
        (drop / "inputs/broken-toy.png").write_bytes(BROKEN_PNG)
        waiting_job = api.post("/v1/jobs", files={"image": ("bear.jpg", photo_bytes(140, 100, seed=9))},
                               data={"styles": "disney"}).json()["id"]
        jobs = {j["input"]: j["id"] for j in api.get("/v1/jobs", params={"limit": 200}).json()["jobs"]}
        for key, job in jobs.items():
            wait_until(lambda job=job: (b := api.get(f"/v1/jobs/{job}").json())["status"] in {"done", "failed"}
                       or b["waiting"], f"{key} to end or wait")
        bad_job = jobs["inputs/broken-toy.png"]

        for width in at_both_widths(pg, shots, "03-browse", "/browse"):
            order = [k for k in pg.eval_on_selector_all("[data-role=row] [data-role=link]",
                                                        "(a) => a.map((x) => x.textContent)") if "toy_" in k]
            assert order == ["inputs/toy_1.jpg", "inputs/toy_2.jpg", "inputs/toy_10.jpg"], (width, order)
            bad = pg.locator(f"[data-role=row][data-job='{bad_job}']")
            assert bad.locator("[data-role=retry]").count() == 0, width  # the same bytes would fail again
            assert "upload a changed one" in bad.inner_text() and bad.locator("[data-role=hint]").inner_text()
            waiting = pg.locator(f"[data-role=row][data-job='{waiting_job}']")
            assert waiting.locator("[data-role=link]").inner_text() == "bear.jpg"  # its original name
            assert waiting.locator("[data-role=waiting]").count() == 1 and waiting.locator("[data-role=retry]").count()
            assert_no_word_broken(pg, "[data-role=row] .what p", width)
            # A row is no taller than what it shows: its thumbnail, or its text.
            heights = pg.eval_on_selector_all("[data-role=row]", """(rows) => rows.map((r) => [r.dataset.job,
                r.getBoundingClientRect().height, r.querySelector('.what').getBoundingClientRect().height,
                (r.querySelector('.thumb img') || {height: 0}).height])""")
            for job, row_px, text_px, thumb_px in heights:
                assert row_px <= max(text_px, thumb_px) + 40, (width, job, row_px, text_px, thumb_px)

        for width in at_both_widths(pg, shots, "04-job-bad-photo", f"/jobs/{bad_job}"):
            assert pg.locator("[data-role=failure]").count() == 1 and pg.locator("[data-role=retry]").count() == 0
            assert_no_word_broken(pg, "[data-role=failure] p", width)
        for width in at_both_widths(pg, shots, "05-job-done", f"/jobs/{jobs['inputs/toy_2.jpg']}"):
            assert pg.get_attribute("article.single", "data-status") == "done", width
            assert pg.locator("[data-role=retry]").count() == 0
        # The contact sheet, kept beside the screenshots: its legend explains the score labels.
        sheet = pg.request.get(pg.get_attribute("[data-role=sheet]", "href"))
        assert sheet.status == 200 and sheet.headers["content-type"] == "image/jpeg"
        (shots / "05-contact-sheet.jpg").write_bytes(sheet.body())
        for width in at_both_widths(pg, shots, "06-job-waiting", f"/jobs/{waiting_job}"):
            assert pg.get_attribute("article.single", "data-status") == "queued", width
            assert "Waiting for a worker that can run it." in pg.inner_text("[data-role=waiting]")
            assert "Operator:" in pg.inner_text("[data-role=waiting] [data-role=hint]")
            assert_no_word_broken(pg, "[data-role=waiting] p", width)

    # A worker that can run the style (there, 'disney' is a toon style); Retry, and it runs it.
    capable_env = write_env(tmp_path, {k: v for k, v in service.env.items() if k.startswith("PROCESSOR_STORE")},
                            styles={"disney": {"engine": "toon", "variants": 1, "max_side": 96}},
                            config_name="capable.yaml")
    capable = subprocess.Popen([sys.executable, "-m", "processor", "run", "--metrics-port", "0"], env=capable_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pg.set_viewport_size({"width": WIDTHS["desktop"], "height": 900})
        pg.goto(f"/jobs/{waiting_job}")
        pg.click("[data-role=retry]")
        pg.wait_for_url(f"**/jobs/{waiting_job}")
        pg.wait_for_selector("article.single[data-status=done]", timeout=WAIT_MS)
        with service.client() as api:
            assert wait_status(api, waiting_job, {"done"})["variants"][0]["style"] == "disney"
        pg.reload()
        pg.screenshot(path=str(shots / "07-job-retried-done-desktop.png"), full_page=True)
        for width in at_both_widths(pg, shots, "08-upload-capable", "/"):
            assert not pg.query_selector_all("[data-role=unavailable-style]"), width
    finally:
        stop(capable)
