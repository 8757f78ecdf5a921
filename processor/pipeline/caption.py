"""The caption stage: describe each input with the CLIP Interrogator before its prompt is built.

Contract:

- ``Captioner.setup()`` loads the models once per worker; ``Captioner(image)`` captions one input.
  Any exception on one input becomes ``StageFailed`` (a failure record for that input, never a dead
  worker); a model missing in offline mode is ``ModelUnavailableError`` at setup.
- Modes (``caption.mode``): ``fast``, ``classic``, ``best`` (clip-interrogator's prompt modes),
  ``negative`` (the caption model's caption, plus the CLIP terms least like the image for the
  negative prompt), ``blip`` (the caption model alone), ``none``. ``caption.keep: first-clause``
  keeps the text up to the first comma, as the original notebook did.
- Models load under the same rules as the diffusion weights (``processor.models.loader``): safetensors
  only, a pinned revision, no remote code, and nothing fetched in offline mode. The CLIP model is an
  open_clip ``ARCH/TAG`` (weights from the tag's hub repo), ``hf-hub:org/repo`` or
  ``local-dir:/path``; the caption model a BLIP / BLIP-2 / GIT hub id or folder.
- Label tables (CLIP text embeddings of the artist/flavor/medium/movement/trending/negative lists)
  are computed once and cached, never fetched from clip-interrogator's hub mirror. A table's name
  is a hash over the CLIP model's identity (hub commit, or a content hash of a local folder), the
  table and its labels. Lookup order: the local cache directory, then the shared ``LabelCache``
  (the bucket's state prefix, given by the composition root: stages never touch the store), then
  compute, and write both caches. A second worker with an empty local cache downloads the tables.

torch, open_clip, transformers and clip-interrogator are imported in ``setup()`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from processor.config import CaptionSettings
from processor.errors import ConfigError, FatalError, ItemError, ModelUnavailableError, StageFailed
from processor.manifest import CaptionInfo
from processor.models.hub import IGNORE_PATTERNS, PULL_COMMAND, fetch_file, fetch_snapshot, is_local
from processor.models.loader import ModelLoader
from processor.pipeline.base import ItemContext
from processor.pipeline.prompt import clean_text, first_clause, takes_prompt

log = logging.getLogger("processor.caption")

#: Every label table clip-interrogator ranks with.
TABLE_NAMES = ("artists", "flavors", "mediums", "movements", "trendings", "negative")
#: The tables each mode ranks with (computing the 100k flavors costs minutes on a CPU: only what is used).
TABLES_BY_MODE: dict[str, tuple[str, ...]] = {
    "fast": ("artists", "flavors", "mediums", "movements", "trendings"),
    "classic": ("artists", "flavors", "mediums", "movements", "trendings"),
    "best": ("artists", "flavors", "mediums", "movements", "trendings"),
    "negative": ("flavors", "negative"),
    "blip": (),
    "none": (),
}
#: Sites of clip-interrogator 0.6.0's "trending" table (built in its ``load_clip_model``, not a file).
TRENDING_SITES = ("Artstation", "behance", "cg society", "cgsociety", "deviantart", "dribble", "flickr",
                  "instagram", "pexels", "pinterest", "pixabay", "pixiv", "polycount", "reddit",
                  "shutterstock", "tumblr", "unsplash", "zbrush central")
#: Terms clip-interrogator's classic mode appends (its own default).
CLASSIC_FLAVORS = 3
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
#: Files fetched for an ``hf-hub:`` CLIP model.
CLIP_HUB_PATTERNS = ["open_clip_config.json", "open_clip_model.safetensors", "tokenizer*", "*.txt",
                     "special_tokens_map.json", "vocab.json", "merges.txt"]
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
#: Bytes read at a time while hashing a local CLIP folder for its identity.
HASH_BLOCK_BYTES = 8 * 1024 * 1024
#: Format tag inside each cached table (bump when the layout changes).
TABLE_FORMAT = "toy-cartoonizer/label-table/v1"


#: Packages the caption stage imports (all in the ``sd`` extra).
REQUIRED_PACKAGES = ("torch", "open_clip", "transformers", "clip_interrogator")


def missing_packages() -> list[str]:
    import importlib.util

    missing = []
    for name in REQUIRED_PACKAGES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken install
            missing.append(name)
    return missing


def _require_packages(mode: str) -> None:
    missing = missing_packages()
    if missing:
        raise ConfigError(f"caption.mode {mode!r} needs the sd extra (missing: {', '.join(missing)}): "
                          f"pip install -e '.[sd]', or set caption.mode: none")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/toy-cartoonizer/label-tables`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "toy-cartoonizer" / "label-tables"


def caption_used(settings_caption: CaptionSettings, styles: Mapping[str, Any], names: list[str]) -> bool:
    """True when captions are on and one of ``names`` builds a prompt from them."""
    return settings_caption.mode != "none" and any(takes_prompt(styles[n]) for n in names if n in styles)


# --------------------------------------------------------------------------- label-table caches


class LabelCache(Protocol):
    """Named blobs shared between workers (the composition root backs it with the bucket)."""

    def get(self, name: str) -> bytes | None:
        """The blob, or None when there is none (or it cannot be read now)."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Store the blob; failures are the cache's to log, never the caller's problem."""
        ...


