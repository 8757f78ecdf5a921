"""A per-input style picture key (``processor.pipeline.look``) is untrusted input: only keys under
``prefixes.styles``, only for styles with an ``ip_adapter``, read with the input's byte cap. These
need no models (the styles are validated settings, never loaded); the worker runs are in
``tests/models/test_ip_adapter_per_input.py``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from processor.config import PrefixSettings, load_settings
from processor.errors import InvalidSidecar
from processor.pipeline.look import check_style_image_key, decode_style_image
from processor.pipeline.sidecar import validate_overrides
from processor.queue.keys import KeyLayout
from processor.queue.protocol import BucketQueue
from processor.store.local import LocalStore
from testkit.images import photo_bytes

IP = {"model": "h94/IP-Adapter"}


def settings(tmp_path, **prefixes):
    return load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")}, prefixes=prefixes,
                         run={"styles": ["look"]},
                         styles={"look": {"engine": "img2img", "model": "m", "ip_adapter": IP,
                                          "style_image": "bucket:styles/look.png"},
                                 "yours": {"engine": "img2img", "model": "m", "ip_adapter": IP},
                                 "toon": {"engine": "toon"}})


@pytest.mark.parametrize(("key", "says"), [
    ("styles/look.png", None),
    ("styles/users/7/look.webp", None),
    ("", "must be a bucket key like 'styles/look.png'"),
    ("styles/", "empty, '.' or '..' parts"),
    ("inputs/look.png", "is not under 'styles/' (prefixes.styles)"),
    ("stylesheet.png", "is not under 'styles/'"),
    ("styles/../inputs/cow.jpg", "'..' parts"),
    ("styles//look.png", "empty, '.' or '..' parts"),
    ("styles/./look.png", "'..' parts"),
    ("/styles/look.png", "is a path or URL"),
    ("~/look.png", "is a path or URL"),
    ("C:/look.png", "is a path or URL"),
    ("s3://bucket/styles/look.png", "is a path or URL"),
    ("styles\\look.png", "control characters or '\\'"),
    ("styles/look\n.png", "control characters"),
    ("styles/" + "a" * 1100, "at most 1,024"),
])
def test_keys(key, says):
    prefixes = PrefixSettings()
    if says is None:
        assert check_style_image_key(key, prefixes, "sidecar x") == key
    else:
        with pytest.raises(InvalidSidecar, match=r"^sidecar x: ") as info:
            check_style_image_key(key, prefixes, "sidecar x")
        assert says in str(info.value) and "style_image" in info.value.hint


def test_the_styles_prefix_is_configurable_and_kept_apart_from_the_others(tmp_path):
    moved = settings(tmp_path, styles="looks/")
    assert validate_overrides({"style_image": "looks/a.png"}, moved).style_image == "looks/a.png"
    with pytest.raises(InvalidSidecar, match="not under 'looks/'"):
        validate_overrides({"style_image": "styles/a.png"}, moved)
    with pytest.raises(ValidationError, match=r"prefixes.styles \('inputs/styles/'\) must not lie inside "
                                              r"prefixes.inputs"):
        PrefixSettings(styles="inputs/styles")
    with pytest.raises(ValidationError, match=r"without '\.' or '\.\.' parts"):
        PrefixSettings(styles="../styles")


def test_only_styles_with_an_ip_adapter_take_a_picture(tmp_path):
    s = settings(tmp_path)
    got = validate_overrides({"style_image": "styles/mine.png"}, s, where="sidecar inputs/a.json")
    assert (got.style_image, got.style_image_from, got.style_fields) == ("styles/mine.png", "sidecar", {})
    with pytest.raises(InvalidSidecar, match=r"style_image 'styles/mine.png' is for a style with an ip_adapter; "
                                             r"style 'toon' has none") as info:
        validate_overrides({"styles": ["look", "toon"], "style_image": "styles/mine.png"}, s)
    assert "look, yours" in info.value.hint
    with pytest.raises(InvalidSidecar, match="style_image: Input should be a valid string"):
        validate_overrides({"style_image": ["styles/a.png"]}, s)


def test_a_style_without_its_own_picture_needs_one_per_input(tmp_path):
    s = settings(tmp_path)
    with pytest.raises(InvalidSidecar, match="style 'yours' takes its style picture from each input") as info:
        validate_overrides({"styles": ["yours"]}, s, where="input inputs/a.jpg")
    assert "x-amz-meta-style-image" in info.value.hint
    assert validate_overrides({"styles": ["yours"], "style_image": "styles/a.png"}, s).style_image == "styles/a.png"
    assert validate_overrides({"styles": ["look"]}, s).style_image is None  # the style's own picture


def test_metadata_names_a_picture_and_the_sidecar_wins(tmp_path):
    s = settings(tmp_path)
    got = validate_overrides(None, s, metadata={"Style-Image": "styles/m.png"})
    assert (got.style_image, got.style_image_from) == ("styles/m.png", "metadata")
    got = validate_overrides({"style_image": "styles/s.png"}, s, metadata={"style-image": "styles/m.png"})
    assert (got.style_image, got.style_image_from) == ("styles/s.png", "sidecar")
    assert validate_overrides(None, s, metadata={"style-image": " "}).style_image is None
    with pytest.raises(InvalidSidecar, match=r"^metadata x-amz-meta-style-image: style_image '/etc/passwd'"):
        validate_overrides(None, s, metadata={"style-image": "/etc/passwd"})


def test_the_read_is_bounded_and_a_missing_picture_is_named(tmp_path):
    s = settings(tmp_path)
    store = LocalStore(s.store.root)
    store.put("styles/big.png", b"x" * 2000)
    q = BucketQueue(store, KeyLayout(s.prefixes))
    with pytest.raises(InvalidSidecar, match=r"style_image styles/big.png is 2,000 bytes; limit is 1,000 "
                                             r"\(pipeline.decode.max_bytes\)"):
        q.read_style_image("styles/big.png", max_bytes=1000)
    with pytest.raises(InvalidSidecar, match=r"style_image styles/gone\.png does not exist") as info:
        q.read_style_image("styles/gone.png", max_bytes=1000)
    assert "Upload the style picture" in info.value.hint
    data = photo_bytes(64, 64, fmt="PNG")
    etag = store.put("styles/ok.png", data).etag
    assert q.read_style_image("styles/ok.png", max_bytes=len(data)) == (data, etag)


def test_decoding_uses_the_inputs_limits(tmp_path):
    s = settings(tmp_path)
    data = photo_bytes(96, 64, fmt="PNG")
    picture = decode_style_image(data, "styles/ok.png", "e1", s.pipeline.decode, "sidecar")
    assert (picture.image.size, picture.source, picture.etag) == ((96, 64), "bucket:styles/ok.png", "e1")
    with pytest.raises(InvalidSidecar, match=r"^style_image styles/s.png: 96x64 has a shorter side of 64 px; "
                                             r"minimum is 100 \(pipeline.decode.min_side\)") as info:
        decode_style_image(data, "styles/s.png", None, s.pipeline.decode.model_copy(update={"min_side": 100}),
                           "sidecar")
    assert "Replace the style picture styles/s.png" in info.value.hint


def test_submit_style_image_uploads_the_picture_and_names_it_in_each_photos_metadata(tmp_path, capsys):
    import json as _json

    from processor.cli.main import main

    config = tmp_path / "config.yaml"
    config.write_text(_json.dumps({"store": {"kind": "local", "root": str(tmp_path / "bucket")},
                                   "run": {"styles": ["look"]},
                                   "styles": {"look": {"engine": "img2img", "model": "m", "ip_adapter": IP}}}))
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(photo_bytes(80, 80))
    (photos / "b.jpg").write_bytes(photo_bytes(80, 80, seed=2))
    look = tmp_path / "look.webp"
    look.write_bytes(photo_bytes(96, 96, fmt="WEBP", seed=3))
    assert main(["submit", str(photos), "--style-image", str(look), "--quiet", "--config", str(config)]) == 0
    store = LocalStore(tmp_path / "bucket")
    [stored] = list(store.list("styles/"))
    assert stored.key.startswith("styles/submit/") and stored.key.endswith(".webp")
    assert store.get(stored.key).body == look.read_bytes()
    for name in ("a", "b"):
        meta = store.get(f"inputs/{name}.jpg").metadata
        assert validate_overrides(None, load_settings(config), metadata=meta).style_image == stored.key

    look.write_bytes(b"just text, not a picture")
    assert main(["submit", str(photos), "--style-image", str(look), "--quiet", "--config", str(config)]) == 3
    assert "--style-image" in capsys.readouterr().err
