"""Every variant records the licences of the models that made it, through the worker with tiny
models: the style's model, its ControlNet, and the background stage on the style's own weights."""

from __future__ import annotations

from processor.manifest import LicenseRecord
from testkit.images import photo_bytes
from tests.models.test_diffusion import drain, img2img_style, make_settings, manifest_of


def test_img2img_with_control_and_background_records_each_models_license(tiny_sd, tiny_controlnet, tmp_path):
    style = img2img_style(tiny_sd, variants=1, rounds=[{"strength": 0.5}], license="creativeml-openrail-m",
                          control={"model": str(tiny_controlnet), "license": "openrail"},
                          background={"mode": "generate", "prompt": "a sunny beach", "steps": 2})
    store, layout = drain(make_settings(tmp_path, {"held": style}), {"inputs/toy.jpg": photo_bytes(160, 120, seed=5)})
    [v] = manifest_of(store, layout, "inputs/toy.jpg").variants
    assert v.licenses == [
        LicenseRecord(role="model", model=str(tiny_sd), license="creativeml-openrail-m"),
        LicenseRecord(role="control", model=str(tiny_controlnet), license="openrail"),
        LicenseRecord(role="background", model=str(tiny_sd), license="creativeml-openrail-m"),
    ]
