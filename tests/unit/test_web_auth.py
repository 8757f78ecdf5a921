"""The web pages' login cookie and its CSRF defence, in-process on the local store (no browser):
redirects to /login, the cookie's flags, the cookie accepted by the JSON and file routes, Origin
checked on state-changing requests, and the templates shipped inside the package."""

from __future__ import annotations

from importlib import resources

import pytest
from fastapi.testclient import TestClient

from processor.api.app import create_app
from processor.api.auth import COOKIE, safe_next, same_origin
from processor.config import load_settings
from processor.queue.protocol import BucketQueue
from processor.queue.submit import Submission
from processor.store.local import LocalStore
from testkit.api_service import OPEN_BASE_URL
from testkit.images import photo_bytes

KEY = "page-key"
HOST = "http://testserver"


@pytest.fixture
def settings(tmp_path):
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")},
                         styles={"toon": {"engine": "toon", "variants": 2}}, run={"styles": ["toon"]})


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "bucket")


def client(settings, store, keys=(KEY,), base_url: str = HOST) -> TestClient:
    return TestClient(create_app(settings, store, keys=list(keys)), base_url=base_url)


def login(c: TestClient, token: str = KEY, origin: str = HOST, next_path: str = "/"):
    return c.post("/login", data={"token": token, "next": next_path}, headers={"Origin": origin},
                  follow_redirects=False)


def test_pages_send_the_browser_to_login_and_the_token_never_goes_in_a_url(settings, store) -> None:
    c = client(settings, store)
    for path in ("/", "/browse", "/jobs/abc"):
        resp = c.get(path, follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login?next=/")
    form = c.get("/login?next=/browse")
    assert form.status_code == 200 and 'method="post"' in form.text and 'name="token"' in form.text
    wrong = login(c, "nope")
    assert wrong.status_code == 401 and "not valid" in wrong.text and COOKIE not in wrong.headers.get("set-cookie", "")
    good = login(c, next_path="/browse")
    assert good.status_code == 303 and good.headers["location"] == "/browse"
    assert KEY not in good.headers["location"]
    cookie = good.headers["set-cookie"]
    assert f"{COOKIE}={KEY}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    assert c.get("/browse").status_code == 200
    assert c.get("/v1/jobs").status_code == 200  # the JSON routes the pages call take the cookie too


def test_the_cookie_is_secure_over_https(settings, store) -> None:
    c = client(settings, store, base_url="https://toys.example")
    resp = login(c, origin="https://toys.example")
    assert resp.status_code == 303 and "Secure" in resp.headers["set-cookie"]


def test_state_changing_requests_with_the_cookie_must_come_from_our_origin(settings, store) -> None:
    job, _ = BucketQueue.for_settings(store, settings).submit(Submission(image=photo_bytes(100, 80), format="JPEG"))
    c = client(settings, store)
    assert login(c).status_code == 303
    photo = {"image": ("t.jpg", photo_bytes(100, 80))}
    for origin in (None, "https://evil.example", "null"):
        headers = {"Origin": origin} if origin else {}
        refused = c.post("/v1/jobs", files=photo, headers=headers)
        assert refused.status_code == 403 and refused.json()["field"] == "Origin", refused.text
        assert c.post(f"/v1/jobs/{job}/retry", headers=headers).status_code == 403
    assert c.post("/v1/jobs", files=photo, headers={"Origin": HOST}).status_code == 202
    assert c.post("/v1/jobs", files=photo, headers={"Referer": HOST + "/"}).status_code == 202  # no Origin sent
    # A bearer header needs no Origin (scripts and curl), and a wrong one is still 401.
    bare = client(settings, store)
    assert bare.post("/v1/jobs", files=photo, headers={"Authorization": f"Bearer {KEY}"}).status_code == 202
    assert bare.post("/v1/jobs", files=photo, headers={"Authorization": "Bearer x"}).status_code == 401
    # Login itself is checked too: another site cannot log a victim in with the attacker's token.
    assert login(client(settings, store), origin="https://evil.example").status_code == 403


def test_a_wrong_cookie_is_refused_like_a_wrong_token(settings, store) -> None:
    c = client(settings, store)
    c.cookies.set(COOKIE, "forged")
    assert c.get("/v1/jobs").status_code == 401
    assert c.get("/browse", follow_redirects=False).status_code == 303


def test_an_open_server_shows_the_pages_without_login(settings, store) -> None:
    c = client(settings, store, keys=(), base_url=OPEN_BASE_URL)
    page = c.get("/")
    assert page.status_code == 200 and "Log out" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    job, _ = BucketQueue.for_settings(store, settings).submit(Submission(image=photo_bytes(100, 80), format="JPEG"))
    # Without keys anyone may call the API, but the retry form still refuses posts from other sites.
    assert c.post(f"/jobs/{job}/retry", headers={"Origin": "https://evil.example"}).status_code == 403


def test_a_page_for_an_unknown_job_says_so(settings, store) -> None:
    c = client(settings, store, keys=(), base_url=OPEN_BASE_URL)
    resp = c.get("/jobs/bm8tc3VjaC5wbmc")
    assert resp.status_code == 404 and "No such job" in resp.text


def test_next_stays_on_this_site_and_origins_compare_scheme_and_host() -> None:
    assert safe_next("/jobs/x?y=1") == "/jobs/x?y=1"
    for bad in ("https://evil.example/", "//evil.example", "/\\evil", "", None):
        assert safe_next(bad) == "/"

    class Req:
        def __init__(self, headers, scheme="http", host="a:1"):
            self.headers = headers | {"host": host}
            self.url = type("U", (), {"scheme": scheme, "netloc": host})()

    assert same_origin(Req({"origin": "http://a:1"}), None)
    assert not same_origin(Req({"origin": "https://a:1"}), None)
    assert not same_origin(Req({"origin": "http://a:1.evil"}), None)
    assert same_origin(Req({"origin": "https://toys.example"}), "https://toys.example/base")


def test_templates_and_static_files_ship_in_the_package() -> None:
    root = resources.files("processor.api")
    for name in ("templates/base.html", "templates/index.html", "templates/job.html", "templates/browse.html",
                 "templates/login.html", "static/app.js", "static/style.css"):
        assert root.joinpath(name).is_file(), name
