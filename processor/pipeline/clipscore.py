"""How much a variant still looks like the photo's toy, by CLIP: cosine similarity of image embeddings.

Contract: ``ClipScorer(settings, models)`` loads a transformers ``CLIPModel`` and its image
processor once per worker in ``setup()``, through ``processor.models.clip`` (safetensors only, no
remote code, the pinned revision, nothing from the network in offline mode:
``ModelUnavailableError`` naming ``pipeline.clip_score.model`` and ``processor models pull``).
``scorer(photo, images, mask)`` returns one ``ClipScore`` per image: the cosine of the
L2-normalised image embeddings of the photo and that image, in [-1, 1] (1: CLIP sees the same
picture).

Region: with a usable subject mask (the one the structure score uses), photo and variant are both
cropped to the subject's bounding box (``CROP_MARGIN`` around it), the same fraction of each
image. A background style replaces the background on purpose, and a whole-image score would
punish exactly what it was asked to do; the toy is what must survive. A crop rather than blanking
the background keeps CLIP's input a natural picture: a grey fill outside the mask would give both
images the same flat silhouette, which CLIP reads as similarity on its own. Without a mask the
whole image is compared, and ``region`` says so.

Torch and transformers are imported in ``setup()`` only: a toon-only worker without a CLIP model
configured never imports them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from processor.config import ClipScoreSettings
from processor.models.clip import load_clip_scorer

log = logging.getLogger("processor.pipeline")

#: Padding around the subject's bounding box, as a fraction of the box's side: CLIP judges an
#: object better with a little of its outline's surroundings than cut at its edge.
CROP_MARGIN = 0.1
#: Alpha (0-255) from which a mask pixel counts as subject (as the structure score's).
SUBJECT_ALPHA = 128
#: Images embedded per forward pass (a style's variants of one input fit in one or two).
BATCH = 16


@dataclass(frozen=True)
class ClipScore:
    """CLIP image similarity of a variant to its photo (see the module docstring)."""

    #: Cosine similarity of the two image embeddings, -1 to 1 (1: the same picture to CLIP).
    similarity: float
    #: ``subject`` (both cropped to the subject's box) or ``image`` (no usable mask: whole pictures).
    region: str
    #: As configured (``pipeline.clip_score.model``).
    model: str
    #: The hub commit loaded, or None for a local folder.
    revision: str | None


@dataclass(frozen=True)
class Box:
    """A crop as fractions of the image's width and height (left, top, right, bottom), so one box
    fits the photo and every variant, whatever their pixel sizes."""

    left: float
    top: float
    right: float
    bottom: float

    def crop(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        box = (int(self.left * w), int(self.top * h), max(int(self.left * w) + 1, round(self.right * w)),
               max(int(self.top * h) + 1, round(self.bottom * h)))
        return image.crop(box)


def subject_box(alpha: np.ndarray, margin: float = CROP_MARGIN) -> Box | None:
    """The bounding box of the subject in ``alpha`` (uint8, 255 = subject), ``margin`` of its
    side added around it and clamped to the image; None when no pixel is subject."""
    ys, xs = np.nonzero(alpha >= SUBJECT_ALPHA)
    if ys.size == 0:
        return None
    h, w = alpha.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    pad_x, pad_y = margin * (x1 - x0), margin * (y1 - y0)
    return Box(max(0.0, (x0 - pad_x) / w), max(0.0, (y0 - pad_y) / h), min(1.0, (x1 + pad_x) / w),
               min(1.0, (y1 + pad_y) / h))


class ClipScorer:
    """CLIP image similarity between a photo and its variants, loaded once per worker.

    ``models`` is a ``ModelLoader``: the model cache, offline mode, device and dtype every other
    model uses. Calls are serialised: one model, possibly shared by an upload and a local thread.
    """

    def __init__(self, settings: ClipScoreSettings, models: Any) -> None:
        self.settings = settings
        self.models = models
        self.revision: str | None = None
        self._model: Any = None
        self._processor: Any = None
        self._device = "cpu"
        self._lock = threading.RLock()

    @property
    def ready(self) -> bool:
        return self._model is not None

    def setup(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            self._device = self.models.device()
            loaded = load_clip_scorer(self.settings, self.models, self._device)
            self._model, self._processor, self.revision = loaded.model, loaded.processor, loaded.revision
            log.info("clip_score_ready", extra={"model": self.settings.model, "revision": self.revision,
                                                "device": self._device})

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, float32, one row per image."""
        import torch

        self.setup()
        rows = []
        for start in range(0, len(images), BATCH):
            chunk = [im.convert("RGB") for im in images[start:start + BATCH]]
            pixels = self._processor(images=chunk, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                features = self._model.get_image_features(
                    pixel_values=pixels.to(self._device, dtype=self._model.dtype))
            # transformers 4 returns the projected embeddings; 5 an output whose pooler_output holds them.
            if not isinstance(features, torch.Tensor):
                features = features.pooler_output
            features = features.float()
            rows.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(rows, axis=0)

    def __call__(self, photo: Image.Image, images: list[Image.Image], mask: Any = None) -> list[ClipScore]:
        """One score per image against ``photo``; ``mask`` is the input's subject mask
        (``processor.pipeline.mask.SubjectMask``, at the photo's size) or None."""
        if not images:
            return []
        box = subject_box(mask.alpha) if mask is not None else None
        region = "image" if box is None else "subject"
        crops = [photo, *images] if box is None else [box.crop(photo), *(box.crop(im) for im in images)]
        with self._lock:
            vectors = self.embed(crops)
        similarity = np.clip(vectors[1:] @ vectors[0], -1.0, 1.0)
        return [ClipScore(similarity=round(float(s), 4), region=region, model=self.settings.model,
                          revision=self.revision) for s in similarity]
