"""Prompt building (``processor.pipeline.prompt``) and the caption config; no torch needed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from processor.config import CaptionSettings, load_settings
from processor.errors import ConfigError
from processor.pipeline.base import ItemContext
from processor.pipeline.caption import caption_item, caption_used, metadata_prompt
from processor.pipeline.prompt import (
    build_prompt,
    clean_text,
    default_counter,
    first_clause,
    style_prompt,
    subject_for,
)

TRIGGER = "cartoon, Pixar, Disney character, 3D render, modern disney style"


def test_clean_text_strips_control_and_invisible_characters_and_collapses_whitespace():
    assert clean_text("  a\tstuffed\n\nmeerkat\x00\x1b[31m  in a\u200b zebra\u202e suit \r\n") == \
        "a stuffed meerkat[31m in a zebra suit"
    assert clean_text(None) == "" and clean_text("\x00\x07") == ""
    assert clean_text("ünïcödé ✓ 🧸") == "ünïcödé ✓ 🧸"


def test_first_clause_is_the_notebooks_keep_rule():
    assert first_clause("a stuffed brown meerkat dressed in a zebra suit, by Jeff Koons, trending on artstation") == \
        "a stuffed brown meerkat dressed in a zebra suit"
    assert first_clause("no comma here") == "no comma here"


def test_template_parts_and_empty_separators():
    assert build_prompt("a meerkat", TRIGGER).text == f"a meerkat, {TRIGGER}"
    assert build_prompt(None, TRIGGER).text == TRIGGER  # no ", cartoon"
    assert build_prompt("a meerkat", "").text == "a meerkat"
    assert build_prompt("  ", "  ").text == ""
    assert build_prompt("a meerkat,", "cartoon", template="{trigger} of {caption}").text == "cartoon of a meerkat"


def test_a_long_subject_is_cut_from_its_end_and_the_trigger_words_stay(caplog):
    subject = " ".join(f"word{i}" for i in range(100))
    with caplog.at_level(logging.WARNING, logger="processor.prompt"):
        built = build_prompt(subject, TRIGGER, max_tokens=40, fields={"style": "disney"})
    assert built.truncated and built.tokens <= 40 and built.tokens == default_counter(built.text)
    assert built.text.endswith(f", {TRIGGER}") and built.text.startswith("word0 word1 ")
    kept = built.text[: -len(f", {TRIGGER}")].split(" ")
    assert built.dropped.split(" ") == [f"word{i}" for i in range(len(kept), 100)]
    # One more word would not have fit.
    assert default_counter(f"{' '.join(kept)} word{len(kept)}, {TRIGGER}") > 40
    [record] = [r for r in caplog.records if r.getMessage() == "prompt_truncated"]
    assert record.style == "disney" and record.what == "prompt" and record.tokens == built.tokens


def test_trigger_words_alone_too_long_are_cut_too():
    trigger = " ".join(f"t{i}" for i in range(100))
    built = build_prompt("a bear", trigger, max_tokens=20)
    assert built.tokens <= 20 and built.text.startswith("t0 t1") and "bear" not in built.text
    assert built.dropped.startswith("a bear t")


def test_a_prompt_that_fits_is_not_cut():
    built = build_prompt("a bear", TRIGGER)
    assert not built.truncated and built.dropped == "" and built.tokens == default_counter(built.text)


def test_subject_precedence_per_image_prompt_then_caption_then_style():
    assert subject_for(ItemContext(caption="cap", prompt="mine", prompt_source="metadata"), "style") == (
        "mine",
        "metadata",
    )
    assert subject_for(ItemContext(caption="cap"), "style") == ("cap", "caption")
    assert subject_for(ItemContext(caption=" \x00"), "style") == ("style", "style")
    assert subject_for(None, None) == (None, "none")


def test_style_prompt_appends_negative_terms_and_records_its_source():
    context = ItemContext(caption="a bear", negative_terms="text, watermark", template="{trigger}: {caption}")
    built = style_prompt(trigger="toon", negative="blurry", style_subject=None, context=context)
    assert built.parameters() == {"prompt": "toon: a bear", "negative": "blurry, text, watermark",
                                  "prompt_source": "caption", "prompt_tokens": default_counter("toon: a bear"),
                                  "prompt_truncated": False}


def test_metadata_prompt_is_read_case_insensitively():
    assert metadata_prompt({"Prompt": "a tin robot"}) == "a tin robot"
    assert metadata_prompt({"prompt": " \n"}) is None and metadata_prompt(None) is None


def test_caption_item_without_a_captioner_still_carries_the_per_image_prompt():
    settings = CaptionSettings(template="{caption} in {trigger}")
    context, caption = caption_item(None, None, settings=settings, styles={}, style_names=[],
                                    sidecar_prompt="", metadata_prompt="a robot")
    assert caption is None and context.prompt == "a robot" and context.prompt_source == "metadata"
    assert context.template == "{caption} in {trigger}"


@pytest.mark.parametrize("template, problem", [("{caption}, {style}", "unknown: ['style']"),
                                              ("{caption", "not a format string")])
def test_bad_template_is_a_config_error_naming_the_key(tmp_path, template, problem):
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"caption": {"template": template}}))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "caption.template" in str(info.value) and problem in str(info.value)


def test_bad_clip_model_name_is_a_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"caption": {"clip_model": "ViT-L-14"}}))
    with pytest.raises(ConfigError, match=r"caption\.clip_model"):
        load_settings(path)


def test_shipped_config_captions_like_the_notebook_but_the_toon_quickstart_needs_no_model():
    settings = load_settings(Path(__file__).parents[2] / "config.yaml")
    caption = settings.caption
    assert (caption.mode, caption.clip_model, caption.keep) == ("fast", "ViT-L-14/openai", "first-clause")
    assert caption.caption_model == "Salesforce/blip-image-captioning-large"
    assert caption.template == "{caption}, {trigger}"
    assert not caption_used(caption, settings.styles, settings.run.styles)  # run.styles: [toon]
    assert caption_used(caption, settings.styles, ["modern-disney"])
    assert not caption_used(caption, settings.styles, ["waterfall"])  # instruct-pix2pix takes an instruction
