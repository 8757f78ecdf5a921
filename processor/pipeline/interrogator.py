"""A thin adapter around clip-interrogator 0.6.0 (imports torch; loaded only by the caption stage).

What we use from the package, unchanged: its interrogation modes (``interrogate_fast``,
``interrogate_classic``, ``interrogate``, ``interrogate_negative``), the flavor chain, ranking
(``LabelTable.rank``) and prompt truncation. Models go in through its ``Config``
(``clip_model``/``clip_preprocess``/``caption_model``/``caption_processor``), so it never loads or
downloads a model itself.

What we replace, and why (checked against transformers 5.24 and open_clip 3.3):

- ``load_clip_model``: the package builds the tokenizer from ``clip_model_name.split('/')``, which
  breaks for ``local-dir:``/``hf-hub:`` names, and it builds every label table itself, fetching
  precomputed embeddings from the hub (``download_cache``) and caching them locally under a file
  name keyed by the model *name* only. Here the tokenizer comes from our loader and the tables
  arrive precomputed (``processor.pipeline.caption`` computes or fetches them, keyed by the model's
  identity and the label lists), so nothing is ever downloaded.
- ``generate_caption``: the package picks the caption model's input dtype from its short *name*
  (``git-`` prefix), which an injected model does not have; we use the model's own dtype and run
  under ``torch.inference_mode``.

Everything else (BLIP generation, open_clip encoding) worked unchanged on these versions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from clip_interrogator import Config, Interrogator
from clip_interrogator.clip_interrogator import LabelTable
from PIL import Image

#: The package wraps every CLIP call in ``torch.cuda.amp.autocast()``, which warns on every call:
#: a FutureWarning (deprecated API) and, without CUDA, a UserWarning ("Disabling autocast").
_AUTOCAST_NOISE = r".*autocast.*"


@contextmanager
def quiet_autocast() -> Iterator[None]:
    """Silence the package's per-call autocast warnings (only those) for the calls inside."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_AUTOCAST_NOISE)
        yield


def encode_labels(clip_model: Any, tokenize: Callable[[Sequence[str]], torch.Tensor], labels: Sequence[str],
                  device: str, chunk_size: int) -> np.ndarray:
    """Normalised CLIP text embeddings of ``labels`` as float16 rows (what the package computes
    in ``LabelTable.__init__``), ``chunk_size`` labels per batch."""
    rows = []
    with torch.inference_mode(), quiet_autocast():
        for start in range(0, len(labels), chunk_size):
            tokens = tokenize(list(labels[start:start + chunk_size])).to(device)
            with torch.autocast("cuda", enabled=device.startswith("cuda")):
                features = clip_model.encode_text(tokens)
            features = features.float()
            features /= features.norm(dim=-1, keepdim=True)
            rows.append(features.half().cpu().numpy())
    if not rows:
        return np.zeros((0, 0), dtype=np.float16)
    return np.concatenate(rows)


class InjectedInterrogator(Interrogator):
    """``clip_interrogator.Interrogator`` with models, tokenizer and label tables given to it."""

    # Set by the untyped base class; declared so the overrides below type-check.
    caption_model: Any
    clip_model: Any
    clip_offloaded: bool
    caption_offloaded: bool

    def __init__(self, config: Config, *, tokenize: Callable[..., Any] | None,
                 tables: Mapping[str, tuple[list[str], np.ndarray]]) -> None:
        self._injected_tokenize = tokenize
        self._injected_tables = tables
        super().__init__(config)
        # The package decides float16 only for device == "cuda"; follow the caption model instead.
        if self.caption_model is not None:
            self.dtype = next(self.caption_model.parameters()).dtype

    def load_clip_model(self) -> None:
        self.clip_model = self.config.clip_model
        self.clip_preprocess = self.config.clip_preprocess
        self.tokenize = self._injected_tokenize
        if self.clip_model is None:
            return  # caption-only mode: no ranking
        self._prepare_clip()
        on_cpu = str(self.device).startswith("cpu")
        for name in ("artists", "flavors", "mediums", "movements", "trendings", "negative"):
            labels, embeds = self._injected_tables.get(name, ([], np.zeros((0, 0), np.float16)))
            table = LabelTable([], None, self)  # empty: computes and fetches nothing
            table.labels = list(labels)
            # As the package does: float32 rows on the CPU (no half matmul there), float16 on a GPU.
            rows = embeds.astype(np.float32) if on_cpu else embeds
            table.embeds = [rows[i] for i in range(rows.shape[0])] if len(labels) else []
            setattr(self, name, table)

    def generate_caption(self, pil_image: Image.Image) -> str:
        assert self.caption_model is not None, "No caption model loaded."
        self._prepare_caption()
        inputs = self.caption_processor(images=pil_image, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(next(self.caption_model.parameters()).dtype)
        with torch.inference_mode():
            tokens = self.caption_model.generate(**inputs, max_new_tokens=self.config.caption_max_length)
        return self.caption_processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()

    def offload(self) -> None:
        """Both models to the CPU (``caption.offload``); the package's ``_prepare_*`` moves each
        back to the device when it is next needed."""
        if str(self.device).startswith("cpu"):
            return
        if self.clip_model is not None and not self.clip_offloaded:
            self.clip_model = self.clip_model.to("cpu")
            self.clip_offloaded = True
        if self.caption_model is not None and not self.caption_offloaded:
            self.caption_model = self.caption_model.to("cpu")
            self.caption_offloaded = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
