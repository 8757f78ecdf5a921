"""``styles.<name>.shared_rounds``: the first N img2img rounds run once, the rest per variant.

Tiny random-weight SD models (``tests/models/conftest.py``) through the worker and the engine. The UNet
is counted with a forward pre-hook (batch size of every call), so "the shared rounds run once" is
checked on the work actually done, not on what the manifest says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from processor.cli.compose import build_registry
from processor.config import Img2ImgStyle, ModelSettings, load_settings
from processor.errors import ConfigError, InvalidSidecar
from processor.manifest import FailureRecord
from processor.models.loader import ModelLoader
from processor.pipeline.img2img import Img2ImgEngine
from processor.pipeline.sampling import round_seed, to_pil, to_tensor, working_size
from processor.pipeline.sidecar import parse_sidecar
from testkit.images import photo_bytes, photo_image
from tests.models.test_diffusion import ROUNDS, drain, img2img_style, make_settings, manifest_of, spying_registry

#: ROUNDS at steps 4 denoise int(4 x strength) = 2, 2, 1 steps; DPM++ 2M makes one UNet call per
#: denoising step, on twice the batch (classifier-free guidance: every round's guidance is > 1).
ROUND_STEPS = [2, 2, 1]
VARIANTS = 3
SEED = 7


def unet_batches(unet) -> tuple[list[int], object]:
    """A list that every UNet call appends its batch size to, and the hook's handle."""
    batches: list[int] = []

    def hook(module, args, kwargs):
        batches.append((args[0] if args else kwargs["sample"]).shape[0])

    return batches, unet.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("shared", [1, 2])
def test_shared_rounds_run_once_and_the_variants_branch_from_them(tiny_sd, tmp_path, shared):
    style = img2img_style(tiny_sd, shared_rounds=shared, variants=VARIANTS, seed=SEED)
    settings = make_settings(tmp_path / "a", {"disney": style})
    registry = build_registry(settings)
    engine = registry.engine("disney")
    assert engine.describe()["shared_rounds"] == shared
    batches, handle = unet_batches(engine.pipe.unet)
    photo = {"inputs/cow.jpg": photo_bytes(160, 120, seed=5)}
    store, layout = drain(settings, photo, registry)
    handle.remove()

    # The shared rounds once at batch 1 (x2 for guidance), then every branch round at all variants.
    expected = [2] * sum(ROUND_STEPS[:shared]) + [2 * VARIANTS] * sum(ROUND_STEPS[shared:])
    assert batches == expected
    unshared_samples = 2 * VARIANTS * sum(ROUND_STEPS)
    assert sum(batches) < unshared_samples

    variants = manifest_of(store, layout, "inputs/cow.jpg").variants
    assert len(variants) == VARIANTS
    assert len({v.sha256 for v in variants}) == VARIANTS  # the branch rounds still make them differ
    shared_steps = sum(ROUND_STEPS[:shared])
    for i, v in enumerate(variants):
        p = v.parameters
        assert v.seed == p["seed"] == SEED + i
        assert p["shared_rounds"] == shared
        assert [r["shared"] for r in p["rounds"]] == [k < shared for k in range(len(ROUNDS))]
        assert [r["denoising_steps"] for r in p["rounds"]] == ROUND_STEPS
        # Shared rounds carry the chain's seed (the style's), the same in every variant.
        assert [r["seed"] for r in p["rounds"]] == [round_seed(SEED if k < shared else SEED + i, k)
                                                     for k in range(len(ROUNDS))]
        assert p["denoising_steps"] == sum(ROUND_STEPS)
        assert p["shared_denoising_steps"] == shared_steps
        # The steps actually run for this input's variants: what the UNet hook counted.
        assert p["denoising_steps_all_variants"] == shared_steps + VARIANTS * (sum(ROUND_STEPS) - shared_steps)
        assert p["denoising_steps_all_variants"] == len(batches[:shared_steps]) + VARIANTS * len(batches[shared_steps:])
        assert p["batch_size"] == VARIANTS and p["oom_halvings"] == 0

    # Same bytes, style and seed: a fresh worker in a fresh bucket writes identical variants.
    again = make_settings(tmp_path / "b", {"disney": style})
    store2, layout2 = drain(again, photo)
    assert [v.sha256 for v in manifest_of(store2, layout2, "inputs/cow.jpg").variants] == [v.sha256 for v in variants]


def reference_chain(pipe, image: Image.Image, *, rounds: list[dict], prompt: str, negative: str, steps: int,
                    seed: int, shared: int) -> list[bytes]:
    """The contract written out with plain diffusers calls: rounds before ``shared`` on one image
    with round seeds of ``seed``; the rest on every variant, variant i with round seeds of seed + i.
    With ``shared`` = 0 this is the engine's loop from before ``shared_rounds`` existed."""
    size = working_size(image.width, image.height, 64)
    current = to_tensor(image.convert("RGB").resize(size, Image.Resampling.LANCZOS))
    variant_seeds = [seed + i for i in range(VARIANTS)]
    with torch.inference_mode():
        for k, rnd in enumerate(rounds):
            round_seeds = [seed] if k < shared else variant_seeds
            if k == shared:
                current = current.expand(VARIANTS, -1, -1, -1)
            current = pipe(prompt=[prompt] * len(round_seeds), negative_prompt=[negative] * len(round_seeds),
                           image=current, strength=rnd["strength"], guidance_scale=rnd["guidance"],
                           num_inference_steps=steps, output_type="pt",
                           generator=[torch.Generator("cpu").manual_seed(round_seed(s, k)) for s in round_seeds],
                           ).images
    return [p.tobytes() for p in to_pil(current)]


