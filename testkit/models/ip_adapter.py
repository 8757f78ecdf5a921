"""A tiny random-weight IP-Adapter for a tiny UNet, built offline in h94/IP-Adapter's layout.

``<root>/models/ip-adapter_tiny.safetensors`` holds the original (non-diffusers) key names that
diffusers' ``load_ip_adapter`` converts: ``image_proj.proj.*`` / ``image_proj.norm.*`` (the
``ImageProjection`` of a plain IP-Adapter: 4 image tokens) and ``ip_adapter.<id>.to_k_ip.weight`` /
``to_v_ip.weight`` for every cross-attention layer, ``<id>`` counting every attention processor
(self-attention even, cross-attention odd), as ``_convert_ip_adapter_attn_to_diffusers`` reads them.
``<root>/models/image_encoder`` is a tiny ``CLIPVisionModelWithProjection`` and its
``CLIPImageProcessor``.
"""

from __future__ import annotations

from pathlib import Path

#: Tokens a plain IP-Adapter's image projection makes (diffusers' ``num_image_text_embeds``).
IMAGE_TOKENS = 4
#: The tiny image encoder's embedding width and input side.
EMBED_WIDTH = 32
ENCODER_IMAGE = 32
WEIGHT_NAME = "ip-adapter_tiny.safetensors"


def _hidden_size(name: str, block_out_channels: list[int]) -> int:
    if name.startswith("mid_block"):
        return block_out_channels[-1]
    block = int(name.split(".")[1])
    if name.startswith("up_blocks"):
        return list(reversed(block_out_channels))[block]
    return block_out_channels[block]


def build_image_encoder(path: Path) -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(7)
    config = CLIPVisionConfig(hidden_size=EMBED_WIDTH, projection_dim=EMBED_WIDTH, intermediate_size=37,
                              num_hidden_layers=1, num_attention_heads=2, image_size=ENCODER_IMAGE, patch_size=8)
    CLIPVisionModelWithProjection(config).save_pretrained(path, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": ENCODER_IMAGE},
                       crop_size={"height": ENCODER_IMAGE, "width": ENCODER_IMAGE}).save_pretrained(path)
    return path


def build_ip_adapter(root: Path, unet_folder: Path, *, seed: int = 5) -> Path:
    """An IP-Adapter for the UNet in ``unet_folder`` under ``root`` (see the module docstring).
    Its weights are larger than a trained adapter's so the style image visibly moves the output."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_folder, use_safetensors=True)
    width = unet.config.cross_attention_dim
    tensors = {
        "image_proj.proj.weight": torch.randn(width * IMAGE_TOKENS, EMBED_WIDTH) * 0.5,
        "image_proj.proj.bias": torch.zeros(width * IMAGE_TOKENS),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    for key_id, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue  # self-attention: no image keys, but it counts in the numbering
        hidden = _hidden_size(name, list(unet.config.block_out_channels))
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, width) * 0.5
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, width) * 0.5
    (root / "models").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "models" / WEIGHT_NAME))
    build_image_encoder(root / "models" / "image_encoder")
    return root
