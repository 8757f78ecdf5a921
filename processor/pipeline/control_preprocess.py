"""The conditioning maps a ControlNet reads, made from the resized input photo
(``styles.<name>.control[].type``).

- ``canny``: OpenCV Canny edges (``canny_map``), no weights.
- ``lineart``: the Informative-Drawings line generator (Chan et al. 2022, "Learning to generate line
  drawings that convey geometry and semantics") that ControlNet 1.1's lineart models were trained
  on: the published architecture (``input_nc=3, output_nc=1``, 3 residual blocks, sigmoid out),
  with the parameter names of the published ``sk_model.pth``, so its weights load unchanged once
  converted to safetensors (``processor.models.preprocessors``). Drawn dark-on-white, inverted
  to white lines on black as the ControlNet expects.
- ``softedge``: ControlNet's Apache-2.0 HED (``ControlNetHED_Apache2``: five VGG-like stages, one
  1x1 projection each, RGB input in 0-255 minus a learnt mean), the published ``ControlNetHED.pth``
  names; the map is the sigmoid of the mean of the five projections at full size.
- ``depth``: a transformers depth-estimation model (Depth Anything V2, DPT / MiDaS): its image
  processor, then the predicted relative inverse depth resized to the photo and scaled to 0-255
  (near is bright, as the depth ControlNets were trained).

Each map is three-channel RGB at the photo's size. Preprocessors run in float32 whatever the
diffusion dtype: they are small and run once per input and style, so half precision would save
little, and one dtype keeps a map the same on every device. A loaded preprocessor is shared by
every style of the worker's ``ModelLoader`` that names the same weights.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from processor.config import ControlSettings
from processor.models.preprocessors import ResolvedPreprocessor, load_depth_model, load_state_dict, resolve

log = logging.getLogger("processor.control")


def canny_map(image: Image.Image, low: int, high: int) -> Image.Image:
    """The ControlNet conditioning image for ``type: canny``: OpenCV Canny edges of ``image`` (white
    on black, three channels, as the canny ControlNets were trained on)."""
    import cv2

    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


#: Residual blocks of the published lineart generator (``Generator(3, 1, 3)``).
LINEART_RESIDUAL_BLOCKS = 3
#: (input, output channels, convolutions) of the five HED stages, as published.
HED_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


# --------------------------------------------------------------------------- architectures


class _ResidualBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        # Indices 1 and 5 hold the weights (``conv_block.1.weight``), as in the published file.
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3), nn.InstanceNorm2d(features), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3), nn.InstanceNorm2d(features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """Informative-Drawings' generator: 7x7 stem, two stride-2 downsamplings to 256 channels,
    residual blocks, two transposed-convolution upsamplings, 7x7 head (see the module docstring).
    Input (N, 3, H, W) RGB in [0, 1], H and W multiples of 4; output (N, 1, H, W) in [0, 1]."""

    def __init__(self, residual_blocks: int = LINEART_RESIDUAL_BLOCKS) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64),
                                    nn.ReLU(inplace=True))
        down: list[nn.Module] = []
        for width in (64, 128):
            down += [nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(width * 2),
                     nn.ReLU(inplace=True)]
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*[_ResidualBlock(256) for _ in range(residual_blocks)])
        up: list[nn.Module] = []
        for width in (256, 128):
            up += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                   nn.InstanceNorm2d(width // 2), nn.ReLU(inplace=True)]
        self.model3 = nn.Sequential(*up)
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


class _HedStage(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, convolutions: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(channels_in if i == 0 else channels_out, channels_out, 3, padding=1)
                                     for i in range(convolutions)])
        self.projection = nn.Conv2d(channels_out, 1, 1)

    def forward(self, x: torch.Tensor, downsample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if downsample:
            x = nn.functional.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = nn.functional.relu(conv(x))
        return x, self.projection(x)


class HedNetwork(nn.Module):
    """ControlNet's Apache-2.0 HED (see the module docstring). Input (N, 3, H, W) RGB in 0-255;
    output the five side projections (logits), stage k at 1/2^(k-1) of the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for k, (channels_in, channels_out, convolutions) in enumerate(HED_STAGES, start=1):
            self.add_module(f"block{k}", _HedStage(channels_in, channels_out, convolutions))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x - self.norm
        projections = []
        for k in range(1, len(HED_STAGES) + 1):
            h, projection = getattr(self, f"block{k}")(h, downsample=k > 1)
            projections.append(projection)
        return projections


# --------------------------------------------------------------------------- maps


