"""The caption stage end to end: tiny random-weight CLIP (``local-dir:``) and BLIP models, short
label lists, a tiny Stable Diffusion img2img style, run through the worker."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from processor.cli.compose import build_captioner, build_registry
from processor.cli.main import main
from processor.config import load_settings
from processor.errors import ModelUnavailableError
from processor.manifest import FailureRecord, Manifest
from processor.pipeline import interrogator
from processor.pipeline.caption import TABLES_BY_MODE, label_lists, table_name
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from processor.worker.runner import Worker
from testkit.images import photo_bytes

TRIGGER = "cartoon, Pixar, Disney character, 3D render, modern disney style"
PHOTOS = {
    "inputs/meerkat.jpg": photo_bytes(160, 120, seed=3),
    "inputs/bear.png": photo_bytes(120, 160, fmt="PNG", seed=4),
}
CLIP_MODES = ("fast", "classic", "best", "negative")


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Every test here fails if clip-interrogator (or anything through requests) reaches the network."""
    import clip_interrogator.clip_interrogator as ci
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(ci, "_download_file", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def count_encodes(monkeypatch):
    """How many label tables were encoded with CLIP (the expensive part the caches avoid)."""
    calls: list[int] = []
    original = interrogator.encode_labels

    def counting(clip_model, tokenize, labels, device, chunk_size):
        calls.append(len(labels))
        return original(clip_model, tokenize, labels, device, chunk_size)

    monkeypatch.setattr(interrogator, "encode_labels", counting)
    return calls


def caption_config(tmp_path: Path, tiny_sd, tiny_clip, tiny_blip, tiny_labels, *, cache: Path | None = None,
                   store: dict | None = None, **caption) -> Path:
    cfg = {
        "store": store or {"kind": "local", "root": str(tmp_path / "bucket")},
        "run": {"styles": ["disney"], "poll_interval_s": 0.05},
        "styles": {"disney": {"engine": "img2img", "model": str(tiny_sd), "trigger": TRIGGER, "negative": "blurry",
                              "rounds": [{"strength": 0.5}], "steps": 2, "variants": 2, "seed": 1}},
        "pipeline": {"contact_sheet": False},
        "caption": {"mode": "fast", "clip_model": f"local-dir:{tiny_clip}", "caption_model": str(tiny_blip),
                    "labels_dir": str(tiny_labels), "cache_dir": str(cache or tmp_path / "label-cache"),
                    "max_flavors": 4} | caption,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    if store is None:
        (tmp_path / "bucket").mkdir(exist_ok=True)  # doctor checks the bucket (and never creates one)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


#: One engine registry per style config for the whole module: the tiny SD pipeline loads once.
_REGISTRIES: dict[str, object] = {}


def registry_for(settings):
    key = json.dumps({k: v.model_dump(mode="json") for k, v in settings.styles.items()}, sort_keys=True)
    if key not in _REGISTRIES:
        _REGISTRIES[key] = build_registry(settings)
    return _REGISTRIES[key]


def drain(settings, inputs: dict[str, bytes], store=None, metadata: dict[str, dict] | None = None):
    store = store or LocalStore(settings.store.root)
    for key, data in inputs.items():
        store.put(key, data, metadata=(metadata or {}).get(key))
    captioner = build_captioner(settings, store)
    worker = Worker(store, settings, registry_for(settings), worker_id="w1", captioner=captioner)
    worker.setup()
    assert worker.run_once() == 0
    return store, KeyLayout(settings.prefixes), captioner


def manifest_of(store, layout, key) -> Manifest:
    return Manifest.model_validate_json(store.get(layout.for_input(key).manifest).body)


@pytest.mark.parametrize("mode", [*CLIP_MODES, "blip"])
def test_every_mode_captions_each_input_into_its_prompts_and_manifest(mode, tiny_sd, tiny_clip, tiny_blip, tiny_labels,
                                                                      tmp_path, count_encodes):
    settings = load_settings(caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels, mode=mode))
    # The "done when" names fast and classic: every input; the other modes: one is enough.
    photos = PHOTOS if mode in ("fast", "classic") else dict(list(PHOTOS.items())[:1])
    store, layout, captioner = drain(settings, photos)
    assert dict(captioner.table_sources) == ({"computed": len(TABLES_BY_MODE[mode])} if TABLES_BY_MODE[mode] else {})
    assert len(count_encodes) == len(TABLES_BY_MODE[mode])
    for key in photos:
        manifest = manifest_of(store, layout, key)
        caption = manifest.caption
        assert caption is not None and caption.mode == mode and caption.replaced_by is None
        assert caption.text and caption.text == caption.raw.split(",")[0].strip()  # keep: first-clause
        assert caption.caption_model == str(tiny_blip)
        assert caption.clip_model == (f"local-dir:{tiny_clip}" if mode != "blip" else None)
        assert caption.seconds > 0 and manifest.timings["caption"] == caption.seconds
        assert len(manifest.variants) == 2
        for variant in manifest.variants:
            p = variant.parameters
            assert p["prompt"] == f"{caption.text}, {TRIGGER}"
            assert p["prompt_source"] == "caption" and p["prompt_tokens"] <= 77
            if mode == "negative":
                assert caption.negative and p["negative"] == f"blurry, {caption.negative}"
            else:
                assert caption.negative is None and p["negative"] == "blurry"
    if mode in ("fast", "best"):
        # The interrogator ranked CLIP terms after the caption; keep dropped them from the prompt.
        assert any("," in manifest_of(store, layout, key).caption.raw for key in photos)


def test_keep_full_keeps_the_ranked_terms(tiny_sd, tiny_clip, tiny_blip, tiny_labels, tmp_path):
    settings = load_settings(caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels, mode="classic",
                                            keep="full", template="{trigger}, {caption}"))
    store, layout, _ = drain(settings, {"inputs/a.jpg": photo_bytes(160, 120)})
    manifest = manifest_of(store, layout, "inputs/a.jpg")
    # classic: "<caption>, <medium> <artist>, <trending>, <movement>, <3 flavors>"
    assert manifest.caption.text == manifest.caption.raw and manifest.caption.raw.count(",") >= 5
    assert manifest.variants[0].parameters["prompt"].startswith(f"{TRIGGER}, {manifest.caption.text[:20]}")