class DirectoryCache:
    """A ``LabelCache`` in a local folder; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def get(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("label_cache_unreadable", extra={"path": str(self.root / name), "detail": str(exc)})
            return None

    def put(self, name: str, data: bytes) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".{name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.root / name)
        except OSError as exc:  # a read-only cache only costs recomputation next time
            log.warning("label_cache_unwritable", extra={"path": str(self.root), "detail": str(exc)})


def label_lists(labels_dir: Path | None = None) -> dict[str, list[str]]:
    """The label lists, as clip-interrogator 0.6.0 builds them (artists as "by X" / "inspired by X",
    trending sites as "X", "trending on X", "featured on X", "X contest winner"); a file in
    ``labels_dir`` replaces the package's list of that name."""
    from clip_interrogator import load_list
    from clip_interrogator.clip_interrogator import Config

    package_data = Path(Config.data_path)

    def read(name: str) -> list[str] | None:
        for folder in ([Path(labels_dir)] if labels_dir else []) + [package_data]:
            path = folder / f"{name}.txt"
            if path.is_file():
                return [line for line in load_list(str(path)) if line]
        return None

    lists = {name: read(name) or [] for name in ("flavors", "mediums", "movements", "negative")}
    artists = read("artists") or []
    lists["artists"] = [f"by {a}" for a in artists] + [f"inspired by {a}" for a in artists]
    trendings = read("trendings") if labels_dir and (Path(labels_dir) / "trendings.txt").is_file() else None
    lists["trendings"] = trendings or (list(TRENDING_SITES) + [f"trending on {s}" for s in TRENDING_SITES]
                                       + [f"featured on {s}" for s in TRENDING_SITES]
                                       + [f"{s} contest winner" for s in TRENDING_SITES])
    return lists


def table_name(identity: str, table: str, labels: list[str]) -> str:
    """The cache name of one table: a hash over the CLIP model identity, the table and its labels."""
    digest = hashlib.sha256()
    for part in (TABLE_FORMAT, identity, table, *labels):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return f"{table}-{digest.hexdigest()[:40]}.safetensors"


def encode_table(embeds: Any, identity: str, table: str, count: int) -> bytes:
    from safetensors.numpy import save

    return save({"embeds": embeds}, metadata={"format": TABLE_FORMAT, "clip": identity, "table": table,
                                              "labels": str(count)})


def decode_table(data: bytes, count: int) -> Any | None:
    """The embeddings in ``data`` when they are a float16 table of ``count`` rows, else None."""
    from safetensors.numpy import load

    try:
        embeds = load(data)["embeds"]
    except Exception:  # noqa: BLE001 - any unreadable blob is a cache miss
        return None
    if embeds.ndim != 2 or embeds.shape[0] != count or str(embeds.dtype) != "float16":
        return None
    return embeds


# --------------------------------------------------------------------------- model resolution


@dataclass(frozen=True)
class ResolvedClip:
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


@dataclass(frozen=True)
class ResolvedCaptionModel:
    spec: str
    path: Path
    revision: str | None
    model_type: str


def _snapshot_commit(path: Path) -> str | None:
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


