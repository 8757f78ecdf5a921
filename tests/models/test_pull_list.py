"""``processor models pull`` and ``--dry-run`` share one list of add-on models
(``processor.models.pull_list``): the dry run names every model a pull fetches (ControlNets and
their preprocessors, IP-Adapters, hub LoRAs, the CLIP scorer, caption models), and whether the
cache holds it; a pull fetches exactly those."""

from __future__ import annotations

import json
from pathlib import Path

from processor.cli.main import main
from processor.errors import EXIT_MODEL
from processor.models.loader import ModelLoader
from processor.models.pull_list import Role, addon_models
from tests.models.test_convert_pickle import hub_cache
from tests.models.test_diffusion import make_settings

COMMIT = "d" * 40


def _addon_styles(base: Path) -> dict:
    """One style naming every kind of add-on, by hub id (the base model is a local folder)."""
    (base / "unet").mkdir(parents=True, exist_ok=True)
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["diffusers", "UNet2DConditionModel"]}))
    (base / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"0")
    style = {"engine": "img2img", "model": str(base), "rounds": [{"strength": 0.5, "guidance": 1.5}],
             "steps": 4, "variants": 1, "style_image": "bucket:styles/look.png",
             "lcm": {"lora": "latent-consistency/lcm-lora-sdv1-5"},
             "ip_adapter": {"model": "h94/IP-Adapter", "revision": "feedbee"},
             "control": [{"type": "depth", "model": "lllyasviel/control_v11f1p_sd15_depth",
                          "preprocessor": {"model": "depth-anything/Depth-Anything-V2-Small-hf"}},
                         {"type": "lineart", "model": "lllyasviel/control_v11p_sd15_lineart",
                          "preprocessor": {"model": "lllyasviel/Annotators", "weight_name": "sk_model.safetensors"}}]}
    toon = {"engine": "img2img", "model": str(base), "rounds": [{"strength": 0.5, "guidance": 7}],
            "lora": {"path": "toys/toon-lora", "revision": "v1"},
            "control": {"model": "lllyasviel/control_v11f1p_sd15_depth"}}  # the same ControlNet: listed once
    return {"look": style, "toon": toon}


def _config(tmp_path: Path, models: dict) -> Path:
    make_settings(tmp_path, _addon_styles(tmp_path / "base"), models=models)
    config = tmp_path / "config.yaml"
    cfg = json.loads(config.read_text())
    cfg["pipeline"]["clip_score"] = {"model": "openai/clip-vit-large-patch14"}
    # The hub add-ons only: the default segmenter is pinned and fetched without the Hub
    # (tests/unit/test_pinned.py, tests/models/test_real_mask.py).
    cfg["pipeline"]["mask"] = {"onnx": None}
    config.write_text(json.dumps(cfg))
    return config


def test_the_dry_run_lists_every_add_on_and_what_the_cache_holds(tmp_path, capsys):
    cache = tmp_path / "hf"
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text("{}")
    (files / "model.safetensors").write_bytes(b"0")
    hub_cache(cache, "openai/clip-vit-large-patch14", files, COMMIT)
    (files / "diffusion_pytorch_model.safetensors").write_bytes(b"0")
    hub_cache(cache, "lllyasviel/control_v11f1p_sd15_depth", files, COMMIT)
    config = _config(tmp_path / "run", {"cache_dir": str(cache), "offline": True})
    cfg = json.loads(config.read_text())
    cfg["caption"] = {"mode": "blip"}  # the caption model alone (no CLIP)
    config.write_text(json.dumps(cfg))

    assert main(["models", "pull", "--dry-run", "--config", str(config)]) == EXIT_MODEL  # offline, some missing
    out = capsys.readouterr().out
    assert f"{tmp_path / 'run' / 'base'}: a local folder, nothing to fetch" in out
    lines = [line.strip() for line in out.split("add-on models (")[1].splitlines()[1:]]
    assert [line.split(":")[0] for line in lines] == [
        "caption caption model Salesforce/blip-image-captioning-large",
        "clip score openai/clip-vit-large-patch14",
        "lcm lora latent-consistency/lcm-lora-sdv1-5 [look]",
        "ip-adapter h94/IP-Adapter@feedbee [look]",
        "lora toys/toon-lora@v1 [toon]",
        "controlnet lllyasviel/control_v11f1p_sd15_depth [look, toon]",
        "controlnet lllyasviel/control_v11p_sd15_lineart [look]",
        "depth preprocessor depth-anything/Depth-Anything-V2-Small-hf [look]",
        "lineart preprocessor lllyasviel/Annotators [look]",
    ]
    by_model = {line.split(" [")[0].split(":")[0].rsplit(" ", 1)[-1]: line for line in lines}
    assert f"cached: {cache}" in by_model["openai/clip-vit-large-patch14"] and f"(commit {COMMIT})" in out
    assert "cached:" in by_model["lllyasviel/control_v11f1p_sd15_depth"]
    missing = by_model["lllyasviel/Annotators"]
    assert "NOT in the cache" in missing and "processor models pull" in missing


