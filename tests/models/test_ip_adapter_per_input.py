"""An input's own style picture (``style_image: <key>`` in its sidecar or ``x-amz-meta-style-image``)
through ``processor run --once`` with the tiny IP-Adapter (``testkit.models.ip_adapter``): it steers
that input only, every variant records which picture it used, and a bad one fails that input alone."""

from __future__ import annotations

import hashlib
import io
import json

from PIL import Image

from processor.cli.compose import build_registry
from processor.manifest import FailureRecord
from processor.store.local import LocalStore
from testkit.images import photo_bytes
from tests.models.test_diffusion import drain, img2img_style, make_settings, manifest_of
from tests.models.test_ip_adapter import LOOK, LOOK_KEY, ip_adapter, styled
from tests.models.test_sdxl import run_once

TOY = photo_bytes(160, 120, seed=5)
#: Two users' pictures of the look they want, other images than the style's LOOK.
MINE_A = photo_bytes(96, 96, fmt="PNG", seed=21)
MINE_B = photo_bytes(80, 96, fmt="JPEG", seed=22)


def sidecar(**fields) -> bytes:
    return json.dumps(fields).encode()


def shas(store, layout, key: str) -> list[str]:
    return [v.sha256 for v in manifest_of(store, layout, key).variants]


def failure(store, name: str) -> FailureRecord:
    return FailureRecord.model_validate_json(store.get(f"failed/{name}.json").body)


def test_each_input_gets_its_own_picture_and_the_styles_stays_for_the_others(tiny_sd, tiny_ip_adapter, tmp_path):
    settings = make_settings(tmp_path / "own", {"look": styled(tiny_sd, tiny_ip_adapter)})
    store = LocalStore(settings.store.root)
    store.put(LOOK_KEY, LOOK)
    store.put("styles/users/a.png", MINE_A)
    store.put("styles/users/b.jpg", MINE_B)
    # b names its picture in object metadata, as `processor submit --style-image` does.
    store.put("inputs/b.jpg", TOY, metadata={"style-image": "styles/users/b.jpg"})
    inputs = {"inputs/a.jpg": TOY, "inputs/a.json": sidecar(style_image="styles/users/a.png"), "inputs/c.jpg": TOY}
    store, layout = run_once(settings, inputs)

    records = {k: [v.parameters["ip_adapter"] for v in manifest_of(store, layout, f"inputs/{k}.jpg").variants]
               for k in "abc"}
    expected = {"a": ("styles/users/a.png", MINE_A, "input"), "b": ("styles/users/b.jpg", MINE_B, "input"),
                "c": (LOOK_KEY, LOOK, "style")}
    for name, (key, data, source) in expected.items():
        assert len(records[name]) == 2
        for record in records[name]:
            assert record["style_image"] == f"bucket:{key}"
            assert record["style_image_sha256"] == hashlib.sha256(data).hexdigest()
            assert record["style_image_etag"] == store.head(key).etag
            assert record["style_image_source"] == source
            assert record["scale"] == 0.8 and record["model"] == str(tiny_ip_adapter)
    # One photo, one seed: only the picture differs, and each picture gives other pixels.
    a, b, c = (shas(store, layout, f"inputs/{k}.jpg") for k in "abc")
    assert len({tuple(a), tuple(b), tuple(c)}) == 3
    # The PNG text names the picture that was used.
    first = manifest_of(store, layout, "inputs/a.jpg").variants[0]
    text = Image.open(io.BytesIO(store.get(first.key).body)).text["parameters"]
    assert f"Style Image Hash: {hashlib.sha256(MINE_A).hexdigest()[:10]}" in text

    # a's output is exactly what the style gives with a's picture as its own: the input's picture
    # replaced the style's, nothing else changed. c (after a and b in the pass) kept the style's.
    as_style = make_settings(tmp_path / "as-style", {"look": styled(tiny_sd, tiny_ip_adapter)
                                                     | {"style_image": "bucket:styles/users/a.png"}})
    LocalStore(as_style.store.root).put("styles/users/a.png", MINE_A)
    store2, layout2 = run_once(as_style, {"inputs/a.jpg": TOY})
    assert shas(store2, layout2, "inputs/a.jpg") == a
    assert manifest_of(store2, layout2, "inputs/a.jpg").variants[0].parameters["ip_adapter"][
        "style_image_source"] == "style"


def test_pictures_do_not_make_engines(tiny_sd, tiny_ip_adapter, tmp_path):
    """The engine registry caches per style and style fields; a picture is neither."""
    settings = make_settings(tmp_path, {"look": styled(tiny_sd, tiny_ip_adapter, variants=1)})
    registry = build_registry(settings)
    store = LocalStore(settings.store.root)
    store.put(LOOK_KEY, LOOK)
    inputs = {}
    for i in range(3):
        store.put(f"styles/{i}.png", photo_bytes(64, 64, fmt="PNG", seed=30 + i))
        inputs |= {f"inputs/{i}.jpg": TOY, f"inputs/{i}.json": sidecar(style_image=f"styles/{i}.png")}
    store, layout = drain(settings, inputs, registry)
    assert len(registry._engines) == 1
    engine = registry.engine("look")
    assert engine.ip_adapter.style_image.sha256 == hashlib.sha256(LOOK).hexdigest()  # untouched
    assert len({shas(store, layout, f"inputs/{i}.jpg")[0] for i in range(3)}) == 3


