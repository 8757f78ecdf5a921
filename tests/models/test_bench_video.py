"""The image-to-video benchmarks: ``bench.unet_evals`` counts a clip's denoiser calls and samples
the way the animate engine records them, ``bench.family_memory`` counts the video families'
published architectures, and the GPU suite's ``animate-svd`` step rehearses on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_suite
from bench.family_memory import main as family_memory

ROOT = Path(__file__).resolve().parents[2]
VIDEO_STYLES = ROOT / "bench" / "video_styles.yaml"


def test_unet_evals_counts_each_family_per_clip_as_the_engine_records_it(tmp_path, capsys):
    import yaml

    from bench import unet_evals

    rows = unet_evals.main(["--also", str(VIDEO_STYLES), "--styles", "svd-xt", "wan-i2v", "ltx-video",
                            "--models", str(tmp_path / "models")])
    styles = yaml.safe_load(VIDEO_STYLES.read_text())["styles"]
    svd, wan, ltx = rows["svd-xt"], rows["wan-i2v"], rows["ltx-video"]
    # SVD: one UNet call a step, the negative clip batched into it (guidance ramps up to 3).
    assert (svd["denoiser"], svd["unet_calls"], svd["unet_evaluations"], svd["denoising_steps"]) == (
        "UNet", styles["svd-xt"]["steps"], 2 * styles["svd-xt"]["steps"], styles["svd-xt"]["steps"])
    # Wan: classifier-free guidance is a second transformer call per step.
    steps = styles["wan-i2v"]["steps"]
    assert (wan["denoiser"], wan["transformer_calls"], wan["transformer_evaluations"]) == ("transformer", 2 * steps,
                                                                                           2 * steps)
    # LTX-Video: one call a step with both samples in it.
    steps = styles["ltx-video"]["steps"]
    assert (ltx["transformer_calls"], ltx["transformer_evaluations"]) == (steps, 2 * steps)
    assert "| svd-xt | stabilityai/stable-video-diffusion-img2vid-xt | UNet | 1 | 25 | 25 | 50 |" in \
        capsys.readouterr().out


def test_the_engine_records_what_the_bench_counts(tiny_wan, tiny_ltx):
    """The per-clip figures in every clip's record are the ones the bench counts (same formula, per family)."""
    from processor.cli.compose import make_engine
    from processor.config import AnimateStyle, ModelSettings
    from processor.models.loader import ModelLoader
    from testkit.images import photo_image

    loader = ModelLoader(ModelSettings())
    for model, extra, calls, evaluations in ((tiny_wan, {"frames": 5, "guidance": 5.0}, 6, 6),
                                             (tiny_wan, {"frames": 5, "guidance": 1.0}, 3, 3),
                                             (tiny_ltx, {"frames": 9, "guidance": 3.0}, 3, 6)):
        style = AnimateStyle.model_validate({"engine": "animate", "model": str(model), "steps": 3, "size": 64,
                                             "trigger": "dance"} | extra)
        engine = make_engine("s", style, loader)
        engine.setup()
        (clip,) = engine(photo_image(80, 60))
        assert (clip.parameters["denoiser_calls"], clip.parameters["denoiser_evaluations"]) == (calls, evaluations)


def test_family_memory_counts_the_video_families_published_shapes(capsys):
    rows = {f.name: f for f in family_memory(["--video"])}
    out = capsys.readouterr().out
    svd = rows["Stable Video Diffusion, SVD-XT"]
    assert 1.52e9 < svd.components["unet"] < 1.53e9  # "1.5B" on its card
    assert round(svd.components["image_encoder"] / 1e6, 2) == 632.08  # OpenCLIP ViT-H/14, as h94's card counts it
    a14b = rows["Wan 2.2 I2V A14B"].components
    assert a14b["transformer"] == a14b["transformer_2"] and 14.2e9 < a14b["transformer"] < 14.4e9  # two 14B experts
    assert 5.6e9 < a14b["text_encoder"] < 5.7e9  # UMT5-XXL's encoder
    assert 4.9e9 < rows["Wan 2.2 TI2V 5B"].components["transformer"] < 5.1e9
    assert 1.9e9 < rows["LTX-Video 2B (0.9.5)"].components["transformer"] < 2.0e9
    assert 13.0e9 < rows["LTX-Video 13B (0.9.7 dev)"].components["transformer"] < 13.1e9
    assert svd.license == "non-commercial" and rows["Wan 2.1 I2V 14B (480P, 720P)"].license == "apache-2.0"
    assert svd.dtype == "float16" and rows["Wan 2.2 TI2V 5B"].dtype == "bfloat16"  # the family table's, on a GPU
    assert out.startswith("| family |") and "| Stable Video Diffusion, SVD-XT | animate | 2.25 B | 4.2 GiB |" in out


def test_the_gpu_suite_times_an_svd_clip_and_rehearses_it_on_the_cpu(capsys):
    (step,) = [s for s in gpu_suite.STEPS if s.name == "animate-svd"]
    names = [s.name for s in gpu_suite.STEPS]
    assert names.index("pytest-gpu") < names.index("animate-svd") < names.index("img2img-bf16-compile")
    plan = gpu_suite.Plan(tiny=True, out=Path("out"), work=Path("work"), photos=Path("photos"))
    assert step.argv(plan)[1:] == ["-m", "bench.gpu_video", "--json", "--tiny", "--device", "cpu", "--clips", "1"]
    from bench import gpu_video

    results = gpu_video.main(["--tiny", "--device", "cpu", "--clips", "1", "--json"])
    assert (results["frames"], results["steps"], results["size"]) == (4, 2, "64x48")
    assert (results["unet_calls_per_clip"], results["unet_evaluations_per_clip"]) == (2, 4)
    assert results["s_per_clip"] > 0 and results["s_per_frame"] == pytest.approx(results["s_per_clip"] / 4, abs=1e-3)
    figures = gpu_suite.parse_output(step, capsys.readouterr().out)
    assert set(step.keys) - {"gpu_peak_allocated_gib"} <= set(figures) and json.dumps(figures)
