"""Sidecars and object metadata are untrusted input.

Whatever a sidecar's JSON holds, or an input's ``x-amz-meta-*`` metadata, the input ends with a
manifest or an ``InvalidSidecar`` failure record that says what to change: never a traceback, never
a ``StageFailed`` (which would spend retries and count towards the circuit breaker), never an input
without a record. Run over the local store and a real SeaweedFS; one property test (hypothesis)
throws arbitrary JSON at the worker.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from processor.cli.compose import build_registry
from processor.cli.main import main
from processor.config import MAX_SEED, load_settings
from processor.errors import InvalidSidecar, StyleUnavailable
from processor.manifest import FailureRecord, Manifest
from processor.pipeline.encode import contact_sheet
from processor.pipeline.sidecar import (
    decode_metadata,
    encode_metadata,
    load_sidecar_json,
    validate_overrides,
)
from processor.queue.keys import KeyLayout, is_sidecar
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.images import photo_bytes

#: A configured style whose model is missing: a sidecar may name it; the worker cannot run it.
MISSING_MODEL = "/nonexistent/diffusers-folder"


def write_settings(root: Path, store: dict[str, Any] | None = None):
    cfg = {
        "store": store or {"kind": "local", "root": str(root / "bucket")},
        # One StageFailed trips the breaker: a sidecar problem counted as a crash fails the run.
        "run": {"styles": ["toon"], "poll_interval_s": 0.05, "max_consecutive_failures": 1,
                "max_variants_per_input": 6},
        "styles": {
            "toon": {"engine": "toon", "variants": 1, "max_side": 64},
            "flat": {"engine": "toon", "variants": 2, "max_side": 64, "colors": [2, 3]},
            "disney": {"engine": "img2img", "model": MISSING_MODEL, "variants": 1},
        },
        "pipeline": {"contact_sheet_height": 32},
        "metrics": {"port": 0},
        # Hermetic: a background model the cache lacks is reported, never fetched.
        "models": {"offline": True},
    }
    path = root / "config.yaml"
    path.write_text(json.dumps(cfg))
    return load_settings(path)


@pytest.fixture
def settings(tmp_path: Path):
    return write_settings(tmp_path)


# --------------------------------------------------------------------------- the validation


#: (sidecar JSON text, words its InvalidSidecar message must contain).
REFUSED: dict[str, tuple[str, tuple[str, ...]]] = {
    "seed-negative": ('{"seed": -1}', ("seed", "greater than or equal to 0")),
    "seed-over-32-bits": (f'{{"seed": {MAX_SEED + 1}}}', ("seed", "less than or equal to 4294967295")),
    "seed-huge": ('{"seed": 1' + "0" * 40 + "}", ("seed",)),
    "number-5000-digits": ('{"seed": ' + "9" * 5000 + "}", ("number Python will not read",)),
    "variants-float": ('{"variants": 2.0}', ("variants", "valid integer")),
    "variants-1e308": ('{"variants": 1e308}', ("variants", "valid integer")),
    "variants-nan": ('{"variants": NaN}', ("variants",)),
    "variants-infinity": ('{"variants": Infinity}', ("variants",)),
    "variants-string": ('{"variants": "2"}', ("variants", "valid integer")),
    "variants-bool": ('{"variants": true}', ("variants", "valid integer")),
    "variants-zero": ('{"variants": 0}', ("variants", "greater than or equal to 1")),
    "variants-over-style-bound": ('{"variants": 17}', ("variants", "less than or equal to 16")),
    "variants-over-input-cap": ('{"variants": 7}', ("7 variants", "run.max_variants_per_input")),
    "styles-variants-over-cap": (
        '{"styles": ["toon", "flat"], "variants": 4}',
        ("8 variants", "run.max_variants_per_input"),
    ),
    "styles-duplicated": ('{"styles": ["toon", "toon"]}', ("['toon'] more than once", "name each style once")),
    "styles-too-many": (json.dumps({"styles": ["toon"] * 500}), ("500 entries", "run.max_styles_per_input")),
    "styles-unknown": ('{"styles": ["nope"]}', ("styles.0", "unknown style 'nope'", "disney, flat, toon")),
    "styles-not-a-list": ('{"styles": "toon"}', ("styles", "valid list")),
    "styles-object": ('{"styles": {"toon": 1}}', ("styles", "valid list")),
    "styles-number": ('{"styles": [1]}', ("styles.0", "a style is named by a string")),
    "styles-empty": ('{"styles": []}', ("name at least one style",)),
    "style-name-huge": (json.dumps({"styles": ["x" * 10_000]}), ("unknown style", "...")),
    "key-unknown": ('{"colour": "red"}', ("colour", "Extra inputs are not permitted")),
    "key-duplicated": ('{"variants": 1, "variants": 2}', ("'variants' twice",)),
    "prompt-number": ('{"prompt": 5}', ("prompt", "valid string")),
    "prompt-too-long": (json.dumps({"prompt": "x" * 2001}), ("prompt", "at most 2000 characters")),
    "prompt-lone-surrogate": ('{"prompt": "\\ud800 bear"}', ("prompt",)),
    "background-array": ('{"background": []}', ("background",)),
    "background-mode-unknown": ('{"background": {"mode": "lava"}}', ("background.mode",)),
    "background-mode-nested": ('{"background": {"mode": {"a": [[[1]]]}}}', ("background.mode",)),
    "background-without-prompt": ('{"background": {"mode": "instruct"}}', ("background.prompt is required",)),
    "background-needs-a-model": (
        '{"background": {"mode": "inpaint", "prompt": "a beach"}}',
        ("style 'toon'", "background.model is required"),
    ),
    "background-key-unknown": ('{"background": {"model": "x/y"}}', ("background.model", "Extra inputs")),
    "not-an-object": ("[1, 2, 3]", ("must be a JSON object", "not an array")),
    "null": ("null", ("must be a JSON object", "not null")),
    "deep-nesting": ('{"a":' * 5000 + "1" + "}" * 5000, ("nested too deeply",)),
    "not-json": ('{"variants": 2,,}', ("not valid UTF-8 JSON",)),
}

#: Sidecars that are fine: (JSON text, styles it gets, variants in all).
ACCEPTED: dict[str, tuple[str, tuple[str, ...], int]] = {
    "empty": ("{}", ("toon",), 1),
    "byte-order-mark": ('\ufeff{"variants": 2}', ("toon",), 2),
    "two-styles": ('{"styles": ["flat", "toon"], "seed": 7}', ("flat", "toon"), 3),
    "prompt-control-chars-only": ('{"prompt": "\\u0000\\n"}', ("toon",), 1),
    "negative-ignored-by-toon": ('{"negative": "blurry"}', ("toon",), 1),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_validation_refuses_with_the_field_and_what_to_change(settings, name: str) -> None:
    text, words = REFUSED[name]
    with pytest.raises(InvalidSidecar) as info:
        raw = load_sidecar_json(text.encode("utf-8", "surrogatepass"), "inputs/a.json")
        validate_overrides(raw, settings, where="sidecar inputs/a.json")
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert len(message) < 2000, "a message quotes no huge value whole"
    assert info.value.hint.strip()


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_validation_accepts(settings, name: str) -> None:
    text, styles, _ = ACCEPTED[name]
    overrides = validate_overrides(load_sidecar_json(text.encode(), "inputs/a.json"), settings)
    assert overrides.styles == styles


def test_the_api_entry_point_takes_a_plain_mapping(settings) -> None:
    """What the HTTP API calls: a mapping in, typed overrides out, or InvalidSidecar with a path."""
    got = validate_overrides({"styles": ["flat"], "variants": 3, "seed": 5, "prompt": "a tin robot"}, settings)
    assert got.styles == ("flat",) and dict(got.style_fields) == {"variants": 3, "seed": 5}
    assert (got.prompt, got.prompt_source) == ("a tin robot", "sidecar")
    with pytest.raises(InvalidSidecar, match=r"^request: background.mode: "):
        validate_overrides({"background": {"mode": 3}}, settings, where="request")
    assert validate_overrides(None, settings).styles == ("toon",)


@pytest.mark.parametrize("text", ["a tin robot", "ein Bär 🧸 café", "line\nbreak", "=?UTF-8?B?x?=", "ü" * 600])
def test_metadata_round_trips_through_rfc_2047(settings, text: str) -> None:
    encoded = encode_metadata(text)
    assert encoded.isascii() and "\n" not in encoded
    assert decode_metadata(encoded) == text
    got = validate_overrides(None, settings, metadata={"Prompt": encoded})
    assert got.prompt == text and got.prompt_source == "metadata"


def test_metadata_as_s3_returns_it_is_decoded(settings) -> None:
    # AWS returns non-ASCII user metadata as RFC 2047 encoded words, in either encoding.
    assert decode_metadata("=?UTF-8?B?ZWluIELDpHI=?=") == "ein Bär"
    assert decode_metadata("=?utf-8?q?caf=C3=A9?=") == "café"
    assert decode_metadata("=?bogus-charset?B?YWJj?=") == "abc"
    assert decode_metadata("=?UTF-8?B?not base64!?=") == "=?UTF-8?B?not base64!?="


def test_a_metadata_prompt_over_the_prompt_bound_is_refused(settings) -> None:
    with pytest.raises(InvalidSidecar, match="x-amz-meta-prompt is 2,001 characters; at most 2,000"):
        validate_overrides(None, settings, metadata={"prompt": "x" * 2001})


def test_a_sidecar_prompt_wins_over_metadata(settings) -> None:
    got = validate_overrides({"prompt": "from the sidecar"}, settings, metadata={"prompt": "from metadata"})
    assert (got.prompt, got.prompt_source) == ("from the sidecar", "sidecar")


@pytest.mark.parametrize("tiles, size", [(200, (64, 64)), (40, (64, 64)), (3, (40_000, 64)), (33, (256, 20_000))])
def test_the_contact_sheet_is_bounded_whatever_it_holds(tiles: int, size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (200, 100, 50))
    sheet = Image.open(io.BytesIO(contact_sheet(image, [image] * tiles, height=256, max_pixels=1_000_000)))
    assert sheet.width * sheet.height <= 1_000_000
    assert sheet.width <= 65_500 and sheet.height <= 65_500


# --------------------------------------------------------------------------- through the worker


def run_bucket(store, settings, sidecars: dict[str, bytes], metadata: dict[str, dict[str, str]] | None = None):
    """Upload one photo per sidecar (plus their sidecars), run a worker once; returns its totals."""
    for i, (name, body) in enumerate(sidecars.items()):
        store.put(f"inputs/{name}.jpg", photo_bytes(72, 64, seed=i), metadata=(metadata or {}).get(name))
        if body is not None:
            store.put(f"inputs/{name}.json", body)
    worker = Worker(store, settings, build_registry(settings), worker_id="hostile-sidecars")
    worker.setup()
    assert worker.run_once() == 0
    assert not worker.breaker.consecutive and not worker.totals["retry"], worker.totals
    return worker.totals


def results(store, layout: KeyLayout) -> dict[str, Manifest | FailureRecord]:
    """Every input's one result; fails on an input with none or with both."""
    present = {o.key for o in store.list("")}
    out: dict[str, Manifest | FailureRecord] = {}
    for key in sorted(k for k in present if k.startswith("inputs/") and not is_sidecar(k)):
        keys = layout.for_input(key)
        assert (keys.manifest in present) != (keys.failure in present), key
        if keys.manifest in present:
            out[key] = Manifest.model_validate_json(store.get(keys.manifest).body)
        else:
            out[key] = FailureRecord.model_validate_json(store.get(keys.failure).body)
    return out


