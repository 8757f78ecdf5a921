"""What the family table fixes in what runs and what is recorded, on tiny random-weight models
through the production engines: the steps a flow transformer really runs, the prompt its T5 encoder
reads, options a family does not run, a negative prompt that had no effect, the photo reaching
the Kontext editor, instruct-pix2pix following its instruction and image guidance."""

from __future__ import annotations

import pytest
import torch

from processor.cli.compose import make_engine
from processor.config import EditStyle, Img2ImgStyle, InstructPix2PixStyle, ModelSettings, Txt2ImgStyle
from processor.errors import ConfigError
from processor.models.loader import ModelLoader
from processor.pipeline.base import ItemContext
from testkit.images import photo_image
from testkit.models.flow import T5_WORDS, build_flux, build_kontext, build_sd3


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {"flux": str(build_flux(root / "tiny-flux-dev")), "sd3": str(build_sd3(root / "tiny-sd3"))}


@pytest.fixture(scope="module")
def tiny_kontext(tmp_path_factory) -> str:
    return str(build_kontext(tmp_path_factory.mktemp("models") / "tiny-kontext"))


def run(style, *, image=None, context=None, loader=None):
    engine = make_engine("s", style, loader or ModelLoader(ModelSettings()))
    engine.setup()
    return engine, engine(image or photo_image(96, 72, seed=3), context)


def counting(monkeypatch, cls) -> list[object]:
    """Every ``cls.forward`` call appends its first input (the batch it evaluates)."""
    calls: list[object] = []
    forward = cls.forward

    def counted(self, *args, **kwargs):
        calls.append(args[0] if args else next(iter(kwargs.values())))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counted)
    return calls


@pytest.mark.parametrize("name, transformer", [("flux", "FluxTransformer2DModel"), ("sd3", "SD3Transformer2DModel")])
def test_a_flow_model_records_the_steps_it_ran_when_steps_x_strength_is_not_whole(flow_models, monkeypatch, name,
                                                                                    transformer):
    import diffusers

    # 7 x 0.5 = 3.5: a UNet pipeline truncates it to 3 steps, diffusers' flow pipelines run 4.
    style = Img2ImgStyle(model=flow_models[name], rounds=[{"strength": 0.5, "guidance": 3.5}], steps=7, variants=1,
                         size=64)
    calls = counting(monkeypatch, getattr(diffusers, transformer))
    seen: list[dict] = []
    _, [variant] = run(style, context=ItemContext(report=lambda **p: seen.append(p)))
    p = variant.parameters
    assert len(calls) == 4  # the transformer's evaluations: one call per denoising step
    assert p["rounds"][0]["denoising_steps"] == p["denoising_steps"] == p["denoising_steps_all_variants"] == 4
    assert {e["steps"] for e in seen if "steps" in e} == {4} and max(e["step"] for e in seen if "step" in e) == 4


def t5_tokens(monkeypatch) -> list[int]:
    """The non-padding tokens of every prompt the T5 encoders read, appended per call."""
    from transformers import T5EncoderModel

    read: list[int] = []
    forward = T5EncoderModel.forward

    def counted(self, input_ids=None, *args, **kwargs):
        read.extend(int(n) for n in (input_ids != self.config.pad_token_id).sum(dim=1))
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(T5EncoderModel, "forward", counted)
    return read


#: A subject of 50 words: more than CLIP's 77 tokens, less than the T5 limits (256, 512).
LONG = " ".join((T5_WORDS * 2)[:50])


@pytest.mark.parametrize("name, limit", [("flux", 512), ("sd3", 256)])
def test_the_t5_encoder_reads_the_prompt_beyond_clips_77_tokens(flow_models, monkeypatch, name, limit):
    style = Img2ImgStyle(model=flow_models[name], prompt=LONG, trigger="cartoon", negative="blurry", steps=2,
                         rounds=[{"strength": 1.0, "guidance": 3.5}], variants=1, size=64)
    read = t5_tokens(monkeypatch)
    engine, [variant] = run(style)
    t5 = engine.pipe.tokenizer_3 if name == "sd3" else engine.pipe.tokenizer_2
    whole = len(t5(f"{LONG}, cartoon").input_ids)
    assert max(read) == whole  # the encoder read all of it, not the part CLIP's 77 tokens hold
    p = variant.parameters
    assert p["prompt_truncated"] is True and p["prompt_tokens"] <= 77  # CLIP's prompt is cut...
    assert p["t5_prompt"] == f"{LONG}, cartoon" and p["t5_prompt_truncated"] is False  # ...the T5's is whole
    assert p["max_sequence_length"] == limit and 77 < whole == p["t5_prompt_tokens"] <= limit


