"""Several inputs in one diffusion call (``run.batch_inputs``): each input's variants are what it
makes alone, a failure stays its own input's, and the worker takes only what is already prepared."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from processor.config import Settings
from processor.errors import JobCancelled
from processor.manifest import FailureRecord, Manifest
from processor.pipeline.base import ItemContext, VariantImage
from processor.pipeline.render import render_many
from testkit.images import photo_bytes
from tests.models.test_diffusion import CallSpy, drain, img2img_style, make_settings, spying_registry

SIZES = [(160, 120), (160, 120), (120, 160), (160, 120)]


def photos(sizes=SIZES) -> list[Image.Image]:
    return [Image.open(io.BytesIO(photo_bytes(w, h, seed=i))).convert("RGB")
            for i, (w, h) in enumerate(sizes)]


def pixels(variants: list[VariantImage]) -> list[np.ndarray]:
    return [np.asarray(v.image, dtype=np.int16) for v in variants]


def without_batch(parameters: dict) -> dict:
    return {k: v for k, v in parameters.items() if k not in ("batch_size", "batch_inputs")}


@pytest.fixture
def registry_and_spy(tiny_sd, tmp_path):
    style = img2img_style(tiny_sd, variants=2, shared_rounds=1)
    settings = make_settings(tmp_path, {"disney": style})
    registry, spies = spying_registry(settings)
    registry.setup(["disney"])
    return registry, spies[0]


def test_inputs_rendered_together_make_what_each_makes_alone(registry_and_spy):
    registry, spy = registry_and_spy
    engine = registry.engine("disney")
    images = photos()
    contexts = [ItemContext(caption="a toy cow"), ItemContext(prompt="a red toy robot", prompt_source="sidecar"),
                ItemContext(caption="a toy horse"), ItemContext(caption="a toy duck", negative_terms="grey")]
    together = engine.render_many(images, contexts, [engine.style] * len(images))
    calls = list(spy.batches)
    # Three inputs of one working size share each call (shared round: 1 row each; then 2 variants
    # each); the portrait photo has its own.
    assert sorted(calls) == sorted([3, 6, 6, 1, 2, 2])
    spy.batches.clear()
    alone = [engine(image, context) for image, context in zip(images, contexts, strict=True)]
    assert spy.batches == [1, 2, 2] * 4
    for mine, reference in zip(together, alone, strict=True):
        assert [v.seed for v in mine] == [v.seed for v in reference] == [7, 8]
        for a, b in zip(pixels(mine), pixels(reference), strict=True):
            # The same rows and the same generators: at most float rounding apart.
            assert np.abs(a - b).max() <= 2
        assert [without_batch(v.parameters) for v in mine] == [without_batch(v.parameters) for v in reference]
    assert "a red toy robot" in together[1][0].parameters["prompt"]
    assert "grey" in together[3][0].parameters["negative"]
    assert together[0][0].parameters["batch_inputs"] == 3 and together[0][0].parameters["batch_size"] == 6
    assert "batch_inputs" not in together[2][0].parameters and together[2][0].parameters["batch_size"] == 2
    assert "batch_inputs" not in alone[0][0].parameters and alone[0][0].parameters["batch_size"] == 2


def test_inputs_with_their_own_seed_and_variants_share_the_pipeline_and_its_calls(registry_and_spy):
    registry, spy = registry_and_spy
    own = [None, {"seed": 100, "variants": 3}, {"seed": 5, "negative": "grey"}]
    images = photos([(160, 120)] * 3)
    contexts = [ItemContext(caption=f"toy {j}") for j in range(3)]
    outcomes = render_many(images, ["disney"], registry, own, contexts)
    # The shared round for three inputs, then each branch round in one call for 2 + 3 + 2 variants.
    assert spy.batches == [3, 7, 7]
    assert [[v.seed for v in variants] for variants, _ in outcomes] == [[7, 8], [100, 101, 102], [5, 6]]
    assert "grey" in outcomes[2][0][0].parameters["negative"]
    spy.batches.clear()
    for j in range(3):
        alone = registry.engine("disney", own[j])(images[j], ItemContext(caption=f"toy {j}"))
        assert [without_batch(v.parameters) for v in alone] == [without_batch(v.parameters) for v in outcomes[j][0]]
        for a, b in zip(pixels(alone), pixels(outcomes[j][0]), strict=True):
            assert np.abs(a - b).max() <= 2
    assert registry.engine("disney", own[1]).base is registry.engine("disney")


def test_one_bad_input_fails_alone_and_the_others_are_made(registry_and_spy):
    registry, spy = registry_and_spy
    real = spy.pipe

    class Refuses:
        """A pipeline that fails any call carrying the prompt ``boom`` (a model fault on one input)."""

        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, **kwargs):
            if any("boom" in p for p in kwargs["prompt"]):
                raise RuntimeError("model fault on this input")
            return real(**kwargs)

    spy.pipe = Refuses()
    images = photos([(160, 120)] * 3)
    contexts = [ItemContext(caption="a toy cow"), ItemContext(prompt="boom", prompt_source="sidecar"),
                ItemContext(caption="a toy duck")]
    outcomes = render_many(images, ["disney"], registry, [None] * 3, contexts)
    assert isinstance(outcomes[1], Exception) and "model fault on this input" in str(outcomes[1])
    for outcome in (outcomes[0], outcomes[2]):
        variants, timings = outcome
        assert len(variants) == 2 and "style:disney" in timings
        assert "batch_inputs" not in variants[0].parameters  # run again alone after the shared call failed
    assert "disney" in contexts[0].made and "disney" not in contexts[1].made


def test_a_cancel_inside_a_batch_stops_only_its_own_input(registry_and_spy):
    registry, _ = registry_and_spy
    reports: list[dict] = []

    def cancelled(**progress):
        reports.append(progress)
        if progress.get("step"):
            raise JobCancelled("cancelled by its owner")

    contexts = [ItemContext(caption="a toy cow"), ItemContext(caption="a toy cat", report=cancelled),
                ItemContext(caption="a toy duck")]
    outcomes = render_many(photos([(160, 120)] * 3), ["disney"], registry, [None] * 3, contexts)
    assert isinstance(outcomes[1], JobCancelled)
    assert all(len(outcome[0]) == 2 for outcome in (outcomes[0], outcomes[2]))
    assert reports[0] == {"stage": "style:disney"} and any(r.get("step") for r in reports)


def test_the_worker_renders_waiting_inputs_together_and_each_result_matches(tiny_sd, tmp_path):
    style = img2img_style(tiny_sd, variants=2)
    inputs = {f"inputs/toy-{i}.jpg": photo_bytes(160, 120, seed=i) for i in range(5)}
    inputs["inputs/toy-2.json"] = json.dumps({"prompt": "a red toy robot"}).encode()
    digests = {}
    for batch in (1, 4):
        settings = make_settings(tmp_path / f"batch-{batch}", {"disney": style})
        settings.run.batch_inputs = batch
        settings.run.prefetch = 4
        registry, spies = spying_registry(settings)
        store, layout = drain(settings, inputs, registry)
        manifests = {key: Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body)
                     for key in inputs if key.endswith(".jpg")}
        assert all(len(m.variants) == 2 for m in manifests.values())
        together = [m.variants[0].parameters.get("batch_inputs", 1) for m in manifests.values()]
        if batch == 1:
            assert set(spies[0].batches) == {2} and set(together) == {1}
        else:
            # The fetch stage prepares ahead while the first input computes: later calls take several.
            assert max(spies[0].batches) > 2 and max(together) > 1
            assert max(together) <= 4
        digests[batch] = {key: [np.asarray(Image.open(io.BytesIO(store.get(v.key).body)), dtype=np.int16)
                                for v in m.variants] for key, m in manifests.items()}
        prompt = manifests["inputs/toy-2.jpg"].variants[0].parameters["prompt"]
        assert "a red toy robot" in prompt
    for key, images in digests[1].items():
        for a, b in zip(images, digests[4][key], strict=True):
            assert np.abs(a - b).max() <= 2, key


def test_a_failing_input_in_a_worker_batch_gets_its_own_failure_record(tiny_sd, tmp_path):
    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, variants=2)})
    settings.run.batch_inputs = 4
    settings.run.prefetch = 4
    registry, _ = spying_registry(settings)
    original = CallSpy.__call__

    def refusing(self, **kwargs):
        if any("boom" in p for p in kwargs["prompt"]):
            raise RuntimeError("model fault on this input")
        return original(self, **kwargs)

    inputs = {f"inputs/toy-{i}.jpg": photo_bytes(160, 120, seed=i) for i in range(4)}
    inputs["inputs/toy-1.json"] = json.dumps({"prompt": "boom"}).encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CallSpy, "__call__", refusing)
        store, layout = drain(settings, inputs, registry)
    record = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/toy-1.jpg").failure).body)
    assert record.error == "StageFailed" and "model fault on this input" in record.message
    for i in (0, 2, 3):
        manifest = Manifest.model_validate_json(store.get(layout.for_input(f"inputs/toy-{i}.jpg").manifest).body)
        assert len(manifest.variants) == 2


def test_batch_inputs_is_validated():
    with pytest.raises(ValidationError, match="batch_inputs"):
        Settings(run={"batch_inputs": 0})


def test_the_worker_counts_its_inputs_per_call(tiny_sd, tmp_path):
    from processor.cli.compose import build_registry
    from processor.store.local import LocalStore
    from processor.worker.metrics import PrometheusObserver
    from processor.worker.runner import Worker

    settings = make_settings(tmp_path, {"disney": img2img_style(tiny_sd, variants=1)})
    settings.run.batch_inputs = 3
    store = LocalStore(settings.store.root)
    for i in range(5):
        store.put(f"inputs/toy-{i}.jpg", photo_bytes(160, 120, seed=i))
    observer = PrometheusObserver(stall_s=600)
    worker = Worker(store, settings, build_registry(settings), worker_id="w1", observer=observer)
    worker.setup()
    assert worker.run_once() == 0
    calls = observer.registry.get_sample_value("processor_compute_batch_inputs_count")
    assert observer.registry.get_sample_value("processor_compute_batch_inputs_sum") == 5
    assert 2 <= calls <= 5  # at most three a call