def _hostile_run(store, settings) -> None:
    sidecars = {name: text.encode("utf-8", "surrogatepass") for name, (text, _) in REFUSED.items()}
    sidecars |= {f"ok-{name}": text.encode() for name, (text, _, _) in ACCEPTED.items()}
    # A configured style whose model is missing, and a background model that cannot load: the
    # input waits for a worker that can load them (the operator's problem); this worker and the
    # other inputs go on.
    sidecars["style-model-missing"] = b'{"styles": ["disney"]}'
    sidecars["background-model-missing"] = json.dumps(
        {"background": {"mode": "instruct", "prompt": "a beach"}}).encode()
    run_bucket(store, settings, sidecars)

    got = results(store, KeyLayout(settings.prefixes))
    assert len(got) == len(sidecars)
    for name, (_text, words) in REFUSED.items():
        record = got[f"inputs/{name}.jpg"]
        assert isinstance(record, FailureRecord), name
        assert record.error == "InvalidSidecar" and record.final and record.permanent, (name, record)
        assert all(w in record.message for w in words), (name, record.message)
    for name, (_, styles, variants) in ACCEPTED.items():
        manifest = got[f"inputs/ok-{name}.jpg"]
        assert isinstance(manifest, Manifest), (name, manifest)
        assert {v.style for v in manifest.variants} == set(styles) and len(manifest.variants) == variants
    for name, words in (("style-model-missing", ("style 'disney' cannot run on this worker", MISSING_MODEL)),
                        ("background-model-missing", ("style 'toon' cannot run", "ModelUnavailableError"))):
        record = got[f"inputs/{name}.jpg"]
        assert isinstance(record, FailureRecord) and record.error == "StyleUnavailable", (name, record)
        assert not record.permanent and not record.final and record.attempts == 0, record
        assert all(w in record.message for w in words), record.message
        assert "processor models pull" in record.hint


