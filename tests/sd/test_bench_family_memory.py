"""``bench/family_memory.py`` counts the published architectures: its counts equal the parameter
counts the model cards and papers publish for the components checked here, and a real module's."""

from __future__ import annotations

from bench.family_memory import FP16_BYTES, GIB, SD3_MEDIUM, count, main


def test_counts_match_the_published_architectures(capsys):
    rows = {f.name.split(" (")[0].split(",")[0]: f for f in main([])}
    assert rows["SD 1.5"].components == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert rows["SD 2.1"].components["unet"] == 865_910_724
    assert rows["SDXL base 1.0"].components["unet"] == 2_567_463_684
    assert rows["FLUX.1-dev"].components["transformer"] == 11_901_408_320
    assert rows["SD 3 medium"].components["text_encoder_3"] == 4_762_310_656  # T5 v1.1 XXL's encoder
    assert rows["FLUX.1-dev"].license == "non-commercial" and rows["FLUX.1-schnell"].license == "apache-2.0"
    qwen = rows["Qwen-Image-Edit"]
    # Qwen-Image's "20B MMDiT" and Qwen2.5-VL-7B-Instruct (8.29 B with its vision tower and lm_head).
    assert 20.0e9 < qwen.components["transformer"] < 20.9e9 and 8.2e9 < qwen.components["text_encoder"] < 8.4e9
    flux = rows["FLUX.1-dev"]
    assert flux.fp16_gib == flux.params * FP16_BYTES / GIB
    out = capsys.readouterr().out
    assert out.startswith("| family |")
    assert "| FLUX.1-dev, FLUX.1 Kontext dev | img2img (flow); Kontext: edit | 16.87 B | 31.4 GiB |" in out


def test_the_meta_count_is_what_a_real_module_holds_and_components_print_per_family(capsys):
    from diffusers import SD3Transformer2DModel

    tiny = SD3_MEDIUM | {"num_layers": 1, "num_attention_heads": 2, "caption_projection_dim": 128,
                         "joint_attention_dim": 64, "pooled_projection_dim": 64}
    real = sum(p.numel() for p in SD3Transformer2DModel(**tiny).parameters())
    assert count(lambda: SD3Transformer2DModel(**tiny)) == real
    main(["--family", "SD 1.5 (mo-di-diffusion, anything-v3)", "--components"])
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| SD 1.5 (mo-di-diffusion, anything-v3) | unet 0.86B") and "| 1.07B | 2.0 GiB |" in row
