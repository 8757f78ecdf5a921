"""Tiny subject segmenters, built offline: a random-weight SegFormer with ADE20K-style labels and a
fixed-weight salient-object model exported to ONNX in each published family's input convention."""

from __future__ import annotations

import warnings
from pathlib import Path


def build_segformer(path: Path) -> Path:
    """A tiny random-weight SegFormer with ADE20K-style labels (two background classes, one object)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    labels = {0: "wall", 1: "table", 2: "toy"}
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             num_attention_heads=[1, 2], decoder_hidden_size=16, num_labels=3,
                             id2label=labels, label2id={v: k for k, v in labels.items()})
    SegformerForSemanticSegmentation(config).save_pretrained(path, safe_serialization=True)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path



# --------------------------------------------------------------------------- ONNX segmenters
# A tiny salient-object "model" exported with torch.onnx (the TorchScript exporter: it needs no
# onnxscript and nothing from the network). Its weights are fixed, not random: it undoes the
# family's normalisation and answers "saturated colour" (max - min channel above a threshold), so a
# saturated toy on a pale wall is found only if the production path resizes and normalises the
# input the way the family expects.

#: Saturation (0-1) above which the tiny segmenter calls a pixel subject.
TINY_ONNX_SATURATION = 0.3


def build_onnx_segmenter(path: Path, *, family: str = "u2net", size: int | None = 64, channels: int = 3) -> Path:
    """Export the tiny segmenter to ``path``: a fixed ``size`` x ``size`` input (None: dynamic
    height and width); ``birefnet`` returns logits, the others saliency in [0, 1]."""
    import torch

    from processor.pipeline.onnx_segmenter import FAMILIES

    spec = FAMILIES[family]

    class Saturation(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
            self.smooth = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
            torch.nn.init.constant_(self.smooth.weight, 1.0 / 9.0)

        def forward(self, x):
            rgb = x[:, :3] * self.std + self.mean
            saturation = rgb.max(dim=1, keepdim=True).values - rgb.min(dim=1, keepdim=True).values
            logits = 30.0 * (self.smooth(saturation) - TINY_ONNX_SATURATION)
            return logits if spec.logits else torch.sigmoid(logits)

    side = size or 96
    example = torch.zeros(1, channels, side, side)
    dynamic = None if size else {"input": {2: "height", 3: "width"}, "saliency": {2: "height", 3: "width"}}
    model = Saturation().eval() if channels == 3 else torch.nn.Conv2d(channels, 1, 1).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice, on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, example, str(path), input_names=["input"], output_names=["saliency"],
                          dynamic_axes=dynamic, dynamo=False)
    return path