def test_label_tables_are_computed_once_then_read_from_the_local_then_the_shared_cache(
        tiny_sd, tiny_clip, tiny_blip, tiny_labels, tmp_path, s3_server, monkeypatch, count_encodes):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    from processor.store.s3 import S3Store

    bucket = s3_server.new_bucket()
    store_cfg = s3_server.settings(bucket).model_dump(mode="json")
    tables = len(TABLES_BY_MODE["fast"])

    def run(name: str, cache: Path, photo: int):
        config = caption_config(
            tmp_path / name, tiny_sd, tiny_clip, tiny_blip, tiny_labels, cache=cache, store=store_cfg
        )
        settings = load_settings(config)
        store = S3Store.from_settings(settings.store)
        before = len(count_encodes)
        key, meta = f"inputs/{name}.jpg", f"inputs/{name}-meta.jpg"
        inputs = {key: photo_bytes(160, 120, seed=photo), meta: photo_bytes(160, 120, seed=photo + 10)}
        # x-amz-meta-prompt set on upload (what `processor submit --prompt` does) replaces the caption.
        _, layout, captioner = drain(settings, inputs, store=store, metadata={meta: {"prompt": f"a {name} robot"}})
        assert manifest_of(store, layout, key).caption.text
        with_meta = manifest_of(store, layout, meta)
        assert with_meta.caption.replaced_by == "metadata"
        assert with_meta.variants[0].parameters["prompt"] == f"a {name} robot, {TRIGGER}"
        return captioner, len(count_encodes) - before, store

    first, encoded, store = run("first", tmp_path / "cache-a", 1)
    assert encoded == tables and first.table_sources == {"computed": tables}
    shared = sorted(o.key for o in store.list(".processor/cache/label-tables/"))
    lists = label_lists(tiny_labels)
    identity = first.clip_identity
    assert identity.startswith("local:sha256:")
    assert shared == sorted(f".processor/cache/label-tables/{table_name(identity, t, lists[t])}"
                            for t in TABLES_BY_MODE["fast"])
    assert sorted(p.name for p in (tmp_path / "cache-a").iterdir()) == sorted(k.rsplit("/", 1)[1] for k in shared)

    again, encoded, _ = run("again", tmp_path / "cache-a", 2)  # same local cache
    assert encoded == 0 and again.table_sources == {"local": tables}

    fresh, encoded, _ = run("fresh", tmp_path / "cache-b", 3)  # empty local cache: from the bucket
    assert encoded == 0 and fresh.table_sources == {"shared": tables}
    assert sorted(p.name for p in (tmp_path / "cache-b").iterdir()) == sorted(k.rsplit("/", 1)[1] for k in shared)


