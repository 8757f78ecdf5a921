"""Where every CLIP model's weights are, and how they load: the caption stage's open_clip model
(``caption.clip_model``) and the CLIP scorer's transformers ``CLIPModel``
(``pipeline.clip_score.model``).

Contract:

- ``resolve_open_clip`` / ``resolve_clip_scorer`` find the files (a local folder as it is; a hub
  id from the model cache, fetched first when ``download``) and check they are safetensors;
  nothing missing is ever loaded from a pickle. ``download=False`` looks in the cache only and
  raises ``ModelUnavailableError`` naming ``processor models pull``.
- ``load_open_clip`` / ``load_clip_scorer`` fetch unless offline, then load under the weights
  rule: safetensors only, no remote code, the pinned revision. A model that does not load is
  ``ModelUnavailableError`` saying what is required.
- The open_clip model is an ``ARCH/TAG`` (weights: the safetensors twin of the tag's hub file),
  ``hf-hub:org/repo`` or ``local-dir:/path``. Its identity (the hub commit, or a content hash of a
  local folder) names the caption stage's cached label tables.

open_clip, torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from processor.config import CaptionSettings, ClipScoreSettings
from processor.errors import ConfigError, ModelUnavailableError
from processor.models.hub import PULL_COMMAND, ResolvedPath, fetch_file, fetch_snapshot, is_local

if TYPE_CHECKING:
    from processor.models.loader import ModelLoader

log = logging.getLogger("processor.models")

#: Files fetched for an ``hf-hub:`` open_clip model.
OPEN_CLIP_HUB_PATTERNS = ["open_clip_config.json", "open_clip_model.safetensors", "tokenizer*", "*.txt",
                          "special_tokens_map.json", "vocab.json", "merges.txt"]
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
#: The prefix of an open_clip model given as a local folder.
LOCAL_DIR = "local-dir:"
#: The prefix of an open_clip model given as a hub repo.
HF_HUB = "hf-hub:"
#: Bytes read at a time while hashing a local open_clip folder for its identity.
HASH_BLOCK_BYTES = 8 * 1024 * 1024
#: Files fetched for the CLIP scorer given as a hub id: weights (safetensors only), configs, vocabularies.
CLIP_SCORER_PATTERNS = ["*.safetensors", "*.json", "*.txt"]


# --------------------------------------------------------------------------- open_clip (caption)


@dataclass(frozen=True)
class ResolvedClip:
    """Where the caption stage's open_clip model is."""

    #: As configured.
    spec: str
    #: The name open_clip is given (``ViT-L-14`` or ``local-dir:/folder``).
    open_clip_name: str
    #: The weights file for ``ARCH/TAG`` models (None: the folder holds them).
    weights: Path | None
    #: The folder for ``local-dir:`` / ``hf-hub:`` models.
    folder: Path | None
    #: The hub commit loaded, or None for a local folder.
    revision: str | None
    #: open_clip's pretrained config of a tag (quick_gelu, mean/std, ...).
    tag_cfg: dict[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> Path:
        """The weights file, else the folder: what ``doctor`` and ``models pull`` print."""
        location = self.weights or self.folder
        assert location is not None  # every resolution sets one of them
        return location


@dataclass(frozen=True)
class LoadedClip:
    """The caption stage's open_clip model, ready to rank labels."""

    model: Any
    preprocess: Any
    tokenize: Callable[..., Any]
    resolved: ResolvedClip
    #: ``spec@commit``, or ``local:sha256:...`` for a local folder: names the label tables.
    identity: str


def snapshot_commit(path: Path) -> str | None:
    """The commit of a file or folder inside a hub cache snapshot (``.../snapshots/<commit>/...``)."""
    parts = path.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        return parts[parts.index("snapshots") + 1]
    return None


def _safetensors_name(filename: str) -> str:
    """The safetensors twin of an open_clip hub weights file name."""
    if not filename or filename == "open_clip_pytorch_model.bin":
        return OPEN_CLIP_WEIGHTS
    if filename.endswith(".safetensors"):
        return filename
    stem, _dot, _ext = filename.rpartition(".")
    return (stem or filename) + ".safetensors"


def resolve_open_clip(settings: CaptionSettings, models: ModelLoader, *, download: bool | None = None) -> ResolvedClip:
    """Where the open_clip model's config and safetensors weights are; fetches them unless offline
    (``download=False`` only looks in the cache)."""
    spec = settings.clip_model
    download = (not models.offline) if download is None else download
    if spec.startswith(LOCAL_DIR):
        folder = Path(spec[len(LOCAL_DIR):]).expanduser()
        _check_open_clip_folder(spec, folder)
        return ResolvedClip(spec, f"{LOCAL_DIR}{folder}", None, folder, None)
    where = spec + (f"@{settings.clip_revision}" if settings.clip_revision else "")
    if spec.startswith(HF_HUB):
        folder = fetch_snapshot(spec[len(HF_HUB):], what=f"CLIP model {where}", revision=settings.clip_revision,
                                cache_dir=models.cache_dir, allow_patterns=OPEN_CLIP_HUB_PATTERNS, download=download,
                                offline=models.offline)
        _check_open_clip_folder(spec, folder)
        return ResolvedClip(spec, f"{LOCAL_DIR}{folder}", None, folder, folder.name)

    import open_clip

    arch, tag = spec.split("/", 1)
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(f"caption.clip_model {spec!r}: open_clip knows no such model/tag "
                          f"(tags for {arch}: {', '.join(tags) or 'none, unknown architecture'})")
    hub = cfg.get("hf_hub") or ""
    if not hub:
        raise ModelUnavailableError(f"CLIP model {spec!r} has no safetensors weights on the hub (open_clip lists only "
                                    f"a pickled URL); use an hf-hub: or local-dir: model with safetensors weights")
    # open_clip writes "org/repo/" for the repo's default weights, "org/repo/file.bin" for a named file.
    repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
    weights = fetch_file(repo, _safetensors_name(filename), what=f"CLIP model {where} ({repo}, as safetensors)",
                         revision=settings.clip_revision, cache_dir=models.cache_dir, download=download,
                         offline=models.offline)
    return ResolvedClip(spec, arch, weights, None, snapshot_commit(weights), dict(cfg))


def _check_open_clip_folder(spec: str, folder: Path) -> None:
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        raise ModelUnavailableError(f"CLIP model {spec!r}: {folder} has no {OPEN_CLIP_CONFIG}")
    if not list(folder.glob("*.safetensors")):
        raise ModelUnavailableError(f"CLIP model {spec!r}: {folder} has no .safetensors weights (pickled "
                                    f"weights are never loaded)")


def folder_identity(folder: Path) -> str:
    """A content hash of a local open_clip folder's config and safetensors weights."""
    digest = hashlib.sha256()
    for path in [folder / OPEN_CLIP_CONFIG, *sorted(folder.glob("*.safetensors"))]:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(HASH_BLOCK_BYTES):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def load_open_clip(settings: CaptionSettings, models: ModelLoader, device: str, dtype: Any) -> LoadedClip:
    """The open_clip model, its image transform and tokenizer, in ``dtype`` on ``device``."""
    import open_clip
    import torch

    resolved = resolve_open_clip(settings, models)
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    log.info("model_loading", extra={"model": resolved.spec, "revision": resolved.revision, "role": "clip"})
    options: dict[str, Any] = {"precision": precision, "device": device}
    if resolved.weights is not None:
        cfg = resolved.tag_cfg
        options |= {"pretrained": str(resolved.weights), "force_quick_gelu": bool(cfg.get("quick_gelu", False))}
        for ours, theirs in (("image_mean", "mean"), ("image_std", "std"), ("image_interpolation", "interpolation"),
                             ("image_resize_mode", "resize_mode")):
            if cfg.get(theirs) is not None:
                options[ours] = cfg[theirs]
    try:
        model, _train, preprocess = open_clip.create_model_and_transforms(resolved.open_clip_name, **options)
        tokenize = open_clip.get_tokenizer(resolved.open_clip_name)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelUnavailableError(f"CLIP model {resolved.spec!r} could not be loaded: {exc}") from exc
    model.eval()
    if resolved.revision is not None:
        identity = f"{resolved.spec}@{resolved.revision}"
    else:
        # No revision: a local folder (ARCH/TAG weights always come from a hub snapshot).
        assert resolved.folder is not None
        started = time.perf_counter()
        identity = f"local:{folder_identity(resolved.folder)}"
        log.info("clip_identity", extra={"model": resolved.spec, "identity": identity,
                                         "seconds": round(time.perf_counter() - started, 3)})
    return LoadedClip(model, preprocess, tokenize, resolved, identity)


# --------------------------------------------------------------------------- the CLIP scorer


@dataclass(frozen=True)
class LoadedClipScorer:
    """The CLIP scorer's model (on its device, in the worker's dtype) and image processor."""

    model: Any
    processor: Any
    revision: str | None


def resolve_clip_scorer(settings: ClipScoreSettings, cache_dir: str | None, *, download: bool,
                        offline: bool = False) -> ResolvedPath:
    """The folder to load for ``settings.model``: a local folder as it is, a hub id from the cache
    (fetched first when ``download``)."""
    if is_local(settings.model):
        folder = Path(settings.model).expanduser()
        if not folder.is_dir():
            raise ModelUnavailableError(
                f"CLIP model folder {settings.model} (pipeline.clip_score.model) does not exist")
        return ResolvedPath(folder, None)
    folder = fetch_snapshot(settings.model, what=f"CLIP model {settings.model!r} (pipeline.clip_score.model)",
                            revision=settings.revision, cache_dir=cache_dir, allow_patterns=CLIP_SCORER_PATTERNS,
                            download=download, offline=offline)
    # A snapshot folder is named by its commit: the revision pinned, resolved.
    return ResolvedPath(folder, folder.name)


def load_clip_scorer(settings: ClipScoreSettings, models: ModelLoader, device: str) -> LoadedClipScorer:
    """The scorer's ``CLIPModel`` and ``CLIPImageProcessor``, fetched unless offline, on ``device``."""
    from transformers import CLIPImageProcessor, CLIPModel

    resolved = resolve_clip_scorer(settings, models.cache_dir, download=not models.offline, offline=models.offline)
    try:
        processor = CLIPImageProcessor.from_pretrained(resolved.path)
        model: Any = CLIPModel.from_pretrained(resolved.path, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"CLIP model {settings.model!r} (pipeline.clip_score.model) could not be loaded from "
            f"{resolved.path}: {exc} (a transformers CLIPModel with model.safetensors and "
            f"preprocessor_config.json is required; `{PULL_COMMAND}` fetches a hub id into the cache)"
        ) from exc
    return LoadedClipScorer(model.to(device=device, dtype=models.dtype()).eval(), processor, resolved.revision)
