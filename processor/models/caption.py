"""Where the caption stage's models are, and how they load: the caption model (BLIP, BLIP-2 or
GIT, ``caption.caption_model``) and, for the modes that rank CLIP terms, the open_clip model
(``processor.models.clip``).

Contract:

- ``resolve_caption_model`` finds the model folder (a local folder, a clip-interrogator short
  name such as ``blip-large``, or a hub id fetched into the model cache when ``download``) and
  checks it is a transformers BLIP / BLIP-2 / GIT model with safetensors weights.
- ``load_caption_model`` fetches unless offline and loads it under the weights rule (safetensors
  only, no remote code, nothing from the network at load time).
- ``caption_availability`` says, without loading or fetching anything, whether each model a mode
  needs is in the cache (``processor doctor``).
- ``missing_packages`` names the ``sd`` extra's packages the stage needs and lacks; every caller
  turns it into the same ``ConfigError`` (``require_packages``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from processor.config import CaptionSettings
from processor.errors import ConfigError, ModelUnavailableError
from processor.models.clip import resolve_open_clip
from processor.models.hub import IGNORE_PATTERNS, PULL_COMMAND, fetch_snapshot, is_local

if TYPE_CHECKING:
    from processor.models.loader import ModelLoader

log = logging.getLogger("processor.models")

#: clip-interrogator's short caption-model names and the hub ids they stand for (its CAPTION_MODELS).
CAPTION_MODEL_NAMES = {
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
    "blip2-2.7b": "Salesforce/blip2-opt-2.7b",
    "blip2-flan-t5-xl": "Salesforce/blip2-flan-t5-xl",
    "git-large-coco": "microsoft/git-large-coco",
}
#: transformers ``model_type`` values we can caption with.
CAPTION_MODEL_TYPES = ("blip", "blip-2", "git")
#: Files fetched for a caption model: weights (safetensors only), configs, vocabularies.
CAPTION_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model"]
#: Caption modes that rank CLIP terms, and so load the open_clip model (clip-interrogator's prompt
#: modes, and ``negative`` for its negative terms); ``blip`` uses the caption model alone.
CLIP_MODES = frozenset({"fast", "classic", "best", "negative"})
#: Packages the caption stage imports (all in the ``sd`` extra).
REQUIRED_PACKAGES = ("torch", "open_clip", "transformers", "clip_interrogator")


@dataclass(frozen=True)
class ResolvedCaptionModel:
    """Where the caption model is, which commit, and which transformers architecture."""

    spec: str
    path: Path
    revision: str | None
    model_type: str


@dataclass(frozen=True)
class ModelAvailability:
    """One of ``doctor``'s caption rows: whether a model is in the cache, and where or why not."""

    #: ``clip model`` or ``caption model``.
    role: str
    #: As configured.
    model: str
    available: bool
    #: Where it is, or what is missing and the fix.
    detail: str


def clip_used(mode: str) -> bool:
    """Whether caption mode ``mode`` loads the open_clip model."""
    return mode in CLIP_MODES


def missing_packages() -> list[str]:
    """The packages of ``REQUIRED_PACKAGES`` that cannot be imported here."""
    import importlib.util

    missing = []
    for name in REQUIRED_PACKAGES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken install
            missing.append(name)
    return missing


def require_packages(mode: str) -> None:
    """Raise ``ConfigError`` naming the fix when the caption stage's packages are missing."""
    missing = missing_packages()
    if missing:
        raise ConfigError(f"caption.mode {mode!r} needs the sd extra (missing: {', '.join(missing)}): "
                          f"pip install -e '.[sd]', or set caption.mode: none")


