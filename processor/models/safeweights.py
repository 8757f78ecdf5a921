"""Safetensors weights for every pipeline component: the check, the one-time conversion, the plan.

Contract:

- ``missing_safetensors(folder, index)`` names the weight-bearing components of a diffusers
  pipeline folder (UNet, VAE, text encoders, ...; not tokenizers, schedulers, feature extractors or
  the skipped safety checker) that have no ``*.safetensors`` file. ``processor.models.loader`` calls it
  on every resolved folder; a gap is a ``ModelUnavailableError`` built by ``unsafe_weights_error``
  that names the model, the revision, the components and both fixes.
- ``convert_pickle_weights`` (``processor models pull --convert-pickle`` only; the worker never
  calls it) converts such components once: it loads each ``*.bin`` with PyTorch's restricted
  unpickler (``torch.load(..., weights_only=True)``: tensors and plain containers only, no code),
  refuses anything that is not a flat ``{name: tensor}`` mapping, and writes ``*.safetensors`` into
  ``<cache>/processor-converted/<org>--<name>/<commit>/`` next to links to the snapshot's config
  files, with ``processor-conversion.json`` recording each source file's sha256.
  ``processor.models.loader`` then loads that folder (``use_safetensors=True``, as always) whenever the
  snapshot itself lacks safetensors.
- ``hub_plan`` / ``cache_plan`` / ``format_plans`` answer ``models pull --dry-run``: which files a
  pull fetches (and their sizes) from hub metadata, or, offline, what the cache already holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from processor.errors import ModelUnavailableError
from processor.models.hub import SKIPPED_COMPONENTS

log = logging.getLogger("processor.safeweights")

#: Folder under the model cache that holds converted pipelines (never written by huggingface_hub).
CONVERTED_DIR = "processor-converted"
#: The conversion record written into each converted folder.
RECORD_NAME = "processor-conversion.json"
#: Version of the record's layout.
RECORD_VERSION = 1
#: Class-name endings of components that carry no weights (configs and vocabularies only).
WEIGHTLESS_CLASS_SUFFIXES = ("Scheduler", "Tokenizer", "TokenizerFast", "FeatureExtractor", "ImageProcessor",
                             "Processor")
#: Safetensors files we never load (variants of the same weights; the full-precision file is loaded and cast).
IGNORED_WEIGHT_PATTERNS = ("*.fp16.safetensors", "*.bf16.safetensors", "*non_ema*", "*.ema.safetensors")
#: The pickle weights a conversion reads: diffusers' and transformers' default names, optionally sharded.
PICKLE_WEIGHTS = re.compile(r"^(diffusion_pytorch_model|pytorch_model)(-\d{5}-of-\d{5})?\.bin$")
#: ``allow_patterns`` (per component folder) that fetch those pickle weights for a conversion.
PICKLE_PATTERNS = ("diffusion_pytorch_model*.bin", "pytorch_model*.bin")
#: What each pickle name becomes (transformers calls its safetensors file ``model``).
SAFETENSORS_STEM = {"diffusion_pytorch_model": "diffusion_pytorch_model", "pytorch_model": "model"}
#: Bytes read at a time when hashing a weights file.
HASH_CHUNK_BYTES = 8 * 1024 * 1024
#: How the Hub's conversion bot signs its pull requests (``refs/pr/N`` branches with safetensors).
CONVERSION_BOT = "SFconvertbot"
#: The command that converts, named in every "no safetensors" message.
CONVERT_COMMAND = "processor models pull --convert-pickle"


# --------------------------------------------------------------------------- the check


def weight_components(index: dict[str, Any]) -> list[str]:
    """Components of ``model_index.json`` that carry weights, in index order."""
    names = []
    for name, value in index.items():
        if name.startswith("_") or name in SKIPPED_COMPONENTS:
            continue
        if not (isinstance(value, list) and len(value) == 2 and value[0] is not None and value[1] is not None):
            continue  # a flag (requires_safety_checker) or an absent component ([null, null])
        if str(value[1]).endswith(WEIGHTLESS_CLASS_SUFFIXES):
            continue
        names.append(name)
    return names


def _loadable_safetensors(name: str) -> bool:
    return name.endswith(".safetensors") and not any(fnmatch(name, p) for p in IGNORED_WEIGHT_PATTERNS)


def missing_safetensors(folder: Path, index: dict[str, Any]) -> list[str]:
    """Weight-bearing components of the pipeline in ``folder`` without a loadable ``*.safetensors``."""
    missing = []
    for name in weight_components(index):
        part = folder / name
        if not (part.is_dir() and any(_loadable_safetensors(p.name) for p in part.iterdir())):
            missing.append(name)
    return missing


def pickle_files(folder: Path) -> list[Path]:
    """The pickle weights files of one component folder (variants such as ``*.fp16.bin`` excluded)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PICKLE_WEIGHTS.match(p.name))