def test_a_style_without_its_own_picture_takes_one_per_input_and_refuses_inputs_without(tiny_sd, tiny_ip_adapter,
                                                                                        tmp_path):
    per_input = img2img_style(tiny_sd, variants=1, ip_adapter=ip_adapter(tiny_ip_adapter))
    settings = make_settings(tmp_path, {"yours": per_input})
    store = LocalStore(settings.store.root)
    store.put("styles/mine.png", MINE_A)
    inputs = {"inputs/given.jpg": TOY, "inputs/given.json": sidecar(style_image="styles/mine.png"),
              "inputs/none.jpg": TOY}
    store, layout = run_once(settings, inputs)
    [variant] = manifest_of(store, layout, "inputs/given.jpg").variants
    assert variant.parameters["ip_adapter"]["style_image_source"] == "input"
    assert variant.parameters["ip_adapter"]["style_image_sha256"] == hashlib.sha256(MINE_A).hexdigest()
    record = failure(store, "none.jpg")
    assert record.error == "InvalidSidecar" and record.permanent
    assert "style 'yours' takes its style picture from each input" in record.message
    assert "style_image" in record.hint and "'styles/'" in record.hint


def _huge_png() -> bytes:
    """7000 x 6000 px (over the 40,000,000 px decode limit) in a few kilobytes."""
    out = io.BytesIO()
    Image.new("1", (7000, 6000)).save(out, format="PNG", optimize=True)
    return out.getvalue()


#: Each hostile style_image: (sidecar, object to put first or None, what the record must say).
HOSTILE = {
    "outside": ({"style_image": "inputs/other.jpg"}, None, "is not under 'styles/' (prefixes.styles)"),
    "outputs": ({"style_image": "outputs/a/look-00.png"}, None, "is not under 'styles/'"),
    "dotdot": ({"style_image": "styles/../inputs/a.jpg"}, None, "has empty, '.' or '..' parts"),
    "absolute": ({"style_image": "/etc/passwd"}, None, "is a path or URL"),
    "scheme": ({"style_image": "bucket:styles/look.png"}, None, "is a path or URL"),
    "local": ({"style_image": "file:///etc/passwd"}, None, "is a path or URL"),
    "number": ({"style_image": 5}, None, "style_image: Input should be a valid string"),
    "missing": ({"style_image": "styles/nope.png"}, None, "style_image styles/nope.png does not exist"),
    "garbage": ({"style_image": "styles/garbage.png"}, b"not a picture at all " * 20,
                "style_image styles/garbage.png: "),
    "dot": ({"style_image": "styles/dot.png"}, photo_bytes(1, 1, fmt="PNG", seed=1), "styles/dot.png"),
    "huge": ({"style_image": "styles/huge.png"}, _huge_png(), "40,000,000"),
    "plain": ({"styles": ["plain"], "style_image": "styles/look.png"}, None,
              "style 'plain' has none"),
}


def test_hostile_style_images_each_end_in_that_inputs_record(tiny_sd, tiny_ip_adapter, tmp_path):
    settings = make_settings(tmp_path, {"look": styled(tiny_sd, tiny_ip_adapter, variants=1),
                                        "plain": img2img_style(tiny_sd, variants=1)}, run_styles=["look"])
    store = LocalStore(settings.store.root)
    store.put(LOOK_KEY, LOOK)
    inputs = {"inputs/good.jpg": TOY, "inputs/good.json": sidecar(style_image=LOOK_KEY)}
    for name, (fields, obj, _) in HOSTILE.items():
        inputs |= {f"inputs/{name}.jpg": TOY, f"inputs/{name}.json": sidecar(**fields)}
        if obj is not None:
            store.put(fields["style_image"], obj)
    store, layout = run_once(settings, inputs)  # exit 0: the worker went on
    assert manifest_of(store, layout, "inputs/good.jpg").variants[0].parameters["ip_adapter"][
        "style_image_source"] == "input"
    for name, (_, _, says) in HOSTILE.items():
        record = failure(store, f"{name}.jpg")
        assert record.error == "InvalidSidecar" and record.permanent, (name, record)
        assert says in record.message, (name, record.message)
        assert record.hint, name
    assert "1x1 has a shorter side of 1 px" in failure(store, "dot.jpg").message
    # Nothing was read from outside the styles prefix, and the style's own picture is unchanged.
    assert store.get(LOOK_KEY).body == LOOK


def test_a_bad_metadata_key_is_named_as_metadata(tiny_sd, tiny_ip_adapter, tmp_path):
    settings = make_settings(tmp_path, {"look": styled(tiny_sd, tiny_ip_adapter, variants=1)})
    store = LocalStore(settings.store.root)
    store.put(LOOK_KEY, LOOK)
    store.put("inputs/m.jpg", TOY, metadata={"Style-Image": "../secret.png"})
    store, _ = run_once(settings, {})
    record = failure(store, "m.jpg")
    assert record.message.startswith("metadata x-amz-meta-style-image: style_image '../secret.png'")