def test_the_kontext_t5_encoder_reads_the_whole_instruction(tiny_kontext, monkeypatch):
    read = t5_tokens(monkeypatch)
    engine, [variant] = run(EditStyle(model=tiny_kontext, instruction=LONG, steps=1, variants=1, size=64))
    assert max(read) == len(engine.pipe.tokenizer_2(LONG).input_ids) > 77
    p = variant.parameters
    assert p["instruction"] != LONG and p["t5_prompt"] == LONG and p["max_sequence_length"] == 512
    assert p["t5_prompt_tokens"] == max(read)


@pytest.mark.parametrize("key, value", [("refiner", {"model": "stabilityai/stable-diffusion-xl-refiner-1.0"}),
                                        ("turbo", True)])
@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_refiner_and_turbo_on_a_flow_model_are_refused_at_start(flow_models, name, key, value):
    style = Img2ImgStyle.model_validate({"model": flow_models[name], "steps": 2, key: value,
                                         "rounds": [{"strength": 0.5, "guidance": 0}]})
    engine = make_engine("flow", style, ModelLoader(ModelSettings()))
    with pytest.raises(ConfigError, match=rf"styles\.flow\.{key}: .*flow transformer.*drop {key}"):
        engine.setup()
    assert engine.pipe is None  # refused before any weights load


def test_a_negative_prompt_without_classifier_free_guidance_is_recorded_unused(tiny_sd, tiny_pix2pix, flow_models):
    loader = ModelLoader(ModelSettings())
    unguided = {"rounds": [{"strength": 0.5, "guidance": 1.0}], "steps": 2, "variants": 1, "negative": "blurry"}
    _, [plain] = run(Img2ImgStyle(model=str(tiny_sd), **unguided), loader=loader)
    assert plain.parameters["negative"] == "blurry" and plain.parameters["negative_used"] is False
    guided = unguided | {"rounds": [{"strength": 0.5, "guidance": 1.0}, {"strength": 0.5, "guidance": 5.0}]}
    _, [cfg] = run(Img2ImgStyle(model=str(tiny_sd), **guided), loader=loader)
    assert "negative_used" not in cfg.parameters  # the second round used it
    _, [sd3] = run(Img2ImgStyle(model=flow_models["sd3"], **unguided), loader=loader)
    assert sd3.parameters["negative_used"] is False
    _, [fresh] = run(Txt2ImgStyle(model=str(tiny_sd), guidance=1.0, steps=2, variants=1, negative="blurry"),
                     loader=loader)
    assert fresh.parameters["negative_used"] is False
    _, [fresh_cfg] = run(Txt2ImgStyle(model=str(tiny_sd), guidance=6.0, steps=2, variants=1, negative="blurry"),
                         loader=loader)
    assert "negative_used" not in fresh_cfg.parameters
    # instruct-pix2pix guides with the negative only while both its guidances are on.
    edit = {"model": str(tiny_pix2pix), "instruction": "make it snow", "steps": 2, "variants": 1, "negative": "dark"}
    _, [kept] = run(InstructPix2PixStyle(**edit, image_guidance=0.5), loader=loader)
    assert kept.parameters["negative_used"] is False
    _, [used] = run(InstructPix2PixStyle(**edit, image_guidance=1.5), loader=loader)
    assert "negative_used" not in used.parameters


def test_the_photo_reaches_the_kontext_editor(tiny_kontext, monkeypatch):
    from diffusers import FluxKontextPipeline

    style = EditStyle(model=tiny_kontext, instruction="make it red", steps=2, variants=1, size=64, seed=5)
    loader = ModelLoader(ModelSettings())
    given: list[torch.Tensor] = []
    call = FluxKontextPipeline.__call__

    def spy(self, *args, **kwargs):
        given.append(kwargs["image"])
        return call(self, *args, **kwargs)

    monkeypatch.setattr(FluxKontextPipeline, "__call__", spy)
    red, blue = photo_image(96, 72, seed=1), photo_image(96, 72, seed=8)
    _, [from_red] = run(style, image=red, loader=loader)
    _, [from_blue] = run(style, image=blue, loader=loader)
    # The same instruction and seed: only the photo differs, and so does the edit.
    assert from_red.image.tobytes() != from_blue.image.tobytes()
    import numpy as np
    from PIL import Image

    pixels = np.asarray(red.resize((64, 48), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    expected = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    assert given[0].shape == (1, 3, 48, 64) and torch.allclose(given[0], expected, atol=1e-6)


def test_instruct_pix2pix_follows_its_instruction_and_image_guidance(tiny_pix2pix):
    loader = ModelLoader(ModelSettings())
    base = {"model": str(tiny_pix2pix), "instruction": "make it snow", "steps": 3, "variants": 1, "seed": 2,
            "guidance": 7.5, "image_guidance": 1.5}
    image = photo_image(96, 72, seed=4)

    def pixels(**extra) -> bytes:
        return run(InstructPix2PixStyle(**base | extra), image=image, loader=loader)[1][0].image.tobytes()

    reference = pixels()
    assert pixels() == reference  # the same settings: the same picture
    assert pixels(instruction="put a waterfall in the background") != reference
    assert pixels(image_guidance=3.0) != reference
