"""The upload page offers the styles the configured worker accepts: with ``run.allow_noncommercial``
false a style with non-commercial weights is refused (``validate_overrides``), so the page does not
offer it and says so; in-process on the local store, no browser."""

from __future__ import annotations

import re

import pytest

from processor.config import load_settings
from processor.store.local import LocalStore
from tests.unit.test_web_auth import client, login

STYLES = {
    "toon": {"engine": "toon", "variants": 2},
    "turbo": {"engine": "img2img", "model": "stabilityai/sdxl-turbo", "license": "non-commercial", "turbo": True,
              "rounds": [{"strength": 0.5, "guidance": 0}], "steps": 2},
    "fast-lcm": {"engine": "img2img", "model": "some/sd15", "license": "creativeml-openrail-m",
                 "lcm": {"lora": "some/nc-lcm", "license": "non-commercial"},
                 "rounds": [{"strength": 0.5, "guidance": 1.5}], "steps": 8},
    "plain": {"engine": "img2img", "model": "some/sd15", "license": "creativeml-openrail-m"},
}


@pytest.fixture(autouse=True)
def _no_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # only STYLES: the repository's config.yaml would add its own


def offered(tmp_path, allow: bool) -> tuple[list[str], str]:
    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")}, styles=STYLES,
                             run={"styles": ["toon"], "allow_noncommercial": allow})
    c = client(settings, LocalStore(tmp_path / "bucket"))
    assert login(c).status_code == 303
    page = c.get("/")
    assert page.status_code == 200
    return re.findall(r'name="styles" value="([^"]+)"', page.text), page.text


def test_a_worker_that_refuses_noncommercial_weights_is_not_offered_them(tmp_path) -> None:
    names, html = offered(tmp_path, allow=False)
    assert names == ["plain", "toon"]  # turbo's model and fast-lcm's LCM-LoRA are non-commercial
    assert re.search(r"Not offered: fast-lcm, turbo \(non-commercial", html)


def test_with_noncommercial_allowed_every_style_is_offered(tmp_path) -> None:
    names, html = offered(tmp_path, allow=True)
    assert names == ["fast-lcm", "plain", "toon", "turbo"] and "Not offered" not in html


def test_the_styles_offered_are_the_ones_the_api_accepts(tmp_path) -> None:
    from processor.errors import InvalidSidecar
    from processor.pipeline.sidecar import validate_overrides

    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")}, styles=STYLES,
                             run={"styles": ["toon"]})
    names, _ = offered(tmp_path, allow=False)
    for name in STYLES:
        if name in names:
            validate_overrides({"styles": [name]}, settings)
        else:
            with pytest.raises(InvalidSidecar, match="non-commercial"):
                validate_overrides({"styles": [name]}, settings)
