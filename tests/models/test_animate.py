"""``engine: animate`` end to end: tiny random-weight image-to-video models of each family (Stable
Video Diffusion, Wan 2.1 image-to-video, LTX-Video; ``testkit.models.video``) built offline, picked
by their ``model_index.json``, loaded through the production loader and run through ``processor run
--once`` and the worker, alone and chained after a still style. The MP4s are decoded back with PyAV."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from processor.cli.compose import make_engine
from processor.cli.main import main
from processor.config import AnimateStyle, ModelSettings, VideoSettings, load_settings
from processor.errors import ConfigError
from processor.manifest import FailureRecord, Manifest
from processor.models.families import FamilyId, identify
from processor.models.loader import ModelLoader
from processor.pipeline.video_encode import probe_mp4
from testkit.images import photo_bytes, photo_image
from tests.models.test_diffusion import drain, manifest_of

PHOTO = photo_bytes(160, 120, seed=6)
TRIGGER = "the toy dances, pixar"

av = pytest.importorskip("av", reason="PyAV (the sd extra) writes and reads the clips")


def svd_style(model: Path, **extra) -> dict:
    return {"engine": "animate", "model": str(model), "license": "non-commercial", "steps": 2, "size": 64,
            "seed": 3} | extra


def text_style(model: Path, **extra) -> dict:
    return {"engine": "animate", "model": str(model), "license": "apache-2.0", "steps": 2, "size": 64, "seed": 5,
            "trigger": TRIGGER} | extra


def run_once(tmp_path: Path, styles: dict, monkeypatch, *, run: dict | None = None,
             inputs: dict[str, bytes] | None = None) -> Path:
    """``processor run --once`` over a local bucket holding ``inputs``; the bucket's root."""
    root = tmp_path / "bucket"
    for key, body in (inputs or {"inputs/toy.jpg": PHOTO}).items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(body)
    config = {"store": {"kind": "local", "root": str(root)}, "pipeline": {"contact_sheet_height": 32},
              "run": {"styles": list(styles), "poll_interval_s": 0.05} | (run or {}), "styles": styles}
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--once", "--config", str(tmp_path / "config.yaml")]) == 0
    return root


def read_manifest(root: Path, name: str = "toy") -> Manifest:
    return Manifest.model_validate_json((root / f"outputs/{name}/manifest.json").read_text())


def test_an_svd_style_writes_an_mp4_that_decodes_to_its_frames_and_fps_with_a_preview_and_a_record(
        tiny_svd, tmp_path, monkeypatch):
    styles = {"clip": svd_style(tiny_svd, variants=2, fps=8)}
    root = run_once(tmp_path, styles, monkeypatch, run={"allow_noncommercial": True})
    manifest = read_manifest(root)
    assert [v.key for v in manifest.variants] == ["outputs/toy/clip-00.mp4", "outputs/toy/clip-01.mp4"]
    for i, v in enumerate(manifest.variants):
        body = (root / v.key).read_bytes()
        assert hashlib.sha256(body).hexdigest() == v.sha256
        clip = probe_mp4(body)
        # The tiny UNet is built for 4 frames: the style's default clip length.
        assert (clip.codec, clip.pixel_format, clip.frames, clip.fps) == ("h264", "yuv420p", 4, 8.0)
        assert (clip.width, clip.height) == (v.width, v.height) == (64, 48)
        assert body.index(b"moov") < body.index(b"mdat")  # +faststart: the index first
        preview = Image.open(root / v.video.preview)
        preview.load()
        assert preview.format == "WEBP" and preview.n_frames == 4 and preview.info["duration"] == 125  # ms: 8 fps
        assert v.video.frames == 4 and v.video.fps == 8 and v.video.duration_s == 0.5
        assert v.video.source.kind == "photo" and v.video.preview_sha256 == hashlib.sha256(
            (root / v.video.preview).read_bytes()).hexdigest()
        p = v.parameters
        assert p["engine"] == "animate" and p["pipeline"] == "StableVideoDiffusionPipeline" and p["family"] == "svd"
        assert p["scheduler"] == "EulerDiscreteScheduler" and p["size"] == "64x48" and p["steps"] == 2
        assert (p["seed"], p["frames"], p["fps"], p["duration_s"], p["fps_conditioned"]) == (3 + i, 4, 8, 0.5, True)
        # The card's motion defaults, as they ran; CFG (max 3.0) batched: one call, two samples a step.
        assert (p["motion_bucket_id"], p["noise_aug_strength"], p["min_guidance"], p["max_guidance"],
                p["decode_chunk_size"]) == (127, 0.02, 1.0, 3.0, 8)
        assert (p["denoiser_calls"], p["denoiser_evaluations"]) == (2, 4) and "prompt" not in p
        assert p["source"] == {"kind": "photo"}
        assert [(u.role, u.license) for u in v.licenses] == [("model", "non-commercial")]
    assert len({v.sha256 for v in manifest.variants}) == 2  # seeds 3 and 4
    # The contact sheet: the photo, then three frames of each clip.
    assert Image.open(root / "outputs/toy/contact-sheet.jpg").size[0] > 6 * 32
    assert main(["results", "toy.jpg", "--out", str(tmp_path / "got"), "--config", str(tmp_path / "config.yaml")]) == 0
    assert sorted(p.name for p in (tmp_path / "got/toy").iterdir()) == [
        "clip-00.mp4", "clip-00.webp", "clip-01.mp4", "clip-01.webp", "contact-sheet.jpg", "manifest.json"]