def test_a_different_clip_model_or_label_list_gets_its_own_tables(tiny_clip, tiny_labels, tmp_path):
    lists = label_lists(tiny_labels)
    name = table_name("local:sha256:aa", "flavors", lists["flavors"])
    assert name != table_name("local:sha256:bb", "flavors", lists["flavors"])
    assert name != table_name("local:sha256:aa", "flavors", lists["flavors"] + ["one more"])
    assert name == table_name("local:sha256:aa", "flavors", list(lists["flavors"]))


def test_a_corrupt_cached_table_is_recomputed(tiny_sd, tiny_clip, tiny_blip, tiny_labels, tmp_path, caplog):
    settings = load_settings(caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels, mode="negative"))
    captioner = build_captioner(settings)
    captioner.setup()
    cache = tmp_path / "label-cache"
    victim = sorted(cache.iterdir())[0]
    victim.write_bytes(b"not a safetensors file")
    again = build_captioner(settings)
    with caplog.at_level(logging.WARNING, logger="processor.caption"):
        again.setup()
    assert again.table_sources == {"computed": 1, "local": 1}
    assert any(r.getMessage() == "label_table_invalid" for r in caplog.records)
    assert victim.read_bytes() != b"not a safetensors file"


def test_sidecar_and_metadata_prompts_replace_the_caption(tiny_sd, tiny_clip, tiny_blip, tiny_labels, tmp_path):
    settings = load_settings(caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels))
    inputs = {
        "inputs/side.jpg": photo_bytes(160, 120, seed=1),
        "inputs/side.json": json.dumps({"prompt": "a knitted\tgiraffe\x00 with  a scarf\u200b"}).encode(),
        "inputs/meta.jpg": photo_bytes(160, 120, seed=2),
        "inputs/plain.jpg": photo_bytes(160, 120, seed=3),
    }
    store, layout, _ = drain(settings, inputs, metadata={"inputs/meta.jpg": {"prompt": "a tin robot"}})
    side = manifest_of(store, layout, "inputs/side.jpg")
    assert side.variants[0].parameters["prompt"] == f"a knitted giraffe with a scarf, {TRIGGER}"
    assert side.variants[0].parameters["prompt_source"] == "sidecar"
    assert side.caption.replaced_by == "sidecar" and side.caption.text is None and side.caption.seconds == 0
    assert "caption" not in side.timings  # not captioned at all
    meta = manifest_of(store, layout, "inputs/meta.jpg")
    assert meta.variants[0].parameters["prompt"] == f"a tin robot, {TRIGGER}"
    assert meta.variants[0].parameters["prompt_source"] == "metadata" and meta.caption.replaced_by == "metadata"
    plain = manifest_of(store, layout, "inputs/plain.jpg")
    assert plain.caption.text and plain.variants[0].parameters["prompt_source"] == "caption"


def test_a_long_prompt_is_cut_to_77_tokens_keeping_the_trigger_words(tiny_sd, tiny_clip, tiny_blip, tiny_labels,
                                                                     tmp_path, caplog):
    settings = load_settings(caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels))
    long = " ".join(["a very fluffy brown teddy bear"] * 20)
    inputs = {"inputs/long.jpg": photo_bytes(160, 120), "inputs/long.json": json.dumps({"prompt": long}).encode()}
    with caplog.at_level(logging.WARNING, logger="processor.prompt"):
        store, layout, _ = drain(settings, inputs)
    p = manifest_of(store, layout, "inputs/long.jpg").variants[0].parameters
    assert p["prompt_truncated"] and p["prompt"].endswith(f", {TRIGGER}")
    assert p["prompt"].startswith("a very fluffy brown teddy bear a very")
    engine = registry_for(settings).engine("disney")
    tokens = len(engine.pipe.tokenizer(p["prompt"])["input_ids"])
    assert tokens == p["prompt_tokens"] and 70 < tokens <= 77
    cut = [r for r in caplog.records if r.getMessage() == "prompt_truncated"]
    assert cut and cut[0].style == "disney" and cut[0].dropped.endswith("teddy bear")