def resolve_clip(settings: CaptionSettings, models: ModelLoader, *, download: bool | None = None) -> ResolvedClip:
    """Where the CLIP model's config and safetensors weights are; fetches them unless offline
    (``download=False`` only looks in the cache)."""
    spec = settings.clip_model
    download = (not models.offline) if download is None else download
    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:"):]).expanduser()
        _check_clip_folder(spec, folder)
        return ResolvedClip(spec, f"local-dir:{folder}", None, folder, None)
    where = spec + (f"@{settings.clip_revision}" if settings.clip_revision else "")
    if spec.startswith("hf-hub:"):
        folder = fetch_snapshot(spec[len("hf-hub:"):], what=f"CLIP model {where}", revision=settings.clip_revision,
                                cache_dir=models.cache_dir, allow_patterns=CLIP_HUB_PATTERNS, download=download,
                                offline=models.offline)
        _check_clip_folder(spec, folder)
        return ResolvedClip(spec, f"local-dir:{folder}", None, folder, folder.name)

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
    return ResolvedClip(spec, arch, weights, None, _snapshot_commit(weights), dict(cfg))


def _check_clip_folder(spec: str, folder: Path) -> None:
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        raise ModelUnavailableError(f"CLIP model {spec!r}: {folder} has no {OPEN_CLIP_CONFIG}")
    if not list(folder.glob("*.safetensors")):
        raise ModelUnavailableError(f"CLIP model {spec!r}: {folder} has no .safetensors weights (pickled "
                                    f"weights are never loaded)")


def resolve_caption_model(settings: CaptionSettings, models: ModelLoader, *,
                          download: bool | None = None) -> ResolvedCaptionModel:
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


def folder_identity(folder: Path) -> str:
    """A content hash of a local CLIP folder's config and safetensors weights."""
    digest = hashlib.sha256()
    for path in [folder / OPEN_CLIP_CONFIG, *sorted(folder.glob("*.safetensors"))]:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(HASH_BLOCK_BYTES):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------- the stage


