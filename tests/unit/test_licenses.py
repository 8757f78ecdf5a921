"""Model licences (``license:``) and ``run.allow_noncommercial``: a worker refuses non-commercial
styles at start, and a sidecar asking for one fails with ``InvalidSidecar``. No model loads: the
refusals happen before any weights would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import Img2ImgStyle, load_settings
from processor.config.licenses import LicenseUse, style_licenses
from processor.errors import EXIT_CONFIG, ConfigError
from processor.manifest import FailureRecord, Manifest
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.images import photo_bytes

NC_STYLE = {"engine": "img2img", "model": "black-forest-labs/FLUX.1-dev", "license": "non-commercial"}


def write_config(tmp_path: Path, run: dict, styles: dict) -> Path:
    cfg = {"store": {"kind": "local", "root": str(tmp_path / "bucket")}, "run": run, "styles": styles,
           "metrics": {"port": 0}}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_a_worker_refuses_a_noncommercial_style_at_start_naming_style_and_license(tmp_path, capsys):
    path = write_config(tmp_path, {"styles": ["toon", "dev"]}, {"toon": {"engine": "toon"}, "dev": NC_STYLE})
    assert main(["run", "--once", "--config", str(path)]) == EXIT_CONFIG == 3
    err = capsys.readouterr().err
    assert "style 'dev'" in err and "license non-commercial" in err and "run.allow_noncommercial" in err
    assert not (tmp_path / "bucket").exists() or not any((tmp_path / "bucket").rglob("*.json"))


def test_allow_noncommercial_lets_the_style_through_config(tmp_path):
    path = write_config(tmp_path, {"styles": ["dev"], "allow_noncommercial": True}, {"dev": NC_STYLE})
    assert load_settings(path).run.allow_noncommercial is True


def test_the_check_covers_lora_control_lcm_and_background_models(tmp_path):
    style = {"engine": "img2img", "model": "m", "license": "creativeml-openrail-m",
             "control": {"model": "c", "license": "non-commercial"}}
    path = write_config(tmp_path, {"styles": ["held"]}, {"held": style})
    with pytest.raises(ConfigError, match=r"control c: license non-commercial"):
        load_settings(path)
    bg = {"engine": "toon", "background": {"mode": "generate", "prompt": "a beach", "model": "b",
                                           "license": "non-commercial"}}
    with pytest.raises(ConfigError, match=r"background b: license non-commercial"):
        load_settings(write_config(tmp_path, {"styles": ["bg"]}, {"bg": bg}))


def test_style_licenses_lists_every_model_and_inherits_for_a_shared_background():
    style = Img2ImgStyle(model="m", license="creativeml-openrail-m", lora={"path": "l", "license": "openrail"},
                         lcm={"lora": "lcm", "license": "openrail++"}, rounds=[{"strength": 0.5, "guidance": 1.0}],
                         control=[{"model": "c"}], background={"mode": "generate", "prompt": "a beach"})
    assert style_licenses(style) == [
        LicenseUse("model", "m", "creativeml-openrail-m"), LicenseUse("lora", "l", "openrail"),
        LicenseUse("lcm", "lcm", "openrail++"), LicenseUse("control", "c", None),
        # generate without background.model runs on the style's own weights: the same licence
        LicenseUse("background", "m", "creativeml-openrail-m"),
    ]


def test_an_unknown_license_is_a_config_error_listing_the_choices(tmp_path):
    path = write_config(tmp_path, {"styles": ["x"]}, {"x": NC_STYLE | {"license": "cc-by-nc"}})
    with pytest.raises(ConfigError, match=r"styles\.x\.license.*non-commercial"):
        load_settings(path)


def test_run_style_flag_is_checked_too(tmp_path, capsys):
    path = write_config(tmp_path, {"styles": ["toon"]}, {"toon": {"engine": "toon"}, "dev": NC_STYLE})
    assert main(["run", "--once", "--style", "dev", "--config", str(path)]) == EXIT_CONFIG
    assert "--style: the styles given include style 'dev'" in capsys.readouterr().err


def test_a_sidecar_asking_for_a_noncommercial_style_fails_and_toon_variants_record_no_license(tmp_path):
    path = write_config(tmp_path, {"styles": ["toon"], "poll_interval_s": 0.05},
                        {"toon": {"engine": "toon", "variants": 1}, "dev": NC_STYLE})
    settings = load_settings(path)
    store = LocalStore(settings.store.root)
    store.put("inputs/a.jpg", photo_bytes(72, 64, seed=1))
    store.put("inputs/a.json", json.dumps({"styles": ["dev"]}).encode())
    store.put("inputs/b.jpg", photo_bytes(72, 64, seed=2))
    worker = Worker(store, settings, build_registry(settings), worker_id="w")
    worker.setup()
    assert worker.run_once() == 0
    layout = KeyLayout(settings.prefixes)
    record = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/a.jpg").failure).body)
    assert record.error == "InvalidSidecar" and record.permanent
    assert "style 'dev'" in record.message and "license non-commercial" in record.message
    manifest = Manifest.model_validate_json(store.get(layout.for_input("inputs/b.jpg").manifest).body)
    assert [v.licenses for v in manifest.variants] == [[]]


def test_the_refiner_has_a_license_that_is_recorded_and_checked(tmp_path):
    from processor.manifest import LicenseRecord

    refiner = {"model": "stabilityai/stable-diffusion-xl-refiner-1.0", "license": "openrail++"}
    style = Img2ImgStyle(model="stabilityai/stable-diffusion-xl-base-1.0", license="openrail++", refiner=refiner)
    assert style_licenses(style) == [LicenseUse("model", "stabilityai/stable-diffusion-xl-base-1.0", "openrail++"),
                                     LicenseUse("refiner", "stabilityai/stable-diffusion-xl-refiner-1.0", "openrail++")]
    assert LicenseRecord(role="refiner", model=refiner["model"], license="openrail++").role == "refiner"
    gated = {"engine": "img2img", "model": "m", "license": "openrail++",
             "refiner": {"model": "r", "license": "non-commercial"}}
    with pytest.raises(ConfigError, match=r"'xl' \(refiner r: license non-commercial\).*run\.allow_noncommercial"):
        load_settings(write_config(tmp_path, {"styles": ["xl"]}, {"xl": gated}))