def test_hostile_sidecars_over_the_local_store(settings) -> None:
    _hostile_run(LocalStore(settings.store.root), settings)


def test_hostile_sidecars_over_seaweedfs(s3_store, tmp_path: Path) -> None:
    _hostile_run(s3_store, write_settings(tmp_path))


class _UnloadableCaptioner:
    """A captioner whose models are missing: its setup raises as the real one does."""

    ready = False

    def __init__(self) -> None:
        self.setups = 0

    def setup(self) -> None:
        from processor.errors import ModelUnavailableError

        self.setups += 1
        raise ModelUnavailableError("caption model org/blip is not in the model cache")


def test_a_style_that_needs_the_captioner_which_cannot_load_fails_only_its_input(tmp_path: Path) -> None:
    """The worker's own style (toon) takes no caption, so the captioner loads on first use; a
    sidecar picking a style that takes one, when the caption models are missing, fails that input
    (and the next one like it, without loading again) while the rest go on."""
    settings = write_settings(tmp_path)
    settings = settings.model_copy(update={"caption": settings.caption.model_copy(update={"mode": "blip"})})
    store = LocalStore(settings.store.root)
    for i, body in enumerate([b'{"styles": ["disney"]}', b'{"styles": ["disney"]}', b"{}"]):
        store.put(f"inputs/c{i}.jpg", photo_bytes(72, 64, seed=i))
        store.put(f"inputs/c{i}.json", body)
    captioner = _UnloadableCaptioner()
    worker = Worker(store, settings, build_registry(settings), worker_id="w", captioner=captioner)
    worker.setup()
    assert worker.run_once() == 0 and captioner.setups == 1
    got = results(store, KeyLayout(settings.prefixes))
    for key in ("inputs/c0.jpg", "inputs/c1.jpg"):
        assert isinstance(got[key], FailureRecord) and got[key].error == "StyleUnavailable"
        assert not got[key].final and not got[key].permanent
        assert "captioner cannot load on this worker" in got[key].message and "models pull" in got[key].hint
    assert isinstance(got["inputs/c2.jpg"], Manifest)


