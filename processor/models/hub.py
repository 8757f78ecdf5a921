"""Hugging Face Hub fetches: every stage that needs hub files (diffusion pipelines, LoRAs, the
caption models, the segmenter) gets them through ``fetch_snapshot`` / ``fetch_file``.

Contract: ``download=False`` looks in the cache only. A file missing from the cache then raises
``ModelUnavailableError`` naming ``processor models pull`` (and offline mode when it is on); any
other hub or file-system failure raises ``ModelUnavailableError`` saying what could not be fetched.
What to fetch is the caller's (``allow_patterns``): safetensors only, never pickles, unless the
caller is the ``--convert-pickle`` conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processor.errors import ModelUnavailableError

#: The command that fills the cache; named in every "model missing" message.
PULL_COMMAND = "processor models pull"
#: Components a pipeline folder may list that we never load (the NSFW classifier: 1.2 GB, and it
#: blanks false positives; toy photos do not need it).
SKIPPED_COMPONENTS = frozenset({"safety_checker"})
#: File types fetched for each component: weights (safetensors only), configs, tokenizer vocabularies.
COMPONENT_FILE_PATTERNS = ("*.safetensors", "*.json", "*.txt")
#: Variant duplicates of the same weights (we load the full-precision file and cast).
IGNORE_PATTERNS = ["*.fp16.safetensors", "*.bf16.safetensors", "*non_ema*", "*.ema.safetensors",
                   # the same variants in pickle form, never fetched for a ``--convert-pickle`` conversion
                   "*.fp16.bin", "*.bf16.bin", "*.ema.bin"]


@dataclass(frozen=True)
class ResolvedPath:
    """A model's file or folder on disk, and the hub commit it is (None: a local path)."""

    path: Path
    revision: str | None


def is_local(model: str) -> bool:
    """A path (absolute, ./relative, ~ or an existing folder) rather than a hub id."""
    return model.startswith((".", "/", "~")) or Path(model).expanduser().is_dir()


def component_patterns(model_index: dict[str, Any]) -> list[str]:
    """``allow_patterns`` for a pipeline: its index and each loaded component's weights/configs."""
    patterns = ["model_index.json"]
    for name, value in model_index.items():
        if name.startswith("_") or name in SKIPPED_COMPONENTS:
            continue
        if isinstance(value, list) and len(value) == 2 and value[0] is not None:
            patterns.extend(f"{name}/{pattern}" for pattern in COMPONENT_FILE_PATTERNS)
    return patterns


def not_cached(what: str, cache_dir: str | None, *, offline: bool, download: bool = False) -> ModelUnavailableError:
    """The error for ``what`` missing from the cache: huggingface_hub raises the same error when it
    may not go online and when it tried and could not reach the Hub, and the fix differs, so say which."""
    where = cache_dir or "the default Hugging Face cache ($HF_HOME/hub)"
    if download:
        why = (" and the Hugging Face Hub could not be reached to download it (no network, a proxy, or "
               "HF_ENDPOINT pointing elsewhere)")
    elif offline:
        why = " and offline mode is on (models.offline / HF_HUB_OFFLINE=1)"
    else:
        why = ""
    return ModelUnavailableError(
        f"{what} is not in the model cache ({where}){why}; fetch it first with `{PULL_COMMAND}` "
        f"(same config and models.cache_dir) on a machine with network access"
    )


def fetch_snapshot(repo: str, *, what: str, revision: str | None = None, cache_dir: str | None = None,
                   allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None,
                   download: bool = True, offline: bool = False) -> Path:
    """The cached snapshot folder of hub repo ``repo`` at ``revision`` (its commit is the folder
    name), fetching the files ``allow_patterns`` names first when ``download``. ``what`` names the
    thing in messages ("model org/repo@rev"); ``offline`` says whether offline mode is why."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns,
                                      ignore_patterns=ignore_patterns, local_files_only=not download))
    except LocalEntryNotFoundError as exc:
        raise not_cached(what, cache_dir, offline=offline, download=download) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{what} could not be fetched: {type(exc).__name__}: {exc}") from exc


def fetch_file(repo: str, filename: str, *, what: str, revision: str | None = None, cache_dir: str | None = None,
               download: bool = True, offline: bool = False) -> Path:
    """One file of hub repo ``repo`` from the cache (fetched first when ``download``); errors as
    ``fetch_snapshot``'s."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=not download))
    except LocalEntryNotFoundError as exc:
        raise not_cached(what, cache_dir, offline=offline, download=download) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{what} could not be fetched: {type(exc).__name__}: {exc}") from exc
