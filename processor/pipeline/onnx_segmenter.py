"""ONNX salient-object / matting segmenters run with onnxruntime: the rembg family (u2net,
isnet-general-use) and BiRefNet-style models.

Contract:

- ``OnnxSegmenter.load(settings, cache_dir=..., offline=...)`` finds the file through
  ``processor.models.segmenters`` (a local ``.onnx``, or ``settings.file`` of hub repo
  ``settings.model`` at ``settings.revision`` in the model cache, fetched by ``processor models
  pull``) and opens an onnxruntime session on the CUDA execution provider when onnxruntime has
  it (``settings.device: auto``), else the CPU. Anything that stops it (no file, not in the cache
  while offline, no onnxruntime, a graph that does not load or does not look like a segmenter)
  raises ``SegmenterUnavailable`` with the reason, which the masker records as its fallback to
  GrabCut.
- ``segmenter(image, size)`` returns the saliency map (float32 in [0, 1]) at ``size`` (default
  the image's own).
- Pre- and post-processing are rembg's, step for step (rembg 2.0.77, ``rembg/sessions/base.py``
  ``BaseSession.normalize`` and ``rembg/sessions/u2netp.py`` / ``dis_general_use.py`` /
  ``birefnet_general.py`` ``predict``), so a mask here is the mask rembg makes from the same file:
  the whole photo resized to the model's square input with Pillow's LANCZOS (a filter that widens
  with the reduction, so a 12-megapixel photo is averaged, not sampled), divided by its maximum,
  normalised with the family's mean and std, NCHW float32; the first output's first channel (a
  sigmoid first for BiRefNet's logits) min-max scaled to [0, 1], truncated to 8 bits, and resized
  back with LANCZOS. (OpenCV's LANCZOS4 is a fixed 8x8 kernel: shrinking a photo with it samples
  rather than averages, and thin parts of the toy went missing from the map.)

ONNX files hold a graph and tensors (protobuf), never pickle, so loading one runs no code from the
file: the safe-weights rule holds without safetensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from processor.config import OnnxSegmenterSettings
from processor.errors import ModelUnavailableError, StageFailed
from processor.models.safeweights import sha256_file
from processor.models.segmenters import resolve_onnx

log = logging.getLogger("processor.mask")

#: ImageNet statistics (u2net and BiRefNet were trained with them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Family:
    #: Pixels: the square input side the family was trained at.
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: True when the output is logits (a sigmoid turns them into saliency).
    logits: bool


#: Input size and normalisation per family (rembg's sessions; BiRefNet's own inference code).
FAMILIES = {
    "u2net": Family(320, IMAGENET_MEAN, IMAGENET_STD, logits=False),
    "isnet": Family(1024, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0), logits=False),
    "birefnet": Family(1024, IMAGENET_MEAN, IMAGENET_STD, logits=True),
}


class SegmenterUnavailable(Exception):
    """The configured ONNX segmenter cannot be used; ``str(exc)`` says why and what to change."""


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Execution providers to ask onnxruntime for, best first."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise SegmenterUnavailable("pipeline.mask.onnx.device is 'cuda' but onnxruntime has no CUDA execution "
                                   "provider (install onnxruntime-gpu instead of onnxruntime, or set device: auto)")
    return ["CPUExecutionProvider"]


class OnnxSegmenter:
    """One onnxruntime session of a salient-object model (see the module docstring)."""

    def __init__(self, session: Any, settings: OnnxSegmenterSettings, size: tuple[int, int], *,
                 path: Path, revision: str | None, sha256: str) -> None:
        self.session = session
        self.settings = settings
        self.family = FAMILIES[settings.family]
        #: (width, height) the graph reads.
        self.size = size
        self.path = path
        self.revision = revision
        self.sha256 = sha256
        self.input_name = session.get_inputs()[0].name
        self.provider = session.get_providers()[0]

    @classmethod
    def load(cls, settings: OnnxSegmenterSettings, *, cache_dir: str | Path | None = None,
             offline: bool = False) -> OnnxSegmenter:
        try:
            resolved = resolve_onnx(settings, cache_dir, download=not offline)
        except ModelUnavailableError as exc:
            raise SegmenterUnavailable(str(exc)) from exc
        path, revision = resolved.path, resolved.revision
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise SegmenterUnavailable("onnxruntime is not installed (pip install -e \".[mask]\", or "
                                       "onnxruntime-gpu for CUDA)") from exc
        providers = choose_providers(settings.device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are not ours to act on
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind types (Fail, InvalidGraph, ...)
            raise SegmenterUnavailable(f"ONNX segmenter {path} could not be loaded by onnxruntime: "
                                       f"{type(exc).__name__}: {exc}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = list(inputs[0].shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise SegmenterUnavailable(f"ONNX segmenter {path}: its input has shape {shape}, not N x 3 x H x W "
                                       f"(an RGB salient-object model is required)")
        if len(outputs[0].shape) not in (3, 4):
            raise SegmenterUnavailable(f"ONNX segmenter {path}: its first output has shape {outputs[0].shape}, "
                                       f"not a saliency map (N x 1 x H x W)")
        side = settings.input_size or FAMILIES[settings.family].size
        # A graph exported with a fixed input size can only read that size, whatever the family says.
        height = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else side
        width = shape[3] if isinstance(shape[3], int) and shape[3] > 0 else side
        log.info("segmenter_loaded", extra={"model": settings.model, "family": settings.family,
                                            "provider": session.get_providers()[0], "size": f"{width}x{height}"})
        # Hashed once at start (a second or two for a 1 GB BiRefNet): a local file has no commit.
        return cls(session, settings, (width, height), path=path, revision=revision, sha256=sha256_file(path))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model's input for ``image``: rembg's ``BaseSession.normalize``."""
        resized = np.asarray(image.convert("RGB").resize(self.size, Image.Resampling.LANCZOS))
        scaled = resized / max(float(resized.max()), 1e-6)  # float64, as rembg divides
        mean, std = np.array(self.family.mean), np.array(self.family.std)
        normalised: np.ndarray = (scaled - mean) / std
        return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32)

    def saliency_map(self, image: Image.Image) -> Image.Image:
        """The model's map at its own resolution as an 8-bit greyscale image (rembg's mask before
        its final resize)."""
        try:
            out = self.session.run(None, {self.input_name: self.preprocess(image)})[0]
        except Exception as exc:  # onnxruntime's pybind errors: a run that fails is this stage's failure
            raise StageFailed(f"ONNX segmenter {self.settings.model!r} failed: {type(exc).__name__}: {exc}") from exc
        pred = np.asarray(out, np.float32)
        pred = pred[0, 0] if pred.ndim == 4 else pred[0]
        if self.family.logits:
            pred = 1.0 / (1.0 + np.exp(-pred))
        low, high = float(pred.min()), float(pred.max())
        # A constant map (rembg would divide by zero) has no subject.
        pred = (pred - low) / (high - low) if high - low > 1e-6 else np.zeros_like(pred)
        return Image.fromarray((pred * 255).astype(np.uint8), "L")  # astype truncates, as rembg's does

    def __call__(self, image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
        """Saliency in [0, 1] (float32) at ``size`` (w, h; default ``image``'s own)."""
        mask = self.saliency_map(image).resize(size or image.size, Image.Resampling.LANCZOS)
        return np.asarray(mask, np.float32) / 255.0
