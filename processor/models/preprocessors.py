"""Where a ControlNet preprocessor's weights are (``styles.<name>.control[].preprocessor``).

Contract:

- depth: a transformers depth-estimation folder (``config.json`` + ``*.safetensors``, and the
  image processor's ``preprocessor_config.json``), local or a hub id fetched like every model
  (``*.safetensors`` / ``*.json`` only; offline: the cache or ``ModelUnavailableError`` naming the
  pull command).
- lineart / softedge: one state-dict file (``weight_name``, default per type from
  ``DEFAULT_PREPROCESSOR_WEIGHTS``). A ``.safetensors`` file (local, in a local folder, or in a hub
  repo) is used as is. The published annotator weights (``lllyasviel/Annotators``:
  ``sk_model.pth``, ``ControlNetHED.pth``) are pickles, and no safetensors copy is published by
  their authors, so ``processor models pull`` fetches the ``.pth`` and converts it once with
  PyTorch's restricted unpickler (``safeweights.convert_state_dict_file``: tensors only, no code
  runs) into ``<cache>/processor-converted/<org>--<name>/<commit>/<stem>.safetensors``. The worker
  only ever reads that safetensors file: it never downloads nor unpickles the ``.pth``, and
  without the conversion it stops at start naming ``processor models pull``.
- Loading: ``load_depth_model`` opens a depth folder (safetensors only, no remote code, nothing
  from the network); ``load_state_dict`` loads a lineart / softedge safetensors file into the
  stage's network (``processor.pipeline.control_preprocess``), refusing weights of another network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processor.config import DEFAULT_PREPROCESSOR_WEIGHTS, PreprocessorSettings
from processor.errors import ModelUnavailableError
from processor.models import safeweights
from processor.models.hub import PULL_COMMAND, fetch_file, fetch_snapshot, is_local

#: Files fetched for a depth model given as a hub id (one transformers model folder).
DEPTH_PATTERNS = ["*.safetensors", "*.json"]
#: Variant duplicates of a depth model's weights (the full-precision file is loaded).
DEPTH_IGNORE = ["*.fp16.safetensors", "*.bf16.safetensors"]
#: Suffixes of pickle weights files that ``processor models pull`` converts (never loaded as they are).
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class ResolvedPreprocessor:
    """Where a configured preprocessor's weights are on disk, and which commit they are."""

    #: As configured: hub id or path.
    model: str
    #: depth: the model folder; lineart / softedge: the safetensors file.
    path: Path
    #: The hub commit, or None for a local file or folder.
    revision: str | None
    #: True when ``path`` was converted here from the repo's pickle (recorded in the manifest).
    converted: bool = False


def weight_name(kind: str, settings: PreprocessorSettings) -> str:
    """The weights file of a lineart / softedge preprocessor."""
    return settings.weight_name or DEFAULT_PREPROCESSOR_WEIGHTS[kind]


def _what(kind: str, settings: PreprocessorSettings) -> str:
    return f"{kind} preprocessor {settings.model}" + (f"@{settings.revision}" if settings.revision else "")


def converted_file(cache_dir: str | None, model: str, commit: str, name: str) -> Path:
    """Where the safetensors conversion of hub file ``name`` of ``model`` at ``commit`` lives."""
    return safeweights.converted_folder(cache_dir, model, commit) / (Path(name).stem + ".safetensors")


def resolve(kind: str, settings: PreprocessorSettings, *, cache_dir: str | None, offline: bool,
            download: bool) -> ResolvedPreprocessor:
    """The local weights of ``settings`` for a ``kind`` map (see the module docstring). A hub
    depth model is fetched when ``download``; a hub pickle is only looked up, converted."""
    if kind == "depth":
        return _resolve_depth(settings, cache_dir=cache_dir, offline=offline, download=download)
    name = weight_name(kind, settings)
    if is_local(settings.model) or Path(settings.model).expanduser().is_file():
        path = Path(settings.model).expanduser()
        if path.is_dir():
            path = path / name
        if not path.is_file():
            raise ModelUnavailableError(f"{_what(kind, settings)}: no weights file {path} (set "
                                        f"control.preprocessor.weight_name to the .safetensors file in the folder)")
        if path.suffix != ".safetensors":
            raise ModelUnavailableError(
                f"{_what(kind, settings)}: {path.name} is not safetensors and pickles are never loaded; give "
                f"the hub repo that publishes it (`{PULL_COMMAND}` converts it once, without running code) "
                f"or a .safetensors copy")
        return ResolvedPreprocessor(settings.model, path, None)
    if not name.endswith(PICKLE_SUFFIXES):
        path = fetch_file(settings.model, name, what=_what(kind, settings), revision=settings.revision,
                          cache_dir=cache_dir, download=download, offline=offline)
        return ResolvedPreprocessor(settings.model, path, _commit_of(path, name))
    # A pickle: only its conversion is ever loaded. The snapshot folder (made by the pull) names
    # the commit; it is looked up in the cache only, so the worker never fetches the pickle.
    folder = fetch_snapshot(settings.model, what=_what(kind, settings), revision=settings.revision,
                            cache_dir=cache_dir, allow_patterns=[name], download=False, offline=offline)
    target = converted_file(cache_dir, settings.model, folder.name, name)
    if not target.is_file():
        raise ModelUnavailableError(
            f"{_what(kind, settings)}: {name} is a pickle and its safetensors conversion is not in the cache "
            f"({target}); run `{PULL_COMMAND}` (same config and models.cache_dir), which converts it once with "
            f"PyTorch's restricted unpickler")
    return ResolvedPreprocessor(settings.model, target, folder.name, converted=True)


