"""Where the subject masker's segmenter weights are, and how a transformers segmenter loads.

Contract:

- ONNX (``pipeline.mask.onnx``): ``resolve_onnx`` gives the ``.onnx`` file: a local file as it
  is, or ``file`` of hub repo ``model`` at ``revision`` from the model cache (fetched first when
  ``download``), with its external-data file beside it and nothing else. ONNX files hold a graph
  and tensors (protobuf), never pickle: the safe-weights rule holds without safetensors.
- transformers (``pipeline.mask.segmenter``): ``resolve_semantic_segmenter`` fetches the model
  folder (safetensors, configs, vocabularies) for ``processor models pull``;
  ``load_semantic_segmenter`` loads it (safetensors only, no remote code, the pinned revision,
  nothing from the network in offline mode).
- Every "cannot" is ``ModelUnavailableError`` saying what is missing and what to change. (The
  masker turns an unusable ONNX model into a GrabCut fallback with that reason.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from processor.config import MaskSettings, OnnxSegmenterSettings
from processor.errors import ModelUnavailableError
from processor.models.hub import PULL_COMMAND, ResolvedPath, fetch_snapshot, is_local

if TYPE_CHECKING:
    from processor.models.loader import ModelLoader

#: Files fetched for a transformers segmenter given as a hub id (weights as safetensors, configs, vocabularies).
SEGMENTER_PATTERNS = ["*.safetensors", "*.json", "*.txt"]


@dataclass(frozen=True)
class LoadedSegmenter:
    """A transformers semantic-segmentation model, as loaded, and its image processor."""

    model: Any
    processor: Any


def is_local_onnx(model: str) -> bool:
    """A ``.onnx`` file or a path, rather than a hub repo."""
    return model.endswith(".onnx") or model.startswith((".", "/", "~")) or Path(model).expanduser().is_file()


def onnx_patterns(settings: OnnxSegmenterSettings) -> list[str]:
    """The graph and, for models over protobuf's 2 GB, its external-data file beside it."""
    return [settings.file, settings.file + "_data", settings.file + ".data"]


def resolve_onnx(settings: OnnxSegmenterSettings, cache_dir: str | Path | None, *, download: bool) -> ResolvedPath:
    """The ``.onnx`` file and its hub commit (None for a local file); fetched first when ``download``."""
    if is_local_onnx(settings.model):
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(f"ONNX segmenter {settings.model!r} (pipeline.mask.onnx.model) does not exist")
        return ResolvedPath(path, None)
    where = f"{settings.model}:{settings.file}" + (f"@{settings.revision}" if settings.revision else "")
    folder = fetch_snapshot(settings.model, what=f"ONNX segmenter {where}", revision=settings.revision,
                            cache_dir=str(cache_dir) if cache_dir is not None else None,
                            allow_patterns=onnx_patterns(settings), download=download, offline=not download)
    path = folder / settings.file
    if not path.is_file():
        raise ModelUnavailableError(f"ONNX segmenter {where}: the repo has no file {settings.file!r} "
                                    f"(set pipeline.mask.onnx.file)")
    return ResolvedPath(path, folder.name)


def resolve_semantic_segmenter(settings: MaskSettings, cache_dir: str | None, *, download: bool,
                               offline: bool) -> ResolvedPath:
    """The cached snapshot of the hub segmenter ``settings.segmenter`` (fetched first when ``download``)."""
    name = settings.segmenter
    if name is None:
        raise ValueError("resolve_semantic_segmenter needs mask.segmenter set (None means GrabCut)")
    folder = fetch_snapshot(name, what=f"segmenter {name!r}", revision=settings.segmenter_revision,
                            cache_dir=cache_dir, allow_patterns=SEGMENTER_PATTERNS, download=download,
                            offline=offline)
    return ResolvedPath(folder, folder.name)


def load_semantic_segmenter(settings: MaskSettings, models: ModelLoader) -> LoadedSegmenter:
    """The transformers segmenter ``settings.segmenter`` and its image processor, from a local
    folder, or a hub id through the model cache (from the cache only in offline mode)."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    name = settings.segmenter
    if name is None:
        raise ValueError("load_semantic_segmenter needs mask.segmenter set (None means GrabCut, which loads nothing)")
    options: dict[str, Any] = {"revision": settings.segmenter_revision, "cache_dir": models.cache_dir,
                               "local_files_only": models.offline or is_local(name)}
    try:
        processor = AutoImageProcessor.from_pretrained(name, **options)
        model = AutoModelForSemanticSegmentation.from_pretrained(
            name, use_safetensors=True, trust_remote_code=False, **options)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"segmenter {name!r} (pipeline.mask.segmenter) could not be loaded: {exc} "
            f"(a transformers semantic-segmentation model with safetensors weights is required; "
            f"`{PULL_COMMAND}` fetches it into the model cache)"
        ) from exc
    return LoadedSegmenter(model, processor)
