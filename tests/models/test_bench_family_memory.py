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


def _ip_adapter_params(unet: dict, image_embed_dim: int, tokens: int = 4) -> int:
    """IP-Adapter's published shapes, by hand: ``to_k_ip`` and ``to_v_ip`` (cross_attention_dim ->
    the block's width, no bias) per transformer block, plus the image projection (a Linear to
    ``tokens`` x cross_attention_dim and a LayerNorm)."""
    cross, widths, layers = unet["cross_attention_dim"], unet["block_out_channels"], unet["layers_per_block"]
    depth = unet.get("transformer_layers_per_block", 1)
    depth = depth if isinstance(depth, tuple) else (depth,) * len(widths)
    down = zip(widths, depth, unet["down_block_types"], strict=True)
    blocks = [(w, d * layers) for w, d, kind in down if "CrossAttn" in kind]
    blocks.append((widths[-1], depth[-1]))  # the middle block
    up = list(zip(reversed(widths), reversed(depth), unet["up_block_types"], strict=True))
    blocks += [(w, d * (layers + 1)) for w, d, kind in up if "CrossAttn" in kind]
    per_block = sum(2 * cross * w * n for w, n in blocks)
    return per_block + image_embed_dim * tokens * cross + tokens * cross + 2 * cross


def test_add_on_models_are_counted_and_the_shipped_styles_totalled(capsys):
    from bench.family_memory import CLIP_VISION_BIG_G, CLIP_VISION_H, UNET_SD15, UNET_SDXL, shipped_totals

    rows = {a.name.split(" (")[0]: a for a in main(["--addons"])}
    out = capsys.readouterr().out
    sd15, sdxl = rows["IP-Adapter SD 1.5"].components, rows["IP-Adapter SDXL"].components
    # ip-adapter_sd15.safetensors is 44.6 MB of float16 (22.3 M); ip-adapter_sdxl.safetensors 703 MB.
    assert sd15["adapter"] == _ip_adapter_params(UNET_SD15, CLIP_VISION_H["projection_dim"]) == 22_319_616
    assert sdxl["adapter"] == _ip_adapter_params(UNET_SDXL, CLIP_VISION_BIG_G["projection_dim"]) == 351_285_248
    # h94/IP-Adapter's card: "OpenCLIP-ViT-H-14 with 632.08M parameter", "OpenCLIP-ViT-bigG-14 with 1844.9M".
    assert round(sd15["image_encoder"] / 1e6, 2) == 632.08 and round(sdxl["image_encoder"] / 1e5) == 18449
    assert rows["CLIP ViT-L/14 scorer"].params == 427_616_513  # openai/clip-vit-large-patch14
    assert round(rows["Depth Anything V2 Small"].params / 1e6, 1) == 24.8  # its card: 24.8M
    assert rows["ControlNet SD 1.5"].params == 361_279_120
    assert out.startswith("| add-on |") and "| IP-Adapter SD 1.5 | `ip_adapter:` on SD 1.x |" in out
    assert "- modern-disney-held: 1.82 B parameters, 3.4 GiB" in out
    assert "- modern-disney-look: 1.72 B parameters, 3.2 GiB" in out
    base = next(f for f in main(["--family", "SD 1.5 (mo-di-diffusion, anything-v3)"]))
    held = next(t for t in shipped_totals([base], list(rows.values())) if t.style == "modern-disney-held")
    assert held.params == base.params + 2 * 361_279_120 + rows["Depth Anything V2 Small"].params + \
        rows["Lineart generator"].params


def test_the_preprocessors_count_is_their_real_modules(capsys):
    from processor.pipeline.control_preprocess import HED_STAGES, HedNetwork, LineartGenerator

    rows = {a.name.split(" (")[0]: a for a in main(["--addons"])}
    capsys.readouterr()
    # HED by hand: 3x3 convolutions with bias, a 1x1 projection to one channel per stage, the learnt mean.
    by_hand = sum(cin * cout * 9 + cout + (convs - 1) * (cout * cout * 9 + cout) + cout + 1
                  for cin, cout, convs in HED_STAGES) + 3
    real = sum(p.numel() for p in HedNetwork().parameters())  # built on the CPU, with storage
    assert rows["HED"].params == real == by_hand == 14_716_168
    assert rows["Lineart generator"].params == sum(p.numel() for p in LineartGenerator().parameters())
    main(["--addons", "--family", "HED (ControlNet Apache-2.0)", "--json"])
    assert '"params": 14716168' in capsys.readouterr().out
