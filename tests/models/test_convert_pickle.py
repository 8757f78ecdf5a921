"""Hub repos without safetensors: the clear refusal, the opt-in weights_only conversion, the dry run.

A tiny pipeline is saved with pickle ``*.bin`` weights (as 2022 repos such as
``nitrosocke/mo-di-diffusion`` ship them on ``main``) and laid out by hand as the Hugging Face cache
holds a downloaded snapshot (``models--org--name/{blobs,refs/main,snapshots/<commit>}``), so
``snapshot_download(local_files_only=True)`` resolves it offline. The Hub itself cannot be reached
here: ``hub_plan`` and the Hub's conversion-PR lookup are the only paths not run by these tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from processor.cli.main import main
from processor.config import ModelSettings
from processor.errors import EXIT_MODEL, ModelUnavailableError
from processor.models.loader import IGNORE_PATTERNS, ModelLoader, component_patterns
from processor.models.safeweights import (
    CONVERTED_DIR,
    RECORD_NAME,
    converted_folder,
    format_plans,
    plan_from_listing,
    weight_components,
)
from processor.queue.keys import KeyLayout
from processor.store.local import LocalStore
from testkit.images import photo_bytes
from tests.models.test_diffusion import make_settings, manifest_of

REPO = "toys/tiny-bin"
COMMIT = "c0ffee" + "0" * 34
#: The pickle files a 2022 diffusers repo holds instead of safetensors.
PICKLES = ("unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin")
STYLE = {"engine": "img2img", "trigger": "cartoon", "rounds": [{"strength": 0.7, "guidance": 7.5},
                                                               {"strength": 0.5, "guidance": 6.0}],
         "steps": 4, "scheduler": "dpmpp-2m-karras", "variants": 2, "seed": 11}


class _Trap:
    """Unpickling this touches ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


class _SystemTrap:
    """Unpickling this runs a shell command that touches ``path`` (the classic ``os.system`` payload)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="session")
def bin_sd(tiny_sd: Path, tmp_path_factory) -> Path:
    """``tiny_sd`` with pickle weights: the same tensors, saved as ``*.bin``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("models") / "tiny-bin"
    shutil.copytree(tiny_sd, folder)
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        shutil.rmtree(folder / name)
        cls.from_pretrained(tiny_sd / name, use_safetensors=True).save_pretrained(folder / name,
                                                                                   safe_serialization=False)
    # transformers 5 writes safetensors whatever safe_serialization says; torch.save is what its
    # older releases wrote as pytorch_model.bin.
    weights = folder / "text_encoder" / "model.safetensors"
    torch.save(load_file(weights), folder / "text_encoder" / "pytorch_model.bin")
    weights.unlink()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.bin")) == sorted(PICKLES)
    assert not list(folder.rglob("*.safetensors"))
    return folder