def unsafe_weights_error(model: str, revision: str | None, commit: str | None, missing: list[str], folder: Path,
                         *, local: bool = False, hints: list[str] | None = None) -> ModelUnavailableError:
    """The ``ModelUnavailableError`` for a pipeline whose ``missing`` components lack safetensors."""
    found = sorted({p.name for c in missing for p in pickle_files(folder / c)})
    what = f"pickle weights only ({', '.join(found)})" if found else "no safetensors weights"
    if local:
        return ModelUnavailableError(
            f"model {model!r}: {folder} has {what} for component(s) {', '.join(missing)}; this processor loads "
            f"safetensors only and never unpickles. Save the pipeline with safetensors (diffusers "
            f"save_pretrained(..., safe_serialization=True), in a trusted environment), or configure its hub id "
            f"and convert once with `{CONVERT_COMMAND}`"
        )
    at = f"@{revision}" if revision else "@main"
    pinned = f" (commit {commit})" if commit else ""
    extra = "".join(f"\n  - {hint}" for hint in hints or [])
    return ModelUnavailableError(
        f"model {model}{at}{pinned} has {what} for component(s) {', '.join(missing)}; this processor loads "
        f"safetensors only and never unpickles. Either:\n"
        f"  1. pin `revision:` in the style to a branch or commit that has safetensors. For many older repos "
        f"the Hub's {CONVERSION_BOT} opened a conversion as a pull request, loadable as `revision: refs/pr/<N>` "
        f"(see https://huggingface.co/{model}/discussions?type=pull_request); or\n"
        f"  2. convert once, outside the worker: `{CONVERT_COMMAND}` (or models.convert_pickle: true) loads the "
        f"*.bin files with PyTorch's restricted unpickler (weights_only=True, no code runs) and writes safetensors "
        f"into the model cache under {CONVERTED_DIR}/, which workers then load.{extra}"
    )


def conversion_pull_requests(model: str) -> list[str]:
    """The Hub's safetensors conversion pull requests for ``model`` (``refs/pr/N: title``), newest
    first; empty when the Hub cannot be asked. Network only; used to enrich ``models pull`` errors."""
    try:
        from huggingface_hub import HfApi

        found = []
        for discussion in HfApi().get_repo_discussions(model, author=CONVERSION_BOT, discussion_type="pull_request"):
            found.append(f"revision: {discussion.git_reference}  ({discussion.status}: {discussion.title})")
        return found
    except Exception as exc:  # noqa: BLE001 - a hint only: any failure to ask leaves the generic advice
        log.debug("conversion_prs_unavailable", extra={"model": model, "error": repr(exc)})
        return []


# --------------------------------------------------------------------------- converted folders


def cache_root(cache_dir: str | None) -> Path:
    """The model cache folder (``models.cache_dir``, else huggingface_hub's default)."""
    if cache_dir:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def converted_folder(cache_dir: str | None, model: str, commit: str) -> Path:
    """Where the converted pipeline of ``model`` at ``commit`` lives."""
    return cache_root(cache_dir) / CONVERTED_DIR / model.replace("/", "--") / commit


def usable_conversion(cache_dir: str | None, model: str, commit: str, index: dict[str, Any]) -> Path | None:
    """The converted folder for ``model`` at ``commit`` when it is complete, else None."""
    folder = converted_folder(cache_dir, model, commit)
    record = folder / RECORD_NAME
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("commit") != commit or data.get("model") != model or missing_safetensors(folder, index):
        return None
    return folder


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _load_restricted(path: Path) -> Any:
    """One pickle weights file, through PyTorch's restricted unpickler."""
    import torch

    # The project's one pickle load (tests/unit/test_security_static.py allows exactly this call).
    # Safe because weights_only=True swaps in PyTorch's restricted unpickler: it rebuilds only
    # tensors, storages and plain containers/numbers from an allowlist and raises
    # UnpicklingError on any other global (os.system, a __reduce__ trap), so no code from the file
    # runs. It runs only in `processor models pull --convert-pickle`, never in the worker.
    return torch.load(path, map_location="cpu", weights_only=True)


