"""The review outputs (contact sheet, structure scores) an input may turn off in its sidecar: the
variants stay the same bytes, only the outputs made for people reviewing the job are skipped."""

from __future__ import annotations

import json

import pytest

from processor.cli.compose import build_registry
from processor.config import Settings
from processor.errors import InvalidSidecar
from processor.pipeline.item import Encoded, ItemPipeline
from processor.pipeline.sidecar import validate_overrides
from testkit.images import photo_bytes

VARIANTS_ONLY = {"contact_sheet": False, "structure_score": False}


def toon_settings(**run: object) -> Settings:
    return Settings(styles={"toon": {"engine": "toon", "variants": 2, "max_side": 96}},
                    run={"styles": ["toon"], **run})


def encode(settings: Settings, sidecar: dict[str, object] | None) -> Encoded:
    pipeline = ItemPipeline(settings, build_registry(settings))
    pipeline.setup()
    prepared = pipeline.prepare(photo_bytes(120, 90, seed=7), name="toy.jpg", sidecar_name="toy.json",
                                sidecar=None if sidecar is None else json.dumps(sidecar).encode())
    return pipeline.encode(prepared, pipeline.compute(prepared))


def test_an_input_that_turns_them_off_gets_the_same_variants_without_sheet_or_scores() -> None:
    settings = toon_settings()
    full = encode(settings, None)
    lean = encode(settings, VARIANTS_ONLY)
    assert full.contact_sheet is not None and all(v.structure is not None for v in full.variants)
    assert lean.contact_sheet is None and all(v.structure is None for v in lean.variants)
    assert [f.name for f in lean.files] == [f.name for f in full.files if f.name != full.contact_sheet]
    full_bytes = {f.name: f.body for f in full.files}
    assert all(f.body == full_bytes[f.name] for f in lean.files)


def test_an_input_may_ask_for_a_sheet_the_settings_turn_off() -> None:
    settings = toon_settings()
    settings.pipeline.contact_sheet = False
    assert encode(settings, None).contact_sheet is None
    assert encode(settings, {"contact_sheet": True}).contact_sheet is not None


def test_variants_ordered_by_structure_are_still_scored() -> None:
    """The score decides which variants come first there: turning it off would change the answer."""
    lean = encode(toon_settings(order_variants_by="structure"), VARIANTS_ONLY)
    assert lean.contact_sheet is None and all(v.structure is not None for v in lean.variants)


def test_the_fields_take_booleans_only() -> None:
    with pytest.raises(InvalidSidecar, match="contact_sheet"):
        validate_overrides({"contact_sheet": "no"}, toon_settings())
    overrides = validate_overrides(VARIANTS_ONLY, toon_settings())
    assert overrides.contact_sheet is False and overrides.structure_score is False
    assert validate_overrides(None, toon_settings()).contact_sheet is None