def pull(kind: str, settings: PreprocessorSettings, *, cache_dir: str | None, offline: bool) -> ResolvedPreprocessor:
    """``processor models pull``: fetch the preprocessor (from the cache only when offline) and
    convert a pickle weights file to safetensors once (``safeweights.convert_state_dict_file``)."""
    name = weight_name(kind, settings) if kind != "depth" else ""
    if kind == "depth" or is_local(settings.model) or not name.endswith(PICKLE_SUFFIXES):
        return resolve(kind, settings, cache_dir=cache_dir, offline=offline, download=not offline)
    source = fetch_file(settings.model, name, what=_what(kind, settings), revision=settings.revision,
                        cache_dir=cache_dir, download=not offline, offline=offline)
    commit = _commit_of(source, name)
    if commit is None:
        raise ModelUnavailableError(f"{_what(kind, settings)}: {source} is not in a hub snapshot folder")
    target = converted_file(cache_dir, settings.model, commit, name)
    if not target.is_file():
        safeweights.convert_state_dict_file(source, target, model=settings.model, commit=commit,
                                            shown=f"{settings.model}@{commit}/{name}")
    return resolve(kind, settings, cache_dir=cache_dir, offline=offline, download=False)


def _resolve_depth(settings: PreprocessorSettings, *, cache_dir: str | None, offline: bool,
                   download: bool) -> ResolvedPreprocessor:
    what = _what("depth", settings)
    if is_local(settings.model):
        path, commit = Path(settings.model).expanduser(), None
    else:
        path = fetch_snapshot(settings.model, what=what, revision=settings.revision, cache_dir=cache_dir,
                              allow_patterns=DEPTH_PATTERNS, ignore_patterns=DEPTH_IGNORE, download=download,
                              offline=offline)
        commit = path.name
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(f"{what}: {path} has no config.json (a transformers depth-estimation model "
                                    f"folder is needed, e.g. depth-anything/Depth-Anything-V2-Small-hf)")
    if not any(path.glob("*.safetensors")):
        raise ModelUnavailableError(f"{what}: no *.safetensors in {path}; pick a revision that publishes "
                                    f"safetensors (pickle weights are never loaded)")
    return ResolvedPreprocessor(settings.model, path, commit)


def _commit_of(path: Path, name: str) -> str | None:
    """The commit of a file in a hub snapshot (``.../snapshots/<commit>/<name>``)."""
    parts = path.parts
    depth = len(Path(name).parts)
    if len(parts) > depth + 1 and parts[-depth - 2] == "snapshots":
        return parts[-depth - 1]
    return None


def configured_preprocessors(styles: dict[str, Any]) -> list[tuple[str, PreprocessorSettings]]:
    """(map type, preprocessor) of every style's ControlNets that have one, each once, in config order."""
    seen: list[tuple[str, PreprocessorSettings]] = []
    for style in styles.values():
        for control in style.addons().control:
            if control.preprocessor is not None and (control.type, control.preprocessor) not in seen:
                seen.append((control.type, control.preprocessor))
    return seen


@dataclass(frozen=True)
class LoadedDepthModel:
    """A transformers depth-estimation model, as loaded, and its image processor."""

    model: Any
    processor: Any


def load_depth_model(resolved: ResolvedPreprocessor) -> LoadedDepthModel:
    """The depth model in ``resolved.path`` (a folder ``resolve`` checked)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    try:
        model = AutoModelForDepthEstimation.from_pretrained(resolved.path, use_safetensors=True,
                                                            local_files_only=True, trust_remote_code=False)
        processor = AutoImageProcessor.from_pretrained(resolved.path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"depth preprocessor {resolved.model!r} could not be loaded from "
                                    f"{resolved.path}: {exc}") from exc
    return LoadedDepthModel(model, processor)


def load_state_dict(net: Any, resolved: ResolvedPreprocessor, kind: str, network: str) -> None:
    """Load ``resolved``'s safetensors into the torch module ``net``, every parameter and no other:
    a file of another network is refused naming what is missing or extra (``network`` says what
    ``net`` is, in that message)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(resolved.path))
    except (OSError, SafetensorError) as exc:
        raise ModelUnavailableError(f"{kind} preprocessor {resolved.model!r}: {resolved.path} is not a readable "
                                    f"safetensors file: {exc}") from exc
    expected = net.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    extra = sorted(tensors.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & tensors.keys() if tensors[k].shape != expected[k].shape)
    if missing or extra or wrong:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        details = "; ".join(part for part in (f"missing {some(missing)}" if missing else "",
                                              f"unexpected {some(extra)}" if extra else "",
                                              f"wrong shape {some(wrong)}" if wrong else "") if part)
        raise ModelUnavailableError(
            f"{kind} preprocessor {resolved.model!r}: {resolved.path.name} does not hold {network}: "
            f"{details}; set control.preprocessor to weights of that network (or fix control.type)")
    net.load_state_dict(tensors, strict=True)