def _metadata_run(store, settings, tmp_path: Path) -> None:
    """Non-ASCII prompts as ``submit --prompt`` sends them reach the worker as the same text."""
    layout = KeyLayout(settings.prefixes)
    text = "ein Bär aus Blech 🧸, café"
    metadata = {"meta": {"prompt": encode_metadata(text)}, "meta-long": {"prompt": encode_metadata("ü" * 2001)}}
    run_bucket(store, settings, {"meta": None, "meta-long": None}, metadata=metadata)
    got = results(store, layout)
    assert isinstance(got["inputs/meta.jpg"], Manifest)
    record = got["inputs/meta-long.jpg"]
    assert isinstance(record, FailureRecord) and record.error == "InvalidSidecar" and "at most 2,000" in record.message
    # What the worker reads back for the input (the store's own metadata, decoded).
    worker = Worker(store, settings, build_registry(settings), worker_id="reader")
    from processor.queue.protocol import Delivery
    from processor.queue.scan import WorkItem

    info = store.head("inputs/meta.jpg")
    item = WorkItem(keys=layout.for_input(info.key), info=info)
    read = worker.queue.read_input(Delivery(item=item, claim=None, etag=info.etag, size=info.size),
                                   max_bytes=settings.pipeline.decode.max_bytes)
    job = worker.pipeline.prepare(read.body, name=info.key, metadata=read.metadata)
    assert job.overrides.prompt == text and job.overrides.prompt_source == "metadata"


def test_non_ascii_metadata_prompt_over_the_local_store(settings, tmp_path: Path) -> None:
    _metadata_run(LocalStore(settings.store.root), settings, tmp_path)


def test_non_ascii_metadata_prompt_over_seaweedfs(s3_store, tmp_path: Path) -> None:
    _metadata_run(s3_store, write_settings(tmp_path), tmp_path)


