"""The web pages in a real headless browser (Debian's chromium, driven by Playwright) against a real
``processor serve`` and a real ``processor run`` daemon (toon style) on the local store.

Screenshots are kept as test artefacts: under pytest's tmp dir (the path is printed; run with -s to
see it) and copied to ``$SCREENSHOT_DIR`` when that is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.api_service import JOB_TIMEOUT_S, TOKEN, Service, serve, wait_status, worker, write_env
from testkit.images import photo_bytes

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM} (apt-get install chromium; "
                                "CI installs it in .ci/run)")

#: A PNG signature then zeros: accepted by the upload sniffing, undecodable for the worker.
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
#: Milliseconds a page waits for an element: a hang guard (testkit.waits), in playwright's unit.
WAIT_MS = int(JOB_TIMEOUT_S * 1000)


@pytest.fixture(scope="module", params=["local", "s3"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """On the local store the API streams the files; on SeaweedFS the pages load presigned URLs."""
    tmp = tmp_path_factory.mktemp(f"web-{request.param}")
    if request.param == "local":
        store_env = {"PROCESSOR_STORE__KIND": "local", "PROCESSOR_STORE__ROOT": str(tmp / "bucket")}
    else:
        s3 = request.getfixturevalue("s3_server")
        store_env = {"PROCESSOR_STORE__KIND": "s3", "PROCESSOR_STORE__BUCKET": s3.new_bucket(),
                     "PROCESSOR_STORE__ENDPOINT_URL": s3.endpoint_url, "PROCESSOR_STORE__REGION": "us-east-1",
                     "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    env = write_env(tmp, store_env)
    with serve(env, tmp) as api, worker(env, tmp) as daemon:
        api.worker = daemon
        api.s3 = request.getfixturevalue("s3_server") if request.param == "s3" else None
        api.store = request.param
        yield api


def drop_in_bucket(service: Service, key: str, body: bytes) -> None:
    """Put a photo into the bucket directly, as a user would without the API or the CLI."""
    if service.s3 is None:
        path = Path(service.env["PROCESSOR_STORE__ROOT"]) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    else:
        service.s3.client().put_object(Bucket=service.env["PROCESSOR_STORE__BUCKET"], Key=key, Body=body)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    print(f"\nscreenshots: {folder}")
    if os.environ.get("SCREENSHOT_DIR"):
        target = Path(os.environ["SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        for shot in folder.glob("*.png"):
            shutil.copy(shot, target / shot.name)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def page_errors(pg: Any) -> list[str]:
    """The list that ``pg``'s script errors and console errors are added to, but the browser's own
    note on a non-2xx answer (the refused login is a 401)."""
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text)
          if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    return errors


@pytest.fixture
def page(browser: object, service: Service) -> Iterator[object]:
    context = browser.new_context(base_url=service.url, viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    errors = page_errors(pg)
    try:
        yield pg
    finally:
        context.close()
    # A Content-Security-Policy refusal or a script error shows up here, not as a failed assertion.
    assert not errors, errors


def log_in(pg: object, path: str = "/") -> None:
    pg.goto(path)
    assert pg.url.split("?")[0].endswith("/login"), pg.url
    pg.fill("input[name=token]", TOKEN)
    pg.click("#login")
    pg.wait_for_url(f"**{path}")


def images_loaded(pg: object, selector: str) -> list[int]:
    """The naturalWidth of every image under ``selector``, after each finished loading."""
    pg.wait_for_function("""(sel) => { const imgs = [...document.querySelectorAll(sel + ' img')];
        return imgs.length > 0 && imgs.every((i) => i.complete); }""", arg=selector, timeout=WAIT_MS)
    return pg.eval_on_selector_all(selector + " img", "(imgs) => imgs.map((i) => i.naturalWidth)")


def test_login_upload_progress_gallery_and_job_page(
    service: Service, page: object, shots: Path, tmp_path: Path
) -> None:
    pg = page
    assert f"open {service.url}/" in service.log.read_text()  # the URL a newcomer opens
    # Without the cookie every page sends the browser to the login form; a wrong token stays there.
    pg.goto("/browse")
    assert "/login" in pg.url
    pg.fill("input[name=token]", "not-the-token")
    pg.click("#login")
    assert "not valid" in pg.inner_text(".error")
    pg.screenshot(path=str(shots / f"{service.store}-01-login-refused.png"), full_page=True)
    log_in(pg, "/")
    (cookie,) = [c for c in pg.context.cookies() if c["name"] == "processor_token"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # http here
    assert pg.evaluate("() => document.cookie") == ""  # scripts cannot read the token
    assert TOKEN not in pg.url

    photos = []
    for i in range(2):
        photos.append(tmp_path / f"toy-{i}.jpg")
        photos[-1].write_bytes(photo_bytes(180, 130, seed=40 + i))
    pg.set_input_files("#photos", [str(p) for p in photos])
    assert "toy-0.jpg" in pg.inner_text("#chosen")
    pg.fill("input[name=variants]", "2")
    pg.fill("input[name=seed]", "5")
    # A busy fleet first: the cards must show the jobs queued before any worker takes them.
    service.worker.send_signal(signal.SIGSTOP)
    try:
        pg.click("#submit")
        pg.wait_for_function("() => document.querySelectorAll('#jobs [data-role=job][data-status=queued]').length == 2",
                             timeout=WAIT_MS)
        pg.screenshot(path=str(shots / f"{service.store}-02-queued.png"), full_page=True)
    finally:
        service.worker.send_signal(signal.SIGCONT)
    pg.wait_for_function("() => document.querySelectorAll('#jobs [data-role=job][data-status=done]').length == 2",
                         timeout=WAIT_MS)
    cards = pg.query_selector_all("#jobs [data-role=job]")
    for card in cards:
        kinds = card.get_attribute("data-events").split()
        assert kinds[0] == "status" and kinds[-1] == "done", kinds  # followed through the event stream
        assert set(kinds) <= {"status", "progress", "done"}
    widths = images_loaded(pg, "#jobs")
    assert len(widths) == 4 and all(w > 0 for w in widths), widths  # 2 photos x 2 variants, all decoded
    downloads = pg.eval_on_selector_all(
        "#jobs figcaption a[download]", "(a) => a.map((x) => x.getAttribute('download'))"
    )
    assert sorted(downloads) == ["toon-00.png", "toon-00.png", "toon-01.png", "toon-01.png"]
    sheet = pg.get_attribute("#jobs [data-role=sheet]", "href")
    streamed = sheet.startswith(service.url)  # local store; on S3 a presigned URL of the store
    assert streamed == (service.s3 is None), sheet
    got = pg.request.get(sheet)  # with the page's cookie: the files go through the API's auth too
    assert got.status == 200 and got.headers["content-type"] == "image/jpeg"
    pg.screenshot(path=str(shots / f"{service.store}-03-gallery.png"), full_page=True)

    # A file that is no photo is refused before anything is written; its card says why and what to do.
    fake = tmp_path / "notes.jpg"
    fake.write_bytes(b"<!doctype html><html>not a photo</html>")
    pg.set_input_files("#photos", [str(fake)])
    pg.click("#submit")
    refused = pg.locator("#jobs [data-role=job][data-status=refused]")
    refused.wait_for(timeout=WAIT_MS)
    assert "refused (415)" in refused.inner_text()
    assert "HTML" in refused.locator("[data-role=message]").inner_text()  # the API's detail and hint
    assert "upload a JPEG, PNG, WebP or HEIC photo" in refused.locator("[data-role=hint]").inner_text()
    # One past api.max_upload_bytes (4,000,000 here) is refused in the page, before it is sent.
    big = tmp_path / "huge.jpg"
    big.write_bytes(photo_bytes(100, 80)[:3] + b"\0" * 4_000_000)
    with service.client() as api:
        before = len(api.get("/v1/jobs", params={"limit": 200}).json()["jobs"])
        pg.set_input_files("#photos", [str(big)])
        pg.click("#submit")
        pg.locator("#jobs [data-role=job][data-status=refused]", has_text="too large").wait_for(timeout=WAIT_MS)
        assert len(api.get("/v1/jobs", params={"limit": 200}).json()["jobs"]) == before
    pg.screenshot(path=str(shots / f"{service.store}-03b-refused.png"), full_page=True)

    # The job's own page shows its variants as images.
    job = cards[0].get_attribute("data-job")
    pg.click(f"#jobs [data-job='{job}'] [data-role=link]")
    pg.wait_for_url(f"**/jobs/{job}")
    assert pg.get_attribute("article.single", "data-status") == "done"
    assert pg.inner_text("article.single h1").startswith("inputs/api/")
    assert all(w > 0 for w in images_loaded(pg, "article.single"))
    pg.screenshot(path=str(shots / f"{service.store}-04-job-page.png"), full_page=True)
    # Without the cookie: 401 from the API, like every API route; a presigned URL is its own
    # short-lived credential (api.url_ttl_s) and carries no bucket key.
    anonymous = pg.context.browser.new_context()
    try:
        assert anonymous.request.get(sheet).status == (401 if streamed else 200)
    finally:
        anonymous.close()
    if not streamed:
        assert service.env["AWS_SECRET_ACCESS_KEY"] not in pg.content()


def test_browse_shows_every_input_and_what_to_change_for_a_bad_photo(service: Service, page: object, shots: Path,
                                                           tmp_path: Path) -> None:
    # A corrupt photo sent with `processor submit`, and a good one dropped straight into the bucket.
    bad = tmp_path / "broken-toy.png"
    bad.write_bytes(BROKEN_PNG)
    subprocess.run([sys.executable, "-m", "processor", "submit", "-q", str(bad)], env=service.env, check=True,
                   capture_output=True)
    drop_in_bucket(service, "inputs/dropped-toy.jpg", photo_bytes(150, 110, seed=77))
    with service.client() as api:
        listed = {j["input"]: j["id"] for j in api.get("/v1/jobs", params={"limit": 200}).json()["jobs"]}
        bad_id, dropped_id = listed["inputs/broken-toy.png"], listed["inputs/dropped-toy.jpg"]
        failure = wait_status(api, bad_id, {"failed", "done"})
        assert failure["status"] == "failed", failure
        assert wait_status(api, dropped_id, {"done", "failed"})["status"] == "done"

    log_in(page, "/browse")
    pg = page
    row = pg.locator(f"[data-role=row][data-job='{bad_id}']")
    assert row.get_attribute("data-status") == "failed"
    assert row.locator("[data-role=message]").inner_text() == failure["failure"]["message"]
    assert row.locator("[data-role=hint]").inner_text() == failure["failure"]["hint"]
    dropped = pg.locator(f"[data-role=row][data-job='{dropped_id}']")
    assert dropped.get_attribute("data-status") == "done"
    assert all(w > 0 for w in images_loaded(pg, f"[data-role=row][data-job='{dropped_id}']"))
    pg.screenshot(path=str(shots / f"{service.store}-05-browse.png"), full_page=True)

    # Paging: two jobs a page, following "Next page" until the last, sees every job once.
    pg.goto("/browse?limit=2")
    seen: list[str] = []
    while True:
        seen += pg.eval_on_selector_all("[data-role=row]", "(rows) => rows.map((r) => r.dataset.job)")
        nxt = pg.query_selector("[data-role=next]")
        if nxt is None:
            break
        nxt.click()
        pg.wait_for_load_state()
    assert len(seen) == len(set(seen)) and {bad_id, dropped_id} <= set(seen)

    # A corrupt photo gets no Retry (the same bytes fail again): its failure says what to change.
    # Retry of a retryable job is in test_web_capabilities (a job waiting for a capable worker).
    pg.goto("/browse")
    bad_row = pg.locator(f"[data-role=row][data-job='{bad_id}']")
    assert failure["failure"]["permanent"] and bad_row.locator("[data-role=retry]").count() == 0
    assert "upload a changed one" in bad_row.inner_text()
    pg.goto(f"/jobs/{bad_id}")
    assert pg.locator("[data-role=retry]").count() == 0
    assert pg.inner_text("article.single [data-role=hint]") == failure["failure"]["hint"]
    pg.screenshot(path=str(shots / f"{service.store}-06-bad-photo.png"), full_page=True)


#: Pixels Chromium keeps beside a number input's text for its spin buttons.
SPIN_PX = 16


def test_the_upload_form_shows_its_placeholders_whole(service: Service, page: object, shots: Path) -> None:
    if service.store != "local":
        pytest.skip("the form does not depend on the store")
    pg = page
    log_in(pg, "/")
    for name in ("variants", "seed"):
        # The placeholder's width in the input's own font against the room inside the input.
        text_px, room_px = pg.eval_on_selector(f"input[name={name}]", """(el) => {
            const css = getComputedStyle(el), ctx = document.createElement('canvas').getContext('2d');
            ctx.font = css.font;
            return [ctx.measureText(el.placeholder).width,
                    el.clientWidth - parseFloat(css.paddingLeft) - parseFloat(css.paddingRight)]; }""")
        assert text_px + SPIN_PX <= room_px, f"{name}: placeholder {text_px:.0f} px in {room_px:.0f} px"
    pg.screenshot(path=str(shots / f"{service.store}-07-upload-form.png"), full_page=True)