def resolve_caption_model(settings: CaptionSettings, models: ModelLoader, *,
                          download: bool | None = None) -> ResolvedCaptionModel:
    """The caption model's folder, checked; fetched unless offline (``download=False``: the cache only)."""
    spec = CAPTION_MODEL_NAMES.get(settings.caption_model, settings.caption_model)
    download = (not models.offline) if download is None else download
    where = spec + (f"@{settings.caption_revision}" if settings.caption_revision else "")
    if is_local(spec):
        path, revision = Path(spec).expanduser(), None
    else:
        path = fetch_snapshot(spec, what=f"caption model {where}", revision=settings.caption_revision,
                              cache_dir=models.cache_dir, allow_patterns=CAPTION_PATTERNS,
                              ignore_patterns=IGNORE_PATTERNS, download=download, offline=models.offline)
        revision = path.name
    config = path / "config.json"
    if not config.is_file():
        raise ModelUnavailableError(f"caption model {where}: {path} has no config.json (not a transformers model)")
    if not list(path.glob("*.safetensors")):
        raise ModelUnavailableError(f"caption model {where}: {path} has no .safetensors weights (pickled weights "
                                    f"are never loaded)")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
    if model_type not in CAPTION_MODEL_TYPES:
        raise ConfigError(f"caption.caption_model {settings.caption_model!r} is a {model_type or 'unknown'!r} model; "
                          f"captioning takes BLIP, BLIP-2 or GIT ({', '.join(CAPTION_MODEL_TYPES)})")
    return ResolvedCaptionModel(settings.caption_model, path, revision, model_type)


def _dtype_keyword() -> str:
    """transformers 4.56 renamed ``torch_dtype`` to ``dtype`` (5.x warns on the old name); older
    ones pass an unknown ``dtype`` into the model config and load float32 silently."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_caption_model(settings: CaptionSettings, models: ModelLoader,
                       dtype: Any) -> tuple[ResolvedCaptionModel, Any, Any]:
    """(where it came from, the model in eval mode, its processor). GIT loads in float32, BLIP /
    BLIP-2 in ``dtype``, as clip-interrogator loads them."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoProcessor,
        Blip2ForConditionalGeneration,
        BlipForConditionalGeneration,
    )

    resolved = resolve_caption_model(settings, models)
    # Any: AutoModelForCausalLM is a factory, not a PreTrainedModel; all three have from_pretrained.
    classes: dict[str, Any] = {
        "blip": BlipForConditionalGeneration, "blip-2": Blip2ForConditionalGeneration, "git": AutoModelForCausalLM}
    cls = classes[resolved.model_type]
    model_dtype = torch.float32 if resolved.model_type == "git" else dtype
    dtype_option: dict[str, Any] = {_dtype_keyword(): model_dtype}  # `dtype` or `torch_dtype`, by version
    log.info("model_loading", extra={"model": resolved.spec, "revision": resolved.revision, "role": "caption"})
    try:
        model = cls.from_pretrained(resolved.path, use_safetensors=True, trust_remote_code=False,
                                    local_files_only=True, **dtype_option)
        processor = AutoProcessor.from_pretrained(resolved.path, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"caption model {resolved.spec!r} could not be loaded from {resolved.path}: "
            f"{exc} (safetensors weights are required; `{PULL_COMMAND}` fetches them)") from exc
    model.eval()
    return resolved, model, processor


def caption_availability(settings: CaptionSettings, models: ModelLoader) -> list[ModelAvailability]:
    """Whether each model ``settings.mode`` needs is in the cache (looks only; loads nothing).
    Raises ``ConfigError`` when the packages the stage needs are not installed."""
    require_packages(settings.mode)
    checks: list[tuple[str, str, Callable[[], Path]]] = [
        ("caption model", settings.caption_model,
         lambda: resolve_caption_model(settings, models, download=False).path)]
    if clip_used(settings.mode):
        checks.insert(0, ("clip model", settings.clip_model,
                          lambda: resolve_open_clip(settings, models, download=False).location))
    rows = []
    for role, model, locate in checks:
        try:
            rows.append(ModelAvailability(role, model, True, str(locate())))
        except (ModelUnavailableError, ConfigError) as exc:
            rows.append(ModelAvailability(role, model, False, str(exc)))
    return rows