def _state_dict(path: Path, shown: str) -> dict[str, Any]:
    import torch

    try:
        loaded = _load_restricted(path)
    except Exception as exc:  # anything the restricted unpickler will not rebuild is refused, whatever the type
        raise ModelUnavailableError(
            f"refused to convert {shown}: it is not a plain tensor file (PyTorch's restricted unpickler, "
            f"weights_only=True, rejected it: {type(exc).__name__}: {_reason(exc)}). Nothing from it was run; "
            f"do not load it with weights_only=False. Use a revision with safetensors instead"
        ) from exc
    if not isinstance(loaded, dict) or not loaded or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelUnavailableError(
            f"refused to convert {shown}: expected a flat mapping of parameter names to tensors, got "
            f"{type(loaded).__name__}; use a revision with safetensors instead"
        )
    return loaded


def _reason(exc: Exception) -> str:
    """The line of a ``torch.load`` error that says what was rejected (PyTorch's message opens with
    advice to retry with ``weights_only=False``, which is exactly what must not be done here)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    # Keep the sentences that name what was rejected ("Unsupported global: GLOBAL os.system ...",
    # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"); drop the
    # advice around them, whose order and wording change between PyTorch releases.
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]
    kept = [s for s in sentences if not ADVICE.search(s)]
    return (" ".join(kept) if kept else sentences[0] if sentences else type(exc).__name__).rstrip(".")


#: Sentences of a ``torch.load`` error that advise rather than say what was rejected.
ADVICE = re.compile(r"weights_only|Weights only load failed|Please use|Check the documentation|trusted source|"
                    r"add_safe_globals|safe_globals", re.IGNORECASE)


def _write_safetensors(tensors: dict[str, Any], path: Path) -> int:
    """Write ``tensors`` as safetensors (tensors sharing memory are copied apart); returns the count."""
    from safetensors.torch import save_file

    out, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():  # tied weights: safetensors stores each tensor once
            tensor = tensor.clone()
        seen.add(pointer)
        out[name] = tensor
    # transformers refuses safetensors files whose metadata does not say they hold PyTorch tensors.
    save_file(out, str(path), metadata={"format": "pt"})
    return len(out)


def _safetensors_name(pickle_name: str) -> str:
    match = PICKLE_WEIGHTS.match(pickle_name)
    assert match is not None
    return f"{SAFETENSORS_STEM[match.group(1)]}{match.group(2) or ''}.safetensors"


def _link(source: Path, target: Path) -> None:
    """A relative link to ``source``'s real file (a blob in the HF cache), so the cache volume
    can be mounted anywhere; a copy where links are not possible."""
    real = source.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(os.path.relpath(real, target.parent))
    except OSError:
        shutil.copy2(real, target)


def convert_components(snapshot: Path, index: dict[str, Any], missing: list[str], target: Path, *, model: str,
                       revision: str | None, commit: str) -> dict[str, Any]:
    """Build ``target``: links to every non-pickle file of ``snapshot``, and safetensors converted
    from the pickle weights of the ``missing`` components. Written to a temporary sibling and
    renamed, so a folder that exists is complete. Returns the conversion record."""
    import torch

    work = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    record: dict[str, Any] = {
        "version": RECORD_VERSION, "model": model, "revision": revision, "commit": commit,
        "loader": "torch.load(map_location='cpu', weights_only=True)", "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "components": {},
    }
    try:
        for path in sorted(snapshot.rglob("*")):
            relative = path.relative_to(snapshot)
            if path.is_dir() or PICKLE_WEIGHTS.match(path.name) or path.name.endswith(".bin.index.json"):
                continue
            if path.suffix == ".bin" or path.suffix in (".ckpt", ".pt", ".pth", ".pkl"):
                continue  # other pickles (variants) are neither converted nor offered to the loader
            _link(path, work / relative)
        for component in missing:
            sources = pickle_files(snapshot / component)
            if not sources:
                raise ModelUnavailableError(
                    f"model {model} (commit {commit}): component {component!r} has neither safetensors nor pickle "
                    f"weights ({PICKLE_WEIGHTS.pattern}) in {snapshot / component}; nothing to convert"
                )
            entries = []
            for source in sources:
                shown = f"{model}@{commit}/{component}/{source.name}"
                output = work / component / _safetensors_name(source.name)
                source_sha = sha256_file(source)
                tensors = _state_dict(source, shown)
                count = _write_safetensors(tensors, output)
                del tensors
                entries.append({"source": f"{component}/{source.name}", "source_sha256": source_sha,
                                "source_bytes": source.stat().st_size, "output": f"{component}/{output.name}",
                                "output_sha256": sha256_file(output), "tensors": count})
                log.info("weights_converted", extra={"model": model, "commit": commit, "file": entries[-1]["source"],
                                                     "tensors": count})
            shard_index = snapshot / component / next(
                (p.name for p in (snapshot / component).iterdir() if p.name.endswith(".bin.index.json")), "-")
            if shard_index.is_file():
                data = json.loads(shard_index.read_text(encoding="utf-8"))
                data["weight_map"] = {k: _safetensors_name(v) for k, v in data.get("weight_map", {}).items()}
                match = PICKLE_WEIGHTS.match(sources[0].name)
                assert match is not None  # sources were picked by this pattern
                stem = SAFETENSORS_STEM[match.group(1)]
                (work / component / f"{stem}.safetensors.index.json").write_text(json.dumps(data, indent=2))
            record["components"][component] = entries
        (work / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return record


def convert_state_dict_file(source: Path, output: Path, *, model: str, commit: str | None,
                            shown: str) -> dict[str, Any]:
    """One single-file pickle state dict (a ControlNet preprocessor's ``.pth``, for ``processor
    models pull``) as safetensors at ``output``, through the same restricted unpickler, with its
    record beside it (``<output>.json``). Written to a temporary name and renamed, so an
    ``output`` that exists is complete. Returns the record."""
    import torch

    source_sha = sha256_file(source)
    tensors = _state_dict(source, shown)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        count = _write_safetensors(tensors, partial)
        record = {"version": RECORD_VERSION, "model": model, "commit": commit, "source": source.name,
                  "source_sha256": source_sha, "source_bytes": source.stat().st_size, "output": output.name,
                  "output_sha256": sha256_file(partial), "tensors": count,
                  "loader": "torch.load(map_location='cpu', weights_only=True)", "torch": torch.__version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        output.with_name(output.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
        os.replace(partial, output)  # the weights last: the record never names a missing file
    finally:
        partial.unlink(missing_ok=True)
    log.info("weights_converted", extra={"model": model, "commit": commit, "file": source.name, "tensors": count})
    return record


# --------------------------------------------------------------------------- dry-run plans


def _human(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{size} B"  # not reached


@dataclass
class PullPlan:
    """What ``models pull`` fetches for one model (``source`` hub), or what the cache holds (cache)."""

    model: str
    revision: str | None
    #: ``hub`` (from hub metadata, nothing downloaded) or ``cache`` (offline: what is cached).
    source: str
    commit: str | None = None
    #: (path in the repo, bytes) fetched by a plain pull / already in the cache.
    files: list[tuple[str, int | None]] = field(default_factory=list)
    #: Weight-bearing components without safetensors.
    missing: list[str] = field(default_factory=list)
    #: (path, bytes) of the pickle weights ``--convert-pickle`` would fetch and convert.
    pickles: list[tuple[str, int | None]] = field(default_factory=list)
    #: A complete converted folder already in the cache.
    converted: Path | None = None
    #: Why there is no listing (not cached offline, the Hub refused, ...).
    problem: str | None = None

    @property
    def total(self) -> int:
        return sum(size or 0 for _, size in self.files)

    def loads(self, convert: bool) -> bool:
        """Whether a pull (with ``convert``) would leave a model the worker can load."""
        if self.problem:
            return False
        return not self.missing or self.converted is not None or (convert and bool(self.pickles))


def plan_from_listing(model: str, revision: str | None, source: str, commit: str | None, index: dict[str, Any],
                      listing: Mapping[str, int | None], allow: list[str], ignore: list[str]) -> PullPlan:
    """The plan for one pipeline given every file of its repo (or snapshot) and its size."""
    from huggingface_hub.utils import filter_repo_objects

    files = sorted(filter_repo_objects(listing, allow_patterns=allow, ignore_patterns=ignore))
    plan = PullPlan(model, revision, source, commit, files=[(f, listing[f]) for f in files])
    for component in weight_components(index):
        names = [f.split("/", 1)[1] for f in files if f.startswith(f"{component}/") and "/" not in f.split("/", 1)[1]]
        if not any(_loadable_safetensors(n) for n in names):
            plan.missing.append(component)
            plan.pickles += [(f, listing[f]) for f in sorted(listing)
                             if f.startswith(f"{component}/") and PICKLE_WEIGHTS.match(f.split("/", 1)[1])
                             and "/" not in f.split("/", 1)[1]]
    return plan


def hub_plan(model: str, revision: str | None, cache_dir: str | None, allow_for, ignore: list[str]) -> PullPlan:
    """The plan from hub metadata (``model_info(files_metadata=True)``); reads ``model_index.json``
    (under 1 KiB) and no weights. Needs the network: not exercised by the offline tests."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi().model_info(model, revision=revision, files_metadata=True)
        index = json.loads(Path(hf_hub_download(model, "model_index.json", revision=info.sha,
                                                cache_dir=cache_dir)).read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any Hub failure becomes the plan's problem line, not a traceback
        return PullPlan(model, revision, "hub", problem=f"the Hub did not answer: {type(exc).__name__}: {exc}")
    listing = {s.rfilename: s.size for s in info.siblings or []}
    plan = plan_from_listing(model, revision, "hub", info.sha, index, listing, allow_for(index), ignore)
    if info.sha:
        plan.converted = usable_conversion(cache_dir, model, info.sha, index)
    return plan


def cache_plan(model: str, revision: str | None, cache_dir: str | None, allow_for, ignore: list[str]) -> PullPlan:
    """The plan from the local cache only (offline): what a worker would find there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(model, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return PullPlan(model, revision, "cache",
                        problem="not in the cache; `processor models pull` on a machine with network access fetches it")
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return PullPlan(model, revision, "cache", folder.name, problem=f"{folder} has no model_index.json")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    listing = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    plan = plan_from_listing(model, revision, "cache", folder.name, index, listing, allow_for(index), ignore)
    plan.converted = usable_conversion(cache_dir, model, folder.name, index)
    return plan


def format_plans(plans: list[PullPlan], *, convert: bool) -> str:
    """The ``models pull --dry-run`` report: per model its files and sizes and a total, then a grand total."""
    lines: list[str] = []
    grand = 0
    for plan in plans:
        at = f"@{plan.revision}" if plan.revision else ""
        where = "from the Hub" if plan.source == "hub" else "offline: looked up in the local cache"
        commit = f" commit {plan.commit}" if plan.commit else ""
        lines.append(f"{plan.model}{at}{commit} ({where})")
        if plan.problem:
            lines.append(f"  {plan.problem}")
            continue
        verb = "would fetch" if plan.source == "hub" else "cached"
        width = max((len(f) for f, _ in plan.files + plan.pickles), default=0)
        for name, size in plan.files:
            lines.append(f"  {name:<{width}}  {_human(size):>12}")
        lines.append(f"  {verb}: {len(plan.files)} file(s), {_human(plan.total)} ({plan.total:,} bytes)")
        grand += plan.total
        if plan.missing:
            lines.append(f"  no safetensors for: {', '.join(plan.missing)}")
            if plan.converted is not None:
                lines.append(f"  converted safetensors already in the cache: {plan.converted}")
            elif convert and plan.pickles:
                size = sum(s or 0 for _, s in plan.pickles)
                fetched = "would fetch and convert" if plan.source == "hub" else "would convert (cached)"
                for name, psize in plan.pickles:
                    lines.append(f"  {name:<{width}}  {_human(psize):>12}  (pickle, weights_only conversion)")
                lines.append(f"  --convert-pickle {fetched}: {len(plan.pickles)} file(s), {_human(size)}; writes "
                             f"about as much again as safetensors under {CONVERTED_DIR}/")
                if plan.source == "hub":
                    grand += size
            else:
                pickles = f" (pickle files: {', '.join(f for f, _ in plan.pickles)})" if plan.pickles else ""
                lines.append(f"  a pull would FAIL{pickles}: pin `revision:` to a commit or refs/pr/<N> with "
                             f"safetensors, or run `{CONVERT_COMMAND}`")
    label = "would fetch" if any(p.source == "hub" for p in plans) else "cached"
    lines.append(f"total ({label}): {_human(grand)} ({grand:,} bytes)")
    return "\n".join(lines)