class Captioner:
    """The caption stage (see the module docstring). ``remote`` is the shared label cache."""

    def __init__(self, settings: CaptionSettings, models: ModelLoader, remote: LabelCache | None = None) -> None:
        self.settings = settings
        self.models = models
        self.local = DirectoryCache(settings.cache_dir or default_cache_dir())
        self.remote = remote
        self.interrogator: Any = None
        self.clip: ResolvedClip | None = None
        self.caption_model: ResolvedCaptionModel | None = None
        self.clip_identity: str | None = None
        #: Label tables by where they came from: ``computed``, ``local``, ``shared``.
        self.table_sources: Counter = Counter()
        self._label_sets: dict[str, frozenset[str]] = {}

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def ready(self) -> bool:
        return self.interrogator is not None

    def uses_clip(self) -> bool:
        return bool(TABLES_BY_MODE[self.mode])

    # ----------------------------------------------------------------- setup

    def setup(self) -> None:
        """Load the models and label tables (once; later calls do nothing)."""
        if self.ready or self.mode == "none":
            return
        _require_packages(self.mode)
        started = time.perf_counter()
        from clip_interrogator import Config

        from processor.pipeline.interrogator import InjectedInterrogator

        device, dtype = self.models.device(), self.models.dtype()
        config = Config(caption_model_name=None, clip_model_name=self.settings.clip_model, device=device,
                        quiet=True, download_cache=False, cache_path=None, chunk_size=self.settings.chunk_size,
                        caption_max_length=self.settings.max_caption_tokens,
                        caption_offload=self.settings.offload, clip_offload=self.settings.offload)
        config.caption_model, config.caption_processor = self._load_caption_model(dtype)
        tokenize, tables = None, {}
        if self.uses_clip():
            config.clip_model, config.clip_preprocess, tokenize = self._load_clip(device, dtype)
            tables = self._tables(config.clip_model, tokenize, device)
        self.interrogator = InjectedInterrogator(config, tokenize=tokenize, tables=tables)
        clip_model = self.settings.clip_model if self.uses_clip() else None
        log.info("captioner_ready", extra={"mode": self.mode, "clip_model": clip_model,
                                           "caption_model": self.settings.caption_model, "device": device,
                                           "seconds": round(time.perf_counter() - started, 3),
                                           "tables": dict(self.table_sources)})

    def _load_caption_model(self, dtype: Any) -> tuple[Any, Any]:
        import torch
        from transformers import (
            AutoModelForCausalLM,
            AutoProcessor,
            Blip2ForConditionalGeneration,
            BlipForConditionalGeneration,
        )

        resolved = resolve_caption_model(self.settings, self.models)
        self.caption_model = resolved
        # Any: AutoModelForCausalLM is a factory, not a PreTrainedModel; all three have from_pretrained.
        classes: dict[str, Any] = {
            "blip": BlipForConditionalGeneration, "blip-2": Blip2ForConditionalGeneration, "git": AutoModelForCausalLM}
        cls = classes[resolved.model_type]
        # GIT in float32, BLIP / BLIP-2 in the worker's dtype: as clip-interrogator loads them.
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
        return model, processor

    def _load_clip(self, device: str, dtype: Any) -> tuple[Any, Any, Any]:
        import open_clip
        import torch

        resolved = resolve_clip(self.settings, self.models)
        self.clip = resolved
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
            self.clip_identity = f"{resolved.spec}@{resolved.revision}"
        else:
            # No revision: a local folder (ARCH/TAG weights always come from a hub snapshot).
            assert resolved.folder is not None
            started = time.perf_counter()
            self.clip_identity = f"local:{folder_identity(resolved.folder)}"
            log.info("clip_identity", extra={"model": resolved.spec, "identity": self.clip_identity,
                                             "seconds": round(time.perf_counter() - started, 3)})
        return model, preprocess, tokenize

    def _tables(self, clip_model: Any, tokenize: Any, device: str) -> dict[str, tuple[list[str], Any]]:
        from processor.pipeline.interrogator import encode_labels

        lists = label_lists(self.settings.labels_dir)
        tables = {}
        for table in TABLES_BY_MODE[self.mode]:
            labels = lists[table]
            if not labels:
                raise ConfigError(f"caption: the {table} label list is empty (caption.labels_dir)")
            name = table_name(self.clip_identity or self.settings.clip_model, table, labels)
            started = time.perf_counter()
            embeds, source = None, None
            for source, cache in (("local", self.local), ("shared", self.remote)):
                data = cache.get(name) if cache is not None else None
                embeds = decode_table(data, len(labels)) if data is not None else None
                if data is not None and embeds is None:
                    log.warning("label_table_invalid", extra={"table": table, "blob": name, "cache": source})
                if embeds is not None:
                    break
            if embeds is None:
                source = "computed"
                embeds = encode_labels(clip_model, tokenize, labels, device, self.settings.chunk_size)
                blob = encode_table(embeds, self.clip_identity or "", table, len(labels))
                self.local.put(name, blob)
                if self.remote is not None:
                    self.remote.put(name, blob)
            elif source == "shared" and data is not None:
                self.local.put(name, data)  # the next start on this machine reads it locally
            self.table_sources[source] += 1
            self._label_sets[table] = frozenset(labels)
            log.info("label_table", extra={"table": table, "source": source, "labels": len(labels), "blob": name,
                                           "seconds": round(time.perf_counter() - started, 3)})
            tables[table] = (labels, embeds)
        return tables

    # ----------------------------------------------------------------- per item

    def __call__(self, image: Image.Image, *, replaced_by: str | None = None) -> CaptionInfo:
        """Caption one input: the manifest's ``caption`` section. With ``replaced_by`` (a per-image
        prompt exists), only ``negative`` mode still runs, for its negative terms."""
        if self.mode == "none" or (replaced_by and self.mode != "negative"):
            return self._info(replaced_by)
        if not self.ready:
            self.setup()
        result = self._info(replaced_by)
        started = time.perf_counter()
        try:
            self._interrogate(image.convert("RGB"), result)
        except (ItemError, FatalError):
            raise
        except Exception as exc:  # a model fault on this input: fail the item, keep the worker
            log.exception("stage_failed", extra={"stage": "caption", "mode": self.mode})
            raise StageFailed(f"caption ({self.mode}) failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if self.settings.offload and self.interrogator is not None:
                self.interrogator.offload()
        result.seconds = round(time.perf_counter() - started, 4)
        return result

    def _flavor_cap(self, *tables: str) -> int:
        """``caption.max_flavors``, bounded so that clip-interrogator's chain (one label added per
        step, from the top ``flavor_intermediate_count`` distinct labels) never runs out of labels."""
        distinct = len(frozenset().union(*(self._label_sets.get(t, frozenset()) for t in tables)))
        pool = min(distinct, self.interrogator.config.flavor_intermediate_count)
        return max(1, min(self.settings.max_flavors, pool - 1))

    def _info(self, replaced_by: str | None) -> CaptionInfo:
        """An empty caption record naming the models and revisions loaded now."""
        return CaptionInfo(
            mode=self.mode,
            replaced_by=replaced_by,
            keep=self.settings.keep,
            clip_model=self.settings.clip_model if self.uses_clip() else None,
            clip_revision=self.clip.revision if self.clip else None,
            caption_model=self.settings.caption_model,
            caption_revision=self.caption_model.revision if self.caption_model else None,
        )

    def _interrogate(self, image: Image.Image, result: CaptionInfo) -> None:
        from processor.pipeline.interrogator import quiet_autocast

        ci, mode = self.interrogator, self.mode
        with quiet_autocast():
            if mode == "negative":
                flavors = self._flavor_cap("flavors", "negative")
                result.negative = clean_text(ci.interrogate_negative(image, max_flavors=flavors))
                if result.replaced_by:
                    return
                result.raw = ci.generate_caption(image)
            elif mode == "blip":
                result.raw = ci.generate_caption(image)
            elif mode == "fast":
                result.raw = ci.interrogate_fast(image, max_flavors=self.settings.max_flavors)
            elif mode == "classic":
                result.raw = ci.interrogate_classic(image, max_flavors=CLASSIC_FLAVORS)
            elif mode == "best":
                result.raw = ci.interrogate(image, max_flavors=self._flavor_cap(*TABLES_BY_MODE["best"]))
        text = clean_text(result.raw)
        result.text = first_clause(text) if self.settings.keep == "first-clause" else text

    # ----------------------------------------------------------------- reporting

    def availability(self) -> list[tuple[str, str, bool, str]]:
        """(role, model, available, detail) for ``processor doctor``: looks in the cache only.
        Raises ``ConfigError`` when the packages the stage needs are not installed."""
        _require_packages(self.mode)
        rows = []
        # Each check resolves to a different record type (ResolvedCaptionModel, ResolvedClip); only
        # its location is read, through getattr.
        checks: list[tuple[str, str, Callable[[], object]]] = [
            ("caption model", self.settings.caption_model,
             lambda: resolve_caption_model(self.settings, self.models, download=False))]
        if self.uses_clip():
            checks.insert(0, ("clip model", self.settings.clip_model,
                              lambda: resolve_clip(self.settings, self.models, download=False)))
        for role, model, check in checks:
            try:
                resolved = check()
                where = (getattr(resolved, "path", None) or getattr(resolved, "weights", None)
                         or getattr(resolved, "folder", ""))
                rows.append((role, model, True, str(where)))
            except (ModelUnavailableError, ConfigError) as exc:
                rows.append((role, model, False, str(exc)))
        return rows

    def pull(self) -> list[tuple[str, str]]:
        """Fetch the configured caption models into the cache (``processor models pull``)."""
        if self.models.offline:
            raise ConfigError("cannot pull caption models: offline mode is on (models.offline / HF_HUB_OFFLINE)")
        caption = resolve_caption_model(self.settings, self.models, download=True)
        pulled = [(self.settings.caption_model, str(caption.path))]
        if self.uses_clip():
            clip = resolve_clip(self.settings, self.models, download=True)
            pulled.insert(0, (self.settings.clip_model, str(clip.weights or clip.folder)))
        return pulled


#: The object metadata key of a per-image prompt (``x-amz-meta-prompt`` on S3).
PROMPT_METADATA_KEY = "prompt"


def metadata_prompt(metadata: Mapping[str, str] | None) -> str | None:
    """The ``x-amz-meta-prompt`` value of an input, if any (S3 lower-cases metadata names), with
    RFC 2047 encoded words decoded (``processor.pipeline.sidecar.metadata_text``)."""
    from processor.pipeline.sidecar import metadata_text

    value = metadata_text(metadata, PROMPT_METADATA_KEY)
    return value if clean_text(value) else None


def caption_item(
    captioner: Captioner | None,
    image: Image.Image,
    *,
    settings: CaptionSettings,
    styles: Mapping[str, Any],
    style_names: list[str],
    sidecar_prompt: str | None = None,
    metadata_prompt: str | None = None,
) -> tuple[ItemContext, CaptionInfo | None]:
    """Run the caption stage for one input: the context its styles build prompts from, and the
    caption the manifest records (None when no style of this input takes a prompt or captions are
    off). A sidecar prompt, else the metadata prompt, replaces the caption."""
    prompt, source = None, None
    for text, where in ((sidecar_prompt, "sidecar"), (metadata_prompt, "metadata")):
        if clean_text(text):
            prompt, source = text, where
            break
    caption = None
    if captioner is not None and caption_used(settings, styles, style_names):
        caption = captioner(image, replaced_by=source)
    context = ItemContext(caption=caption.text if caption else None, prompt=prompt, prompt_source=source,
                          negative_terms=caption.negative if caption else None, template=settings.template)
    return context, caption