def test_a_wan_style_reads_its_prompt_and_guides_with_a_second_call_per_step(tiny_wan, tmp_path, monkeypatch):
    root = run_once(tmp_path, {"wan": text_style(tiny_wan, frames=5, negative="blurry")}, monkeypatch)
    (v,) = read_manifest(root).variants
    clip = probe_mp4((root / v.key).read_bytes())
    assert (clip.frames, clip.fps) == (5, 16.0)  # Wan plays at its training rate unless told otherwise
    p = v.parameters
    assert p["family"] == "wan-i2v" and p["pipeline"] == "WanImageToVideoPipeline"
    assert p["prompt"] == TRIGGER and p["negative"] == "blurry" and p["prompt_source"] == "none"
    assert p["guidance"] == 5.0 and p["fps_conditioned"] is False
    assert (p["denoiser_calls"], p["denoiser_evaluations"]) == (4, 4)  # CFG: two transformer calls a step
    assert "motion_bucket_id" not in p and Image.open(root / v.video.preview).n_frames == 5


def test_still_style_then_animate_runs_in_one_pass_and_records_which_variant_it_animated(
        tiny_sd, tiny_wan, tmp_path, monkeypatch):
    still = {"engine": "img2img", "model": str(tiny_sd), "trigger": "pixar", "steps": 2, "size": 64, "variants": 2,
             "rounds": [{"strength": 0.5}], "seed": 11}
    # The worker names only the animate style: its still style runs first, for the same input.
    styles = {"dance": text_style(tiny_wan, frames=5, guidance=1.0, image_from="disney",
                                  image_from_variants="all"), "disney": still}
    root = run_once(tmp_path, styles, monkeypatch, run={"styles": ["dance"]})
    manifest = read_manifest(root)
    assert [v.key for v in manifest.variants] == ["outputs/toy/disney-00.png", "outputs/toy/disney-01.png",
                                                  "outputs/toy/dance-00.mp4", "outputs/toy/dance-01.mp4"]
    stills, clips = manifest.variants[:2], manifest.variants[2:]
    for k, (still_variant, clip) in enumerate(zip(stills, clips, strict=True)):
        source = clip.video.source
        assert (source.kind, source.style, source.index, source.seed, source.key) == (
            "variant", "disney", k, 11 + k, still_variant.key)
        assert clip.parameters["source"] == {"kind": "variant", "style": "disney", "index": k, "seed": 11 + k}
        assert clip.seed == 5 + k and clip.parameters["denoiser_calls"] == 2  # guidance 1: no second call
        # The clip starts from the still variant: its first frame is far closer to it than to the photo.
        first = _first_frame((root / clip.key).read_bytes())
        assert _distance(first, Image.open(root / still_variant.key)) < _distance(
            first, Image.open(root / "inputs/toy.jpg"))


def test_svd_animates_the_first_variant_of_a_still_style_in_the_same_pass(tiny_sd, tiny_svd, tmp_path, monkeypatch):
    still = {"engine": "img2img", "model": str(tiny_sd), "trigger": "pixar", "steps": 2, "size": 64, "variants": 3,
             "rounds": [{"strength": 0.5}], "seed": 20}
    # Listed first, the animate style still runs after the still style it starts from.
    styles = {"alive": svd_style(tiny_svd, image_from="disney"), "disney": still}
    root = run_once(tmp_path, styles, monkeypatch, run={"styles": ["alive", "disney"], "allow_noncommercial": True})
    keys = [v.key for v in read_manifest(root).variants]
    assert keys == ["outputs/toy/disney-00.png", "outputs/toy/disney-01.png", "outputs/toy/disney-02.png",
                    "outputs/toy/alive-00.mp4"]
    clip = read_manifest(root).variants[-1]
    assert (clip.video.source.style, clip.video.source.index, clip.video.source.seed) == ("disney", 0, 20)
    assert probe_mp4((root / clip.key).read_bytes()).frames == 4


