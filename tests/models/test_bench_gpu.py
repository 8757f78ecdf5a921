"""The GPU benchmark's CPU smoke run: ``bench.gpu_img2img --tiny`` on the session's tiny model.

Speed is not checked (this is not the machine the figures are about); the work each path does is:
how many UNet samples each runs per input follows from the schedule and the calling pattern
(``--shared-rounds 3`` runs the processor with the notebook's pattern too).
"""

from __future__ import annotations

from bench import gpu_img2img
from bench.common import parse_report


def test_gpu_img2img_tiny_smoke(tiny_sd, capsys) -> None:
    results = gpu_img2img.main(["--tiny", "--model", str(tiny_sd), "--images", "1", "--steps", "4",
                                "--variants", "2", "--shared-rounds", "3"])
    printed = parse_report(capsys.readouterr().out)
    for key in ("processor_images_per_s", "notebook_images_per_s", "ratio_processor_over_notebook",
                "processor_unet_fraction_of_peak", "unet_alone_fraction_of_peak", "unet_gflops_per_sample",
                "bf16_matmul_peak_tflops", "ratio_shared_over_unshared", "shared_images_per_s",
                "ratio_shared_over_notebook"):
        assert float(printed[key]) > 0
    # PNDM runs int(steps * strength) + 1 UNet calls per round (its first step repeats), each on
    # 2 x the batch (classifier-free guidance). The processor runs every variant's own chain of
    # rounds; the notebook runs one chain and widens only the last round to all variants.
    calls = [int(4 * strength) + 1 for strength, _ in gpu_img2img.NOTEBOOK_ROUNDS]
    assert results["unet_samples_per_input"] == sum(calls) * 2 * 2
    assert results["notebook_unet_samples_per_input"] == sum(calls[:-1]) * 2 + calls[-1] * 2 * 2
    # shared_rounds 3 is the notebook's calling pattern inside the processor: the same UNet work.
    assert results["shared_unet_samples_per_input"] == results["notebook_unet_samples_per_input"]
    assert results["shared_unet_samples_per_image"] == results["shared_unet_samples_per_input"] / 2
    assert results["unet_samples_ratio_unshared_over_shared"] == (
        results["unet_samples_per_input"] / results["shared_unet_samples_per_input"])
    assert float(printed["shared_rounds"]) == 3
    assert "attention=sdpa" in results["processor_switches"]