def test_engine_output_follows_the_seeding_contract_and_zero_is_unchanged(tiny_sd):
    image = photo_image(96, 72, seed=2)
    loader = ModelLoader(ModelSettings())
    rounds = ROUNDS[:2]  # two rounds keep it quick: shared_rounds 1 shares one, branches one
    base = {"model": str(tiny_sd), "trigger": "cartoon", "negative": "blurry", "rounds": rounds, "steps": 4,
            "variants": VARIANTS, "seed": SEED}
    outputs = {}
    for label, extra in (("absent", {}), ("shared-1", {"shared_rounds": 1})):
        engine = Img2ImgEngine(label, Img2ImgStyle(**base, **extra), loader)
        engine.setup()
        outputs[label] = [v.image.tobytes() for v in engine(image)]
        reference = reference_chain(
            engine.pipe,
            image,
            rounds=rounds,
            prompt="cartoon",
            negative="blurry",
            steps=4,
            seed=SEED,
            shared=extra.get("shared_rounds", 0),
        )
        assert outputs[label] == reference, label
    assert outputs["shared-1"] != outputs["absent"]
    assert len(set(outputs["shared-1"])) == VARIANTS


def test_cuda_oom_halves_only_the_branch_rounds(tiny_sd, tmp_path):
    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, variants=4, shared_rounds=2)})
    registry, spies = spying_registry(settings, oom_above=1)
    store, layout = drain(settings, {"inputs/cow.jpg": photo_bytes(160, 120)}, registry)
    variants = manifest_of(store, layout, "inputs/cow.jpg").variants
    assert len(variants) == 4 and len({v.sha256 for v in variants}) == 4
    assert {v.parameters["batch_size"] for v in variants} == {1}
    assert variants[0].parameters["oom_halvings"] == 2  # 4 -> 2 -> 1, in the first branch round
    # The 2 shared rounds once (batch 1, never halved), then the branch round for 4 variants.
    assert spies[0].batches == [1, 1] + [1] * 4


def test_cuda_oom_in_a_shared_round_is_a_failure_record(tiny_sd, tmp_path):
    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, shared_rounds=1)})
    registry, spies = spying_registry(settings, oom_above=0)
    store, layout = drain(settings, {"inputs/cow.jpg": photo_bytes(160, 120)}, registry)
    record = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/cow.jpg").failure).body)
    assert record.error == "StageFailed"
    assert "shared round" in record.message and "styles.disney.size" in record.message
    assert not record.permanent
    assert spies[0].batches == []


def test_shared_rounds_must_leave_a_round_per_variant(tmp_path):
    with pytest.raises(ValueError, match=r"shared_rounds 3 must be less than the number of rounds \(3\).*"
                                         r"lower shared_rounds to at most 2 or add rounds"):
        Img2ImgStyle(model="x/y", rounds=ROUNDS, shared_rounds=3)
    with pytest.raises(ValueError, match="shared_rounds"):
        Img2ImgStyle(model="x/y", rounds=ROUNDS, shared_rounds=-1)
    assert Img2ImgStyle(model="x/y", rounds=ROUNDS).shared_rounds == 0

    config = tmp_path / "config.yaml"
    style = {"engine": "img2img", "model": "x/y", "rounds": [{"strength": 0.5}], "shared_rounds": 1}
    config.write_text(json.dumps({"run": {"styles": ["disney"]}, "styles": {"disney": style}}))
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert "styles.disney" in message and "shared_rounds 1 must be less than the number of rounds (1)" in message
    assert str(config) in message


def test_a_sidecar_cannot_set_shared_rounds():
    # Sidecar overrides apply to every style of the input, and shared_rounds is only valid against
    # one style's rounds (which a sidecar cannot set either): it stays a style key.
    with pytest.raises(InvalidSidecar, match="shared_rounds: Extra inputs are not permitted"):
        parse_sidecar(b'{"shared_rounds": 1}', "inputs/cow.json")


def test_shipped_styles_do_not_share_rounds():
    settings = load_settings(Path(__file__).parents[2] / "config.yaml")
    assert all(getattr(s, "shared_rounds", 0) == 0 for s in settings.styles.values())


def test_background_stage_runs_per_variant_after_shared_rounds(tiny_sd, tmp_path):
    """The background stage sees ordinary variants: one background per variant, seeded by it."""
    from testkit.images import encode
    from testkit.scenes import scene

    style = img2img_style(tiny_sd, rounds=ROUNDS[:2], shared_rounds=1, variants=2,
                          background={"mode": "generate", "prompt": "a sunny beach", "steps": 3, "harmonize": 0})
    settings = make_settings(tmp_path, {"beach": style})
    photo = scene(128, 96, seed=0, centre=(0.4, 0.6), scale=0.7).image
    store, layout = drain(settings, {"inputs/toy.png": encode(photo, "PNG")})
    variants = manifest_of(store, layout, "inputs/toy.png").variants
    assert len(variants) == 2 and variants[0].sha256 != variants[1].sha256
    for i, v in enumerate(variants):
        assert [r["shared"] for r in v.parameters["rounds"]] == [True, False]
        assert v.background is not None and v.background.applied and v.background.seed == SEED + i