def test_a_pull_fetches_exactly_what_the_dry_run_lists(tmp_path, monkeypatch, capsys):
    fetched: list[tuple[str, str | None]] = []

    def snapshot(repo, revision=None, local_files_only=False, **kwargs):
        if local_files_only:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("not cached")
        fetched.append((repo, revision))
        folder = tmp_path / "snapshots" / repo.replace("/", "--") / COMMIT
        for rel in ("config.json", "model.safetensors", "diffusion_pytorch_model.safetensors",
                    "pytorch_lora_weights.safetensors", "models/ip-adapter_sd15.safetensors",
                    "models/image_encoder/config.json", "models/image_encoder/model.safetensors"):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text("{}")
        return str(folder)

    def download(repo, filename, revision=None, local_files_only=False, **kwargs):
        if local_files_only:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("not cached")
        fetched.append((repo, revision))
        path = tmp_path / "files" / repo.replace("/", "--") / "snapshots" / COMMIT / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"0")
        return str(path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    config = _config(tmp_path / "run", {"cache_dir": str(tmp_path / "cache")})
    from processor.config import load_settings

    settings = load_settings(config)
    listed = [(a.model, a.revision) for a in addon_models(settings, ModelLoader(settings.models))]
    assert main(["models", "pull", "--dry-run", "--config", str(config)]) == 0  # online: missing = to fetch
    assert capsys.readouterr().out.count("would fetch (not in the cache yet)") == len(listed) == 8
    assert fetched == []  # a dry run downloads nothing
    assert main(["models", "pull", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert sorted(set(fetched)) == sorted(set(listed))
    assert f"lineart preprocessor lllyasviel/Annotators: {tmp_path / 'files'}" in out
    assert "ip-adapter h94/IP-Adapter@feedbee: " in out and f"(commit {COMMIT})" in out


def test_the_list_has_a_role_per_kind_and_skips_local_models(tmp_path):
    base = tmp_path / "base"
    styles = _addon_styles(base)
    styles["look"]["ip_adapter"] = {"model": str(base)}  # local adapter and encoder: nothing to fetch
    other = {"type": "lineart", "model": "lllyasviel/control_v11p_sd15_lineart",
             "preprocessor": {"model": "lllyasviel/Annotators", "weight_name": "other.safetensors"}}
    styles["other"] = styles["toon"] | {"lora": {"path": "toys/toon-lora", "revision": "v1"}, "control": other}
    settings = make_settings(tmp_path, styles)
    found = addon_models(settings, ModelLoader(settings.models))
    roles = [a.role for a in found]
    assert Role.IP_ADAPTER not in roles and Role.CLIP_SCORE not in roles
    # The same LoRA and ControlNet in two styles: one download each; another file of a repo: another.
    assert [a.styles for a in found if a.role is Role.LORA] == [("toon", "other")]
    assert roles.count(Role.CONTROLNET) == 2 and roles.count(Role.PREPROCESSOR) == 3


def test_doctor_reports_each_add_on_cached_or_not(tmp_path, capsys):
    from processor.errors import EXIT_DOCTOR

    cache = tmp_path / "hf"
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text("{}")
    (files / "model.safetensors").write_bytes(b"0")
    hub_cache(cache, "openai/clip-vit-large-patch14", files, COMMIT)
    (files / "diffusion_pytorch_model.safetensors").write_bytes(b"0")
    hub_cache(cache, "lllyasviel/control_v11f1p_sd15_depth", files, COMMIT)
    config = _config(tmp_path / "run", {"cache_dir": str(cache), "offline": True})
    cfg = json.loads(config.read_text())
    cfg["run"]["styles"] = ["toon"]  # "look" is configured, not run: its missing add-ons only warn
    config.write_text(json.dumps(cfg))

    assert main(["doctor", "--config", str(config)]) == EXIT_DOCTOR
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        check, _, rest = line.partition("  ")
        status, _, detail = rest.strip().partition("  ")
        rows.setdefault(check.strip(), []).append((status, detail.strip()))
    [(status, detail)] = rows["clip score"]
    assert status == "ok" and f"cached, {cache}" in detail and f"(commit {COMMIT})" in detail
    depth, lineart = rows["controlnet"]
    assert depth[0] == "ok" and depth[1].startswith("lllyasviel/control_v11f1p_sd15_depth (look, toon): cached")
    assert lineart[0] == "warn" and "no style in run.styles uses it" in lineart[1]
    [(status, detail)] = rows["lora"]  # toon runs, offline, its LoRA is missing: the worker would stop
    assert status == "FAIL" and "toys/toon-lora" in detail and "processor models pull" in detail
    assert [s for s, _ in rows["ip-adapter"]] == ["warn"] and [s for s, _ in rows["lineart preprocessor"]] == ["warn"]


def test_the_segmenter_is_listed_and_fetched_like_the_others(tmp_path):
    from processor.config import load_settings

    cache = tmp_path / "hf"
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text("{}")
    (files / "model.safetensors").write_bytes(b"0")
    hub_cache(cache, "toys/segmenter", files, COMMIT)
    settings = load_settings(None, pipeline={"mask": {"segmenter": "toys/segmenter"}},
                             models={"cache_dir": str(cache), "offline": True})
    [segmenter] = [a for a in addon_models(settings, ModelLoader(settings.models)) if a.role is Role.SEGMENTER]
    assert (segmenter.role, segmenter.shown, segmenter.styles) == (Role.SEGMENTER, "toys/segmenter", ())
    got = segmenter.fetch(False)
    assert got.commit == COMMIT and got.path.endswith(COMMIT)