def test_wan_2_2_ti2v_runs_from_its_text_to_video_folder(tiny_wan_ti2v):
    style = AnimateStyle.model_validate(text_style(tiny_wan_ti2v, frames=5, size=64))
    engine = make_engine("t", style, ModelLoader(ModelSettings()))
    engine.setup()
    (clip,) = engine(photo_image(80, 60))
    p = clip.parameters
    assert p["family"] == "wan-ti2v" and p["pipeline"] == "WanImageToVideoPipeline" and p["fps"] == 24
    assert len(clip.video.frames) == 5 and p["size"] == "64x64"  # sides of 32: its 16x VAE, 2x2 patches
    assert engine.pipe.config.expand_timesteps  # the folder's own setting carried over


def test_a_style_sets_its_own_vae_tiling_recorded_like_the_workers_switches_and_sharing_styles_agree(tiny_wan):
    loader = ModelLoader(ModelSettings())
    tiled = make_engine("a", AnimateStyle.model_validate(text_style(tiny_wan, frames=5, vae_tiling="on")), loader)
    tiled.setup()
    (clip,) = tiled(photo_image(80, 60))
    assert clip.parameters["performance"]["vae_tiling"] == "on" and clip.parameters["performance"]["vae_tiled"]
    assert clip.parameters["performance"]["offload"] == "none"  # the worker's, on the CPU
    other = make_engine("b", AnimateStyle.model_validate(text_style(tiny_wan, frames=5, vae_tiling="off")), loader)
    with pytest.raises(ConfigError, match=r"is loaded by another style with other offload / vae_tiling"):
        other.setup()


def _first_frame(mp4: bytes) -> Image.Image:
    import io

    with av.open(io.BytesIO(mp4)) as container:
        return next(container.decode(video=0)).to_image()


def _distance(a: Image.Image, b: Image.Image) -> float:
    b = b.convert("RGB").resize(a.size)
    return sum(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes(), strict=True)) / len(a.tobytes())


def test_ltx_video_is_told_the_fps_and_runs_its_8k_plus_1_frames(tiny_ltx, tmp_path, monkeypatch):
    root = run_once(tmp_path, {"ltx": text_style(tiny_ltx, frames=9, fps=24, license="other")}, monkeypatch)
    (v,) = read_manifest(root).variants
    clip = probe_mp4((root / v.key).read_bytes())
    assert (clip.frames, clip.fps) == (9, 24.0)
    p = v.parameters
    assert p["family"] == "ltx-video" and p["pipeline"] == "LTXImageToVideoPipeline" and p["fps_conditioned"]
    assert (p["guidance"], p["decode_timestep"], p["decode_noise_scale"]) == (3.0, 0.0, 0.0)
    assert (p["denoiser_calls"], p["denoiser_evaluations"]) == (2, 4)  # CFG batched into one call
    assert p["size"] == "64x64"  # a 4:3 photo at 64 px on sides of 32


def test_a_sidecar_asks_for_its_own_frames_within_the_limit_and_is_refused_beyond_it(tiny_svd, tmp_path):
    config = {"store": {"kind": "local", "root": str(tmp_path / "bucket")}, "styles": {"clip": svd_style(tiny_svd)},
              "run": {"styles": ["clip"], "allow_noncommercial": True}, "pipeline": {"contact_sheet": False}}
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    settings = load_settings(tmp_path / "config.yaml")
    store, layout = drain(settings, {"inputs/short.jpg": PHOTO, "inputs/short.json": b'{"frames": 3, "fps": 5}',
                                     "inputs/long.jpg": PHOTO, "inputs/long.json": b'{"frames": 10000}'})
    (v,) = manifest_of(store, layout, "inputs/short.jpg").variants
    assert probe_mp4(store.get(v.key).body).frames == 3 and v.video.fps == 5 and v.parameters["frames"] == 3
    failure = FailureRecord.model_validate_json(store.get(layout.for_input("inputs/long.jpg").failure).body)
    assert failure.error == "InvalidSidecar" and "frames 10,000" in failure.message
    assert "pipeline.video.max_frames: 121" in failure.message and failure.permanent