class ControlMap(Protocol):
    """Makes one ControlNet's conditioning image from the resized photo."""

    @property
    def settings(self) -> dict[str, Any]:
        """The map's own settings, recorded with the variant (canny: low, high)."""
        ...

    @property
    def preprocessor(self) -> ResolvedPreprocessor | None:
        """Where the preprocessor's weights came from (None: canny, no weights)."""
        ...

    def __call__(self, image: Image.Image) -> Image.Image:
        """The map of ``image``: RGB, the same size."""
        ...


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    """(H, W) floats in [0, 1] as a three-channel 8-bit image."""
    gray = (np.clip(values, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")


def _pixels(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 RGB in 0-255."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


@dataclass
class CannyMap:
    low: int
    high: int
    preprocessor: ResolvedPreprocessor | None = None
    settings: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.settings = {"low": self.low, "high": self.high}

    def __call__(self, image: Image.Image) -> Image.Image:
        return canny_map(image, self.low, self.high)


@dataclass
class LineartMap:
    net: LineartGenerator
    device: str
    preprocessor: ResolvedPreprocessor
    settings: dict[str, Any] = field(default_factory=dict)

    def __call__(self, image: Image.Image) -> Image.Image:
        # Two stride-2 stages: the generator needs sides divisible by 4 (working sizes are by 8).
        x = _pixels(image).to(self.device) / 255.0
        with torch.inference_mode():
            drawn = self.net(x)[0, 0].float().cpu().numpy()
        return _gray_to_rgb(1.0 - drawn)  # dark lines on white, inverted: white lines on black


@dataclass
class SoftedgeMap:
    net: HedNetwork
    device: str
    preprocessor: ResolvedPreprocessor
    settings: dict[str, Any] = field(default_factory=dict)

    def __call__(self, image: Image.Image) -> Image.Image:
        x = _pixels(image).to(self.device)
        size = x.shape[-2:]
        with torch.inference_mode():
            sides = [nn.functional.interpolate(p, size=size, mode="bilinear", align_corners=False)
                     for p in self.net(x)]
            edge = torch.sigmoid(torch.stack(sides).mean(dim=0))[0, 0].float().cpu().numpy()
        return _gray_to_rgb(edge)


@dataclass
class DepthMap:
    model: Any
    processor: Any
    device: str
    preprocessor: ResolvedPreprocessor
    settings: dict[str, Any] = field(default_factory=dict)

    def __call__(self, image: Image.Image) -> Image.Image:
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            depth = self.model(pixel_values=inputs["pixel_values"].to(self.device)).predicted_depth
            depth = nn.functional.interpolate(depth.unsqueeze(1).float(), size=(image.height, image.width),
                                              mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
        low, high = float(depth.min()), float(depth.max())
        # Relative depth: only its spread means anything; a flat prediction is a blank map.
        scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
        return _gray_to_rgb(scaled)


# --------------------------------------------------------------------------- loading

_lock = threading.Lock()
#: Per ModelLoader (one per worker): loaded preprocessors by (type, weights path, device).
_shared: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, str], ControlMap]] = weakref.WeakKeyDictionary()


def load_control_map(control: ControlSettings, models: Any) -> ControlMap:
    """The map maker for one ``control`` entry; its preprocessor's weights are resolved and loaded
    through ``models`` (a ``ModelLoader``: cache, offline mode, device), once per worker."""
    if control.type == "canny":
        return CannyMap(control.low, control.high)
    assert control.preprocessor is not None  # ControlSettings requires one for every other type
    resolved = resolve(control.type, control.preprocessor, cache_dir=models.cache_dir, offline=models.offline,
                       download=not models.offline)
    device = models.device()
    key = (control.type, str(resolved.path.resolve()), device)
    with _lock:
        loaded = _shared.setdefault(models, {})
        if key not in loaded:
            log.info("model_loading", extra={"model": resolved.model, "revision": resolved.revision,
                                             "kind": f"{control.type} preprocessor", "device": device})
            loaded[key] = _load(control.type, resolved, device)
        return loaded[key]


def _load(kind: str, resolved: ResolvedPreprocessor, device: str) -> ControlMap:
    if kind == "depth":
        depth = load_depth_model(resolved)
        return DepthMap(depth.model.float().to(device).eval(), depth.processor, device, resolved)
    net: nn.Module = LineartGenerator() if kind == "lineart" else HedNetwork()
    load_state_dict(net, resolved, kind, _ARCHITECTURES[kind])
    net = net.float().to(device).eval()
    if isinstance(net, LineartGenerator):
        return LineartMap(net, device, resolved)
    assert isinstance(net, HedNetwork)
    return SoftedgeMap(net, device, resolved)


#: What each architecture is, for the message when weights do not fit it.
_ARCHITECTURES = {"lineart": "the Informative-Drawings lineart generator (sk_model.pth)",
                  "softedge": "ControlNet's Apache-2.0 HED (ControlNetHED.pth)"}
