"""Tiny random-weight ControlNet preprocessors, built offline: the lineart generator and HED at
their published sizes (a few MB each, fast on a 64 px photo), saved as safetensors with the
published parameter names, and a tiny Depth Anything (DINOv2 backbone) saved with
``save_pretrained``, as its hub folder is laid out."""

from __future__ import annotations

from pathlib import Path

#: Pixels: the tiny depth model's input side (DINOv2 patches of 14).
TINY_DEPTH_SIDE = 28


def build_annotator(path: Path, kind: str, *, seed: int = 0) -> Path:
    """``kind`` (lineart / softedge) with random weights as ``path`` (.safetensors)."""
    import torch
    from safetensors.torch import save_file

    from processor.pipeline.control_preprocess import HedNetwork, LineartGenerator

    torch.manual_seed(seed)
    net = LineartGenerator() if kind == "lineart" else HedNetwork()
    with torch.no_grad():
        if kind == "softedge":
            net.norm.copy_(torch.tensor([120.0, 115.0, 105.0]).view(1, 3, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def build_depth(path: Path) -> Path:
    """A tiny Depth Anything V2 folder (config, safetensors, DPT image processor)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(image_size=TINY_DEPTH_SIDE, patch_size=14, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32, out_features=["stage1", "stage2"],
                            apply_layernorm=True, reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, patch_size=14,
                                 reassemble_factors=[4, 2], neck_hidden_sizes=[8, 16], fusion_hidden_size=8,
                                 head_hidden_size=8)
    DepthAnythingForDepthEstimation(config).save_pretrained(path, safe_serialization=True)
    # The hub model's processor settings, at the tiny input side.
    DPTImageProcessor(size={"height": TINY_DEPTH_SIDE, "width": TINY_DEPTH_SIDE}, keep_aspect_ratio=True,
                      ensure_multiple_of=14, resample=3, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return path