def test_a_clip_is_reproducible_and_one_variant_does_not_depend_on_the_others(tiny_svd):
    loader = ModelLoader(ModelSettings())
    photo = photo_image(96, 72, seed=2)

    def clips(**extra):
        engine = make_engine("c", AnimateStyle.model_validate(svd_style(tiny_svd, **extra)), loader)
        engine.setup()
        return [[f.tobytes() for f in v.video.frames] for v in engine(photo)]

    two = clips(variants=2)
    assert clips(variants=2) == two
    assert clips(variants=1, seed=4) == two[1:]  # seed 4 alone is clip 1 of the pair


@pytest.mark.parametrize("fixture, extra, message", [
    ("tiny_wan", {"motion_bucket_id": 30}, r"styles\.s\.motion_bucket_id: .* is Wan 2\.x image-to-video, which takes "
                                           r"no motion_bucket_id; drop motion_bucket_id"),
    ("tiny_svd", {"trigger": "dance", "license": "non-commercial"}, r"styles\.s\.trigger: .*Stable Video Diffusion, "
                                                                    r"which takes no trigger"),
    ("tiny_svd", {"prompt": "a bear", "license": "non-commercial"}, r"styles\.s\.prompt: "),
    ("tiny_ltx", {"min_guidance": 1.0}, r"styles\.s\.min_guidance: .* LTX-Video"),
    ("tiny_wan", {"frames": 6}, r"styles\.s\.frames: 6 frames do not fit Wan 2\.x image-to-video, whose clips are "
                                r"4k \+ 1 frames long: use 5 or 9"),
    ("tiny_ltx", {"size": 80}, r"styles\.s\.size: 80 must be a multiple of 32 for LTX-Video"),
    ("tiny_svd", {"license": None}, r"styles\.s\.license: .* Stable Video Diffusion, whose published weights are "
                                    r"under a non-commercial licence; declare license: non-commercial"),
    ("tiny_svd", {"license": "non-commercial", "decode_chunk_size": 40}, r"decode_chunk_size: 40 is over "
                                                                         r"pipeline\.video\.max_decode_chunk_size"),
])
def test_what_a_family_does_not_take_is_refused_at_start_naming_the_key(request, fixture, extra, message):
    model = request.getfixturevalue(fixture)
    style = AnimateStyle.model_validate(text_style(model) | {"trigger": ""} | extra)
    with pytest.raises(ConfigError, match=message):
        make_engine("s", style, ModelLoader(ModelSettings())).setup()


def test_a_default_clip_over_the_limit_and_models_of_another_kind_are_refused(tiny_svd, tiny_sd):
    loader = ModelLoader(ModelSettings())
    style = AnimateStyle.model_validate(svd_style(tiny_svd))
    with pytest.raises(ConfigError, match=r"styles\.c\.frames: 4 \(unset: Stable Video Diffusion's default\) is over "
                                          r"pipeline\.video\.max_frames \(3\)"):
        make_engine("c", style, loader, VideoSettings(max_frames=3)).setup()
    with pytest.raises(ConfigError, match=r"styles\.c\.model: model .* is SD 1\.x / 2\.x .*not an image-to-video "
                                          r"model; engine animate runs Stable Video Diffusion XT, Stable Video"):
        make_engine("c", AnimateStyle.model_validate(svd_style(tiny_sd)), loader).setup()
    from processor.config import Img2ImgStyle

    still = Img2ImgStyle.model_validate({"engine": "img2img", "model": str(tiny_svd), "steps": 2})
    with pytest.raises(ConfigError, match=r"is an image-to-video model \(Stable Video Diffusion\); it runs under "
                                          r"engine: animate only"):
        make_engine("c", still, loader).setup()


@pytest.mark.parametrize("class_name, components, expected", [
    ("StableVideoDiffusionPipeline", {"unet": {"num_frames": 25}}, FamilyId.SVD_XT),
    ("StableVideoDiffusionPipeline", {"unet": {"num_frames": 14}}, FamilyId.SVD),
    ("WanImageToVideoPipeline", {"transformer": {"in_channels": 36}}, FamilyId.WAN_I2V),
    ("WanPipeline", {"transformer": {"in_channels": 48}}, FamilyId.WAN_TI2V),
    ("LTXPipeline", {}, FamilyId.LTX),
    ("LTXConditionPipeline", {}, FamilyId.LTX),
])
def test_video_families_are_read_from_model_index_and_one_component_key(tmp_path, class_name, components, expected):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for name, config in components.items():
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps(config))
    assert identify(folder).family.id is expected


def test_the_tiny_models_are_the_families_they_stand_for(tiny_svd, tiny_wan, tiny_ltx):
    assert [identify(p).family.id for p in (tiny_svd, tiny_wan, tiny_ltx)] == [
        FamilyId.SVD, FamilyId.WAN_I2V, FamilyId.LTX]