def test_submit_prompt_sends_non_ascii_text_to_seaweedfs(s3_server, s3_store, tmp_path: Path, monkeypatch) -> None:
    """``processor submit --prompt`` with non-ASCII text: boto3 refused it before; now S3 takes
    it and the worker decodes the same text."""
    import logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(photo_bytes(72, 64))
    for name, value in {"PROCESSOR_STORE__KIND": "s3", "PROCESSOR_STORE__BUCKET": s3_store.bucket,
                        "PROCESSOR_STORE__ENDPOINT_URL": s3_server.endpoint_url,
                        "PROCESSOR_STORE__REGION": "us-east-1", "PROCESSOR_METRICS__PORT": "0"}.items():
        monkeypatch.setenv(name, value)
    text = "Blechbär 🧸 auf dem Mond"
    assert main(["submit", "photo.jpg", "-q", "--prompt", text]) == 0
    raw = s3_store.get("inputs/photo.jpg").metadata["prompt"]
    assert raw.isascii() and decode_metadata(raw) == text


# --------------------------------------------------------------------------- property test

_KNOWN_KEYS = ["styles", "variants", "seed", "prompt", "negative", "instruction", "background"]
_json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-5, max_value=40)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
                 | st.sampled_from(["toon", "flat", "disney", "nope", "none", "instruct", "inpaint", "generate"]))
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.sampled_from([*_KNOWN_KEYS, "mode", "prompt", "x"]) | st.text(max_size=8),
                                       inner, max_size=4), max_leaves=12)
_names = st.sampled_from(["toon", "flat", "disney", "nope"])
#: Near-valid sidecars: values around each bound, so that many examples pass and run.
_plausible = st.fixed_dictionaries({}, optional={
    "styles": st.lists(_names, max_size=3),
    "variants": st.integers(min_value=-1, max_value=8),
    "seed": st.integers(min_value=-2, max_value=MAX_SEED + 2) | st.sampled_from([0, MAX_SEED]),
    "prompt": st.text(max_size=30),
    "negative": st.text(max_size=10),
    "background": st.fixed_dictionaries({}, optional={
        "mode": st.sampled_from(["none", "instruct", "generate", "inpaint", "lava"]), "prompt": st.text(max_size=10)}),
})
_sidecar = _plausible | st.dictionaries(st.sampled_from(_KNOWN_KEYS), _json, max_size=4) | _json


def _dump(value: Any) -> bytes:
    # allow_nan: JSON text with NaN / Infinity, which Python's parser (and so the worker) reads.
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_sidecar, min_size=1, max_size=4))
def test_any_json_sidecar_ends_with_a_manifest_or_a_record_that_says_why(bodies: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = write_settings(Path(tmp))
        store = LocalStore(settings.store.root)
        run_bucket(store, settings, {f"p{i}": _dump(b) for i, b in enumerate(bodies)})
        got = results(store, KeyLayout(settings.prefixes))
        assert len(got) == len(bodies)
        for _key, result in got.items():
            if isinstance(result, FailureRecord):
                # A bad sidecar is final; a style this worker cannot load ("disney": its model is
                # missing) waits for a worker that can.
                assert (result.error, result.final) in {("InvalidSidecar", True), ("StyleUnavailable", False)}, result
                assert result.hint.strip() and result.message.strip()
            else:
                assert 1 <= len(result.variants) <= settings.run.max_variants_per_input
                assert all(0 <= v.seed <= MAX_SEED + 16 and math.isfinite(v.seed) for v in result.variants)


def test_an_engine_this_install_lacks_fails_the_input_that_asks_for_it(settings) -> None:
    """A style (or background) whose engine is not installed (no diffusers, say) stops the worker
    at start when it is one of its own styles, and fails only the input when a sidecar picks it:
    as the operator's problem (StyleUnavailable), remembered and reported."""
    from processor.cli.compose import make_engine
    from processor.pipeline.render import EngineRegistry

    calls: list[str] = []

    def factory(name: str, style: Any) -> Any:
        calls.append(name)
        if style.engine != "toon":
            raise ImportError("No module named 'diffusers'")
        return make_engine(name, style)

    registry = EngineRegistry(settings.styles, factory)
    with pytest.raises(ImportError):
        EngineRegistry(settings.styles, factory).setup(["disney"])
    registry.setup(["toon"])
    assert registry.unavailable("disney") is None and registry.loaded("toon") and not registry.loaded("disney")
    for _ in range(2):
        with pytest.raises(StyleUnavailable, match="style 'disney' cannot run on this worker: ImportError") as caught:
            registry.engine("disney")
        assert caught.value.styles == ("disney",)
    assert calls.count("disney") == 2  # once for the failed start above, once for the input: remembered
    assert registry.unavailable("disney") == "style 'disney' cannot run on this worker: ImportError: " \
        "No module named 'diffusers'"
