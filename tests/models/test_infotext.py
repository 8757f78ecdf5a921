"""The PNG ``parameters`` text of a diffusion variant, read back the way AUTOMATIC1111's PNG-info
reader does (``parse_generation_parameters``: prompt lines, ``Negative prompt:``, then one
``Key: value`` line whose values may be JSON-quoted)."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pytest
from PIL import Image

from processor.pipeline.encode import a1111_parameters, infotext_parameters
from testkit.images import photo_bytes
from tests.models.test_diffusion import drain, img2img_style, make_settings, manifest_of

# A1111's own pattern (modules/infotext_utils.py): a key, then a quoted or comma-free value.
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_lora_sha(data: bytes) -> str:
    """A1111's LoRA hash of a safetensors file's bytes: the sha256 of what follows the 8-byte header
    length and the header, first 12 hex digits (its ``Lora hashes``, what Civitai looks up)."""
    length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + length:]).hexdigest()[:12]


def parse_infotext(text: str) -> dict[str, str]:
    """A1111's ``parse_generation_parameters``, reduced to what it does with our text."""
    *lines, last = text.strip().split("\n")
    if len(PARAM.findall(last)) < 3:  # A1111's test for "this is the parameter line"
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line.strip())
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in PARAM.findall(last):
        result[key] = json.loads(value) if value[:1] == value[-1:] == '"' and len(value) > 1 else value
    return result


def test_img2img_variant_infotext_parses_back_with_controlnet_and_lora_hashes(tiny_sd, tiny_lora, tiny_controlnet,
                                                                              tmp_path):
    pytest.importorskip("peft")
    style = img2img_style(tiny_sd, lora={"path": str(tiny_lora), "scale": 0.8},
                          control={"model": str(tiny_controlnet), "scale": 0.9, "guidance_end": 0.5})
    settings = make_settings(tmp_path, {"disney": style})
    store, layout = drain(settings, {"inputs/toy.jpg": photo_bytes(160, 120, seed=1)})
    lora_sha = a1111_lora_sha((tiny_lora / "pytorch_lora_weights.safetensors").read_bytes())
    for v in manifest_of(store, layout, "inputs/toy.jpg").variants:
        text = Image.open(io.BytesIO(store.get(v.key).body)).text["parameters"]
        assert text.count("Size: ") == 1
        info = parse_infotext(text)
        assert info["Prompt"] == v.parameters["prompt"]
        assert info["Negative prompt"] == "blurry, ugly"
        assert info["Steps"] == "4"
        assert (info["Sampler"], info["Schedule type"]) == ("DPM++ 2M", "Karras")
        assert info["CFG scale"] == "7.5" and info["Denoising strength"] == "0.7"  # the first round
        assert info["Seed"] == str(v.seed) and info["Size"] == f"{v.width}x{v.height}"
        assert info["Model"] == str(tiny_sd)
        assert info["ControlNet 0"] == (f"Module: canny, Model: {tiny_controlnet}, Weight: 0.9, Guidance Start: 0, "
                                        f"Guidance End: 0.5, Low: 100, High: 200")
        assert info["Lora hashes"] == f"{tiny_lora.name}: {lora_sha}"
        assert v.parameters["lora_hashes"] == {tiny_lora.name: lora_sha}
        assert json.loads(info["Rounds"])[1]["strength"] == 0.5  # every round is still there


def test_leading_fields_are_in_a1111_order():
    params = infotext_parameters({"prompt": "a toy", "negative": "ugly", "scheduler": "euler-a", "steps": 8,
                                  "seed": 3, "model": "m/x", "rounds": [{"strength": 0.6, "guidance": 1.0}],
                                  "engine": "img2img"})
    text = a1111_parameters(params, 512, 384)
    assert text.split("\n")[2].startswith("Steps: 8, Sampler: Euler a, Schedule type: Automatic, CFG scale: 1, "
                                          "Seed: 3, Size: 512x384, Model: m/x, Denoising strength: 0.6, ")
    info = parse_infotext(text)
    assert (info["Prompt"], info["Negative prompt"], info["Engine"]) == ("a toy", "ugly", "img2img")


def test_toon_parameters_pass_through_unchanged():
    toon = {"engine": "toon", "colors": 8, "seed": 1}
    assert infotext_parameters(toon) == toon