def hub_cache(cache: Path, repo: str, files: Path, commit: str = COMMIT) -> Path:
    """``files`` laid out as huggingface_hub caches a snapshot: content in ``blobs/<sha256>``,
    relative links in ``snapshots/<commit>/``, the branch in ``refs/main``. Returns the snapshot."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    for path in sorted(files.rglob("*")):
        if path.is_file():
            blob = root / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, blob)
            link = snapshot / path.relative_to(files)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("../" * len(link.relative_to(root).parts[:-1])) / "blobs" / blob.name)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def offline_loader(cache: Path) -> ModelLoader:
    return ModelLoader(ModelSettings(cache_dir=cache, offline=True))


def test_weight_components_are_the_models_not_tokenizers_schedulers_or_the_safety_checker(bin_sd):
    index = json.loads((bin_sd / "model_index.json").read_text())
    assert weight_components(index) == ["text_encoder", "unet", "vae"]
    sdxl_like = {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                 "tokenizer_2": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                 "feature_extractor": ["transformers", "CLIPImageProcessor"], "image_encoder": [None, None],
                 "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"], "force_zeros": True}
    assert weight_components(sdxl_like) == ["unet", "text_encoder_2"]


def test_bin_only_snapshot_is_refused_naming_components_and_both_fixes(bin_sd, tmp_path):
    cache = tmp_path / "hf"
    hub_cache(cache, REPO, bin_sd)
    with pytest.raises(ModelUnavailableError) as caught:
        offline_loader(cache).resolve(REPO)
    message = str(caught.value)
    assert f"{REPO}@main (commit {COMMIT})" in message
    assert "component(s) text_encoder, unet, vae" in message and "tokenizer" not in message
    assert "diffusion_pytorch_model.bin" in message and "pytorch_model.bin" in message
    assert "revision:" in message and "refs/pr/" in message and "SFconvertbot" in message
    assert "processor models pull --convert-pickle" in message and "weights_only=True" in message

    # The worker fails at start with it (exit 5), before any item is touched.
    settings = make_settings(tmp_path / "run", {"conv": STYLE | {"model": REPO}},
                             models={"cache_dir": str(cache), "offline": True})
    LocalStore(settings.store.root).put("inputs/a.jpg", photo_bytes(80, 64))
    run = ["run", "--once", "--metrics-port", "0", "--config", str(tmp_path / "run" / "config.yaml")]
    assert main(run) == EXIT_MODEL


def test_models_pull_fails_when_the_repo_has_no_safetensors(bin_sd, tmp_path, monkeypatch, capsys):
    """A networked pull of a bin-only repo fetches its configs, then must fail (exit 5), not pass.
    The Hub is stood in for by the cache (only its downloads; the pull code is the real one)."""
    import huggingface_hub

    cache = tmp_path / "hf"
    hub_cache(cache, REPO, bin_sd)
    fetched = []
    real_snapshot, real_file = huggingface_hub.snapshot_download, huggingface_hub.hf_hub_download

    def from_cache(real):
        def download(*args, **kwargs):
            fetched.append(kwargs.get("allow_patterns"))
            return real(*args, **kwargs | {"local_files_only": True})
        return download

    monkeypatch.setattr("huggingface_hub.snapshot_download", from_cache(real_snapshot))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", from_cache(real_file))
    monkeypatch.setattr("processor.models.safeweights.conversion_pull_requests",
                        lambda model: [f"revision: refs/pr/7  (open: Adding `safetensors` variant of {model})"])
    make_settings(tmp_path, {"conv": STYLE | {"model": REPO}}, models={"cache_dir": str(cache)})
    assert main(["models", "pull", "--config", str(tmp_path / "config.yaml")]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert "text_encoder, unet, vae" in err and "revision: refs/pr/7" in err and "--convert-pickle" in err
    assert not any(".bin" in p for patterns in fetched if patterns for p in patterns)  # no pickle was fetched

    # With --convert-pickle, the pickle weights of exactly the components that lack safetensors are
    # fetched (at the resolved commit), converted, and the pull succeeds.
    fetched.clear()
    assert main(["models", "pull", "--convert-pickle", "--config", str(tmp_path / "config.yaml")]) == 0
    pickle_patterns = sorted(p for patterns in fetched if patterns for p in patterns if ".bin" in p)
    assert pickle_patterns == sorted(f"{c}/{n}*.bin" for c in ("text_encoder", "unet", "vae")
                                     for n in ("diffusion_pytorch_model", "pytorch_model"))
    assert (converted_folder(str(cache), REPO, COMMIT) / RECORD_NAME).is_file()


def test_convert_pickle_then_the_worker_loads_the_safetensors_with_identical_bytes(bin_sd, tiny_sd, tmp_path,
                                                                                   monkeypatch, capsys):
    """The converted pipeline gives the same PNG bytes as the same repo and commit published with
    safetensors (a second cache), through ``processor run --once``."""
    cache, reference_cache = tmp_path / "hf", tmp_path / "hf-safetensors"
    snapshot = hub_cache(cache, REPO, bin_sd)
    hub_cache(reference_cache, REPO, tiny_sd)
    settings = make_settings(tmp_path / "conv", {"cartoon": STYLE | {"model": REPO}},
                             models={"cache_dir": str(cache), "offline": True})
    reference = make_settings(tmp_path / "ref", {"cartoon": STYLE | {"model": REPO}},
                              models={"cache_dir": str(reference_cache), "offline": True})
    config = str(tmp_path / "conv" / "config.yaml")

    # Offline, the conversion reads the .bin files the cache already holds.
    assert main(["models", "pull", "--convert-pickle", "--config", config]) == 0
    target = converted_folder(str(cache), REPO, COMMIT)
    assert target == cache / CONVERTED_DIR / "toys--tiny-bin" / COMMIT
    assert str(target) in capsys.readouterr().out
    record = json.loads((target / RECORD_NAME).read_text())
    assert record["commit"] == COMMIT and record["model"] == REPO
    sources = {e["source"]: e for entries in record["components"].values() for e in entries}
    assert sorted(sources) == sorted(PICKLES)
    for name, entry in sources.items():
        assert entry["source_sha256"] == hashlib.sha256((snapshot / name).read_bytes()).hexdigest()
        assert entry["output_sha256"] == hashlib.sha256((target / entry["output"]).read_bytes()).hexdigest()
    assert {e["output"] for e in sources.values()} == {
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors"}
    assert not list(target.rglob("*.bin")) and not list(target.parent.glob("*.tmp-*"))
    assert (target / "tokenizer" / "tokenizer.json").is_symlink()  # configs are links into the cache's blobs

    # The worker never unpickles: loading through the production path works with torch.load gone.
    def no_unpickling(*args, **kwargs):
        raise AssertionError("the worker called torch.load")

    monkeypatch.setattr(torch, "load", no_unpickling)
    outputs = []
    for run in (settings, reference):
        store = LocalStore(run.store.root)
        store.put("inputs/a.jpg", photo_bytes(96, 72, seed=5))
        config_file = str(Path(run.store.root).parent / "config.yaml")
        assert main(["run", "--once", "--metrics-port", "0", "--config", config_file]) == 0
        manifest = manifest_of(store, KeyLayout(run.prefixes), "inputs/a.jpg")
        assert len(manifest.variants) == 2 and {v.parameters["revision"] for v in manifest.variants} == {COMMIT}
        # The manifest says where the weights came from: converted here, or the repo's safetensors.
        expected = "converted-from-pickle" if run is settings else "safetensors"
        assert {v.parameters["weights"] for v in manifest.variants} == {expected}
        # Pixels, not file bytes: the PNGs embed the parameters, whose `weights` differ on purpose.
        outputs.append([Image.open(io.BytesIO(store.get(v.key).body)).tobytes() for v in manifest.variants])
    assert outputs[0] == outputs[1]

    # A second conversion finds the folder complete and leaves it alone.
    before = (target / RECORD_NAME).read_text()
    assert main(["models", "pull", "--convert-pickle", "--config", config]) == 0
    assert (target / RECORD_NAME).read_text() == before


@pytest.mark.parametrize("form,expected", [
    ("pickle", "Unsupported global"),   # a plain pickle stream (torch.load's legacy format): the global is refused
    ("pickle-4", "UnpicklingError"),    # the same at pickle's default protocol (rejected at its first opcode)
    ("torch.save", "Unsupported global"),  # the trap inside a torch.save zip archive
    # os.system's module is blocked outright; the message must still say which global it was.
    ("os.system", f"GLOBAL {os.system.__module__}.system"),
    ("not-a-state-dict", "flat mapping of parameter names to tensors"),  # allowed types, not {name: tensor}
])
def test_booby_trapped_pickle_is_refused_by_the_conversion(bin_sd, tmp_path, form, expected):
    marker = tmp_path / "UNPICKLED"
    files = tmp_path / "trapped"
    shutil.copytree(bin_sd, files)
    trap = files / "unet" / "diffusion_pytorch_model.bin"
    if form == "pickle":
        trap.write_bytes(pickle.dumps(_Trap(marker), protocol=2))
    elif form == "pickle-4":
        trap.write_bytes(pickle.dumps(_Trap(marker), protocol=4))
    elif form == "torch.save":
        torch.save({"weight": _Trap(marker)}, trap)
    elif form == "os.system":
        torch.save({"weight": _SystemTrap(marker)}, trap)
    else:
        torch.save({"weight": [1, 2, 3]}, trap)
    cache = tmp_path / "hf"
    hub_cache(cache, REPO, files)
    with pytest.raises(ModelUnavailableError) as caught:
        offline_loader(cache).pull_converting(REPO)
    message = str(caught.value)
    assert "refused to convert" in message and "unet/diffusion_pytorch_model.bin" in message and expected in message
    if form != "not-a-state-dict":  # PyTorch's restricted unpickler itself said no
        assert isinstance(caught.value.__cause__, pickle.UnpicklingError) and "weights_only=True" in message
        assert "unsupported" in message.lower() and "do not load it with weights_only=False" in message
    assert not marker.exists(), "the trap ran: a pickle was loaded without the restricted unpickler"
    assert not (cache / CONVERTED_DIR).exists() or not any((cache / CONVERTED_DIR).rglob(RECORD_NAME))
    assert not list((cache / CONVERTED_DIR).rglob("*.tmp-*"))


def test_dry_run_offline_says_what_the_cache_holds(bin_sd, tiny_sd, tmp_path, capsys):
    cache = tmp_path / "hf"
    hub_cache(cache, REPO, bin_sd)
    hub_cache(cache, "toys/tiny-sd", tiny_sd, "a" * 40)
    styles = {"conv": STYLE | {"model": REPO}, "good": STYLE | {"model": "toys/tiny-sd"},
              "gone": STYLE | {"model": "toys/not-cached"}}
    make_settings(tmp_path, styles, models={"cache_dir": str(cache), "offline": True})
    config = str(tmp_path / "config.yaml")

    assert main(["models", "pull", "--dry-run", "--config", config]) == EXIT_MODEL
    out = capsys.readouterr().out
    assert f"{REPO} commit {COMMIT} (offline: looked up in the local cache)" in out
    assert "no safetensors for: text_encoder, unet, vae" in out and "a pull would FAIL" in out
    unet = (tiny_sd / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert "unet/diffusion_pytorch_model.safetensors" in out and f"{unet / 2**20:.2f} MiB" in out
    allowed = [p for p in tiny_sd.rglob("*") if p.is_file()]
    assert f"cached: {len(allowed)} file(s)" in out and f"({sum(p.stat().st_size for p in allowed):,} bytes)" in out
    assert "toys/not-cached (offline: looked up in the local cache)\n  not in the cache" in out
    assert not (cache / CONVERTED_DIR).exists()  # a dry run writes nothing

    make_settings(tmp_path, {"conv": styles["conv"]}, models={"cache_dir": str(cache), "offline": True})
    assert main(["models", "pull", "--dry-run", "--convert-pickle", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "--convert-pickle would convert (cached): 3 file(s)" in out and "(pickle, weights_only conversion)" in out
    assert main(["models", "pull", "--convert-pickle", "--config", config]) == 0
    capsys.readouterr()
    assert main(["models", "pull", "--dry-run", "--config", config]) == 0
    assert "converted safetensors already in the cache" in capsys.readouterr().out


def test_plan_from_a_hub_listing_counts_only_what_a_pull_fetches():
    """The hub path's listing logic (``model_info`` returns every file and its size; the call itself
    needs the network and is not run here)."""
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
             "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}
    listing = {
        "model_index.json": 600, "README.md": 4_000, "moDi-v1-pruned.ckpt": 2_132_856_622,
        "unet/config.json": 1_000, "unet/diffusion_pytorch_model.bin": 3_438_354_725,
        "unet/diffusion_pytorch_model.fp16.safetensors": 1_719_125_304,
        "vae/config.json": 600, "vae/diffusion_pytorch_model.safetensors": 334_643_268,
        "vae/diffusion_pytorch_model.bin": 334_707_217,
        "text_encoder/config.json": 600, "text_encoder/pytorch_model.bin": 492_305_335,
        "tokenizer/vocab.json": 1_059_962, "tokenizer/merges.txt": 524_619, "scheduler/scheduler_config.json": 300,
        "safety_checker/pytorch_model.bin": 1_216_064_769,
    }
    plan = plan_from_listing("org/old", None, "hub", "f" * 40, index, listing, component_patterns(index),
                             IGNORE_PATTERNS)
    assert [f for f, _ in plan.files] == sorted([
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "tokenizer/merges.txt",
        "tokenizer/vocab.json", "unet/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"])
    assert plan.missing == ["unet", "text_encoder"]
    assert plan.pickles == [("unet/diffusion_pytorch_model.bin", 3_438_354_725),
                            ("text_encoder/pytorch_model.bin", 492_305_335)]
    assert not plan.loads(convert=False) and plan.loads(convert=True)
    text = format_plans([plan], convert=True)
    assert "org/old commit ffffffffff" in text and "(from the Hub)" in text
    assert "would fetch: 8 file(s), 320.65 MiB (336,230,949 bytes)" in text
    assert "unet/diffusion_pytorch_model.bin" in text and "3.20 GiB" in text
    assert "total (would fetch): 3.97 GiB (4,266,891,009 bytes)" in text
    assert "a pull would FAIL" in format_plans([plan], convert=False)