def test_a_failing_captioner_gives_a_failure_record_not_a_crash(tiny_sd, tiny_clip, tiny_blip, tiny_labels, tmp_path,
                                                                monkeypatch):
    settings = load_settings(caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels))
    original = interrogator.InjectedInterrogator.generate_caption

    def flaky(self, image):
        if image.getpixel((0, 0)) == (255, 0, 255):
            raise RuntimeError("caption model fault")
        return original(self, image)

    monkeypatch.setattr(interrogator.InjectedInterrogator, "generate_caption", flaky)
    import io

    from PIL import Image

    magenta = io.BytesIO()
    Image.new("RGB", (160, 120), (255, 0, 255)).save(magenta, "PNG")
    store, layout, _ = drain(settings, {"inputs/bad.png": magenta.getvalue(), "inputs/good.jpg": photo_bytes(160, 120)})
    record = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/bad.png").failure).body)
    assert record.error == "StageFailed" and "caption (fast) failed" in record.message
    assert "caption model fault" in record.message and not record.permanent
    assert manifest_of(store, layout, "inputs/good.jpg").caption.text


def test_offload_turns_on_clip_interrogators_model_swap_and_leaves_models_on_the_cpu(tiny_clip, tiny_blip,
                                                                                      tiny_labels, tmp_path, tiny_sd):
    """On a CPU-only machine this checks the wiring only; moving off a GPU needs a GPU test."""
    settings = load_settings(caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels, offload=True))
    captioner = build_captioner(settings)
    captioner.setup()
    ci = captioner.interrogator
    assert ci.config.clip_offload and ci.config.caption_offload
    from PIL import Image

    assert captioner(Image.new("RGB", (64, 48), (10, 200, 30))).text
    assert next(ci.clip_model.parameters()).device.type == "cpu"
    assert next(ci.caption_model.parameters()).device.type == "cpu"


def test_missing_models_fail_at_start_and_doctor_reports_them(tiny_sd, tiny_clip, tiny_blip, tiny_labels, tmp_path,
                                                              capsys):
    config = caption_config(tmp_path / "ok", tiny_sd, tiny_clip, tiny_blip, tiny_labels)
    assert main(["doctor", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "caption clip model" in out and f"local-dir:{tiny_clip}" in out and "caption caption model" in out

    missing = caption_config(tmp_path / "missing", tiny_sd, tiny_clip, tiny_blip, tiny_labels,
                             clip_model=f"local-dir:{tmp_path / 'nowhere'}",
                             caption_model="Salesforce/blip-image-captioning-large")
    assert main(["doctor", "--config", str(missing)]) == 6
    out = capsys.readouterr().out
    assert "FAIL" in out and "open_clip_config.json" in out and "processor models pull" in out

    settings = load_settings(missing)
    worker = Worker(LocalStore(settings.store.root), settings, build_registry(settings), worker_id="w",
                    captioner=build_captioner(settings))
    with pytest.raises(ModelUnavailableError, match="processor models pull"):
        worker.setup()  # offline (HF_HUB_OFFLINE=1 here) and the hub caption model is not cached


def test_toon_only_worker_never_loads_the_captioner(tiny_sd, tiny_clip, tiny_blip, tiny_labels, tmp_path):
    config = caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels,
                            clip_model="local-dir:/does/not/exist")
    data = json.loads(config.read_text())
    data["styles"]["toon"] = {"engine": "toon", "variants": 1}
    data["run"]["styles"] = ["toon"]
    config.write_text(json.dumps(data))
    store, layout, captioner = drain(load_settings(config), {"inputs/a.jpg": photo_bytes(160, 120)})
    assert not captioner.ready and manifest_of(store, layout, "inputs/a.jpg").caption is None


def fake_hub_cache(cache: Path, repo: str, files: Path, commit: str) -> None:
    """``files`` laid out as the Hugging Face cache holds a downloaded snapshot of ``repo``."""
    import shutil

    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(files, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


def test_hub_models_load_offline_from_the_cache_at_their_pinned_revision(tiny_sd, tiny_clip, tiny_blip, tiny_labels,
                                                                         tmp_path):
    cache = tmp_path / "hf-cache"
    clip_commit, blip_commit = "a" * 40, "b" * 40
    fake_hub_cache(cache, "toys/tiny-clip", tiny_clip, clip_commit)
    fake_hub_cache(cache, "toys/tiny-blip", tiny_blip, blip_commit)
    config = caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels, clip_model="hf-hub:toys/tiny-clip",
                            clip_revision=clip_commit, caption_model="toys/tiny-blip")
    data = json.loads(config.read_text())
    data["models"] = {"cache_dir": str(cache), "offline": True}
    config.write_text(json.dumps(data))
    settings = load_settings(config)
    store, layout, captioner = drain(settings, {"inputs/a.jpg": photo_bytes(160, 120)})
    caption = manifest_of(store, layout, "inputs/a.jpg").caption
    assert caption.text and caption.clip_model == "hf-hub:toys/tiny-clip"
    assert caption.clip_revision == clip_commit and caption.caption_revision == blip_commit
    assert captioner.clip_identity == f"hf-hub:toys/tiny-clip@{clip_commit}"

    # A revision the cache does not hold is unavailable offline, with the fix in the message.
    other = load_settings(config, caption=settings.caption.model_copy(update={"clip_revision": "c" * 40}))
    with pytest.raises(ModelUnavailableError, match="processor models pull"):
        build_captioner(other).setup()


def test_open_clip_tags_resolve_to_the_safetensors_file_of_their_hub_repo(tmp_path):
    """``ViT-L-14/openai`` is looked up in open_clip's pretrained table and only its safetensors
    weights are fetched (here: found in an offline cache, never loaded: that would be 1.7 GB)."""
    from processor.config import CaptionSettings, ModelSettings
    from processor.models.clip import resolve_open_clip
    from processor.models.loader import ModelLoader

    loader = ModelLoader(ModelSettings(cache_dir=tmp_path / "hf", offline=True))
    with pytest.raises(ModelUnavailableError, match=r"timm/vit_large_patch14_clip_224\.openai"):
        resolve_open_clip(CaptionSettings(clip_model="ViT-L-14/openai"), loader)
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "open_clip_model.safetensors").write_bytes(b"not loaded here")
    fake_hub_cache(tmp_path / "hf", "timm/vit_large_patch14_clip_224.openai", weights, "d" * 40)
    resolved = resolve_open_clip(CaptionSettings(clip_model="ViT-L-14/openai"), loader)
    assert resolved.weights.name == "open_clip_model.safetensors" and resolved.revision == "d" * 40
    assert resolved.open_clip_name == "ViT-L-14" and resolved.tag_cfg["quick_gelu"] is True
    with pytest.raises(Exception, match="no such model/tag"):
        resolve_open_clip(CaptionSettings(clip_model="ViT-L-14/nonsense"), loader)


