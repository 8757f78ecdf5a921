"""Configuration errors name the key as the user wrote it and where its value came from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from processor.config import MAX_SEED, load_settings
from processor.errors import ConfigError


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("PROCESSOR_"):
            monkeypatch.delenv(name)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"store": {"kind": "local", "root": str(tmp_path / "bucket")},
                                "styles": {"toon": {"engine": "toon", "variants": 4}}}))
    return path


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


def test_a_style_key_path_has_no_engine_name_inserted(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_STYLES__TOON__VARIANTS", "99")
    text = problems(config)
    assert "styles.toon.variants:" in text and "toon.toon" not in text
    assert "environment PROCESSOR_STYLES__TOON__VARIANTS" in text


def test_an_unknown_section_from_the_environment_names_the_variable(config: Path, monkeypatch) -> None:
    monkeypatch.setenv("PROCESSOR_NOPE__KEY", "1")
    text = problems(config)
    assert "nope: Extra inputs are not permitted" in text and "environment PROCESSOR_NOPE__KEY" in text
    assert "defaults" not in text


def test_an_unknown_style_in_run_styles_from_the_environment_names_the_variable(config: Path, monkeypatch) -> None:
    monkeypatch.setenv("PROCESSOR_RUN__STYLES", "[toon, anime]")
    text = problems(config)
    assert "run.styles names ['anime'] not defined under styles" in text
    assert "environment PROCESSOR_RUN__STYLES" in text and "defaults" not in text and str(config) not in text


def test_run_styles_that_is_not_a_list_in_the_environment_says_how_to_write_one(config, monkeypatch) -> None:
    monkeypatch.setenv("PROCESSOR_RUN__STYLES", "toon,anime")
    text = problems(config)
    assert "run.styles: Input should be a valid list" in text and "[a, b]" in text
    assert "environment PROCESSOR_RUN__STYLES" in text


def test_run_styles_in_the_file_names_the_file(config: Path) -> None:
    data = json.loads(config.read_text())
    data["run"] = {"styles": ["toon", "toon"]}
    config.write_text(json.dumps(data))
    text = problems(config)
    assert "run.styles name ['toon'] more than once" in text and f"from {config}" in text


def test_run_styles_over_the_per_input_variant_cap(config: Path) -> None:
    data = json.loads(config.read_text())
    data["run"] = {"max_variants_per_input": 3}
    config.write_text(json.dumps(data))
    text = problems(config)
    assert "ask for 4 variants in all; at most 3 per input (run.max_variants_per_input)" in text


@pytest.mark.parametrize("url", ["localhost:8333", "127.0.0.1:8333", "s3.example.com", "ftp://host", "http://"])
def test_an_endpoint_without_a_scheme_is_a_config_error(config: Path, monkeypatch, url: str) -> None:
    monkeypatch.setenv("PROCESSOR_STORE__KIND", "s3")
    monkeypatch.setenv("PROCESSOR_STORE__BUCKET", "toys")
    monkeypatch.setenv("PROCESSOR_STORE__ENDPOINT_URL", url)
    text = problems(config)
    assert (
        "store.endpoint_url" in text and "http(s) URL" in text and "environment PROCESSOR_STORE__ENDPOINT_URL" in text
    )


def test_an_endpoint_with_a_scheme_is_kept(config: Path, monkeypatch) -> None:
    monkeypatch.setenv("PROCESSOR_STORE__KIND", "s3")
    monkeypatch.setenv("PROCESSOR_STORE__BUCKET", "toys")
    monkeypatch.setenv("PROCESSOR_STORE__ENDPOINT_URL", " http://127.0.0.1:8333 ")
    assert load_settings(config).store.endpoint_url == "http://127.0.0.1:8333"


@pytest.mark.parametrize("engine_style", [
    {"engine": "toon"},
    {"engine": "img2img", "model": "some/model"},
    {"engine": "instruct-pix2pix", "instruction": "make it snow"},
])
@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_every_style_bounds_its_seed_as_a_sidecar_does(config: Path, engine_style: dict, seed: int) -> None:
    data = json.loads(config.read_text())
    data["styles"] = {"s": {**engine_style, "seed": seed}}
    data["run"] = {"styles": ["s"]}
    config.write_text(json.dumps(data))
    assert "styles.s.seed:" in problems(config)


def test_the_contact_sheet_height_is_bounded(config: Path) -> None:
    data = json.loads(config.read_text())
    data["pipeline"] = {"contact_sheet_height": 100_000}
    config.write_text(json.dumps(data))
    assert "pipeline.contact_sheet_height" in problems(config)