def test_git_captions_in_float32_and_other_model_types_are_refused(tiny_git, tiny_sd, tmp_path):
    import torch
    from PIL import Image

    from processor.config import CaptionSettings, ModelSettings
    from processor.errors import ConfigError
    from processor.models.loader import ModelLoader
    from processor.pipeline.caption import Captioner

    loader = ModelLoader(ModelSettings(dtype="bfloat16"))
    captioner = Captioner(CaptionSettings(mode="blip", caption_model=str(tiny_git), cache_dir=tmp_path), loader)
    captioner.setup()
    assert captioner.caption_model.model_type == "git" and captioner.clip is None  # blip mode: no CLIP
    assert next(captioner.interrogator.caption_model.parameters()).dtype == torch.float32
    caption = captioner(Image.new("RGB", (64, 48), (200, 120, 30)))
    assert caption.text and caption.mode == "blip" and caption.seconds > 0

    text_encoder = Captioner(CaptionSettings(mode="blip", caption_model=str(tiny_sd / "text_encoder")), loader)
    with pytest.raises(ConfigError, match="captioning takes BLIP, BLIP-2 or GIT"):
        text_encoder.setup()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_frees_the_gpu_between_captions(tiny_sd, tiny_clip, tiny_blip, tiny_labels, tmp_path):
    config = caption_config(tmp_path, tiny_sd, tiny_clip, tiny_blip, tiny_labels, offload=True)
    data = json.loads(config.read_text())
    data["models"] = {"device": "cuda"}
    config.write_text(json.dumps(data))
    captioner = build_captioner(load_settings(config))
    captioner.setup()
    from PIL import Image

    for colour in ((10, 200, 30), (200, 10, 30)):  # the second call moves both models back first
        assert captioner(Image.new("RGB", (64, 48), colour)).text
        assert next(captioner.interrogator.clip_model.parameters()).device.type == "cpu"
        assert next(captioner.interrogator.caption_model.parameters()).device.type == "cpu"


def test_the_modes_that_load_clip_are_the_modes_that_rank_label_tables():
    """``models pull`` and ``doctor`` decide from ``models.caption.clip_used`` whether the CLIP model is
    needed; the stage ranks with the tables of ``TABLES_BY_MODE``: the two must name the same modes."""
    from processor.models.caption import clip_used

    assert {mode for mode, tables in TABLES_BY_MODE.items() if tables} == set(CLIP_MODES)
    assert [mode for mode in TABLES_BY_MODE if clip_used(mode)] == list(CLIP_MODES)
