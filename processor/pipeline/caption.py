"""The caption stage: describe each input with the CLIP Interrogator before its prompt is built.

Contract:

- ``Captioner.setup()`` loads the models once per worker; ``Captioner(image)`` captions one input.
  Any exception on one input becomes ``StageFailed`` (a failure record for that input, never a dead
  worker); a model missing in offline mode is ``ModelUnavailableError`` at setup.
- Modes (``caption.mode``): ``fast``, ``classic``, ``best`` (clip-interrogator's prompt modes),
  ``negative`` (the caption model's caption, plus the CLIP terms least like the image for the
  negative prompt), ``blip`` (the caption model alone), ``none``. ``caption.keep: first-clause``
  keeps the text up to the first comma, as the original notebook did.
- Models are found, fetched and loaded by ``processor.models.caption`` (the BLIP / BLIP-2 / GIT
  caption model) and ``processor.models.clip`` (the open_clip model: ``ARCH/TAG``,
  ``hf-hub:org/repo`` or ``local-dir:/path``), under the same rules as the diffusion weights:
  safetensors only, a pinned revision, no remote code, and nothing fetched in offline mode.
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
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from processor.config import CaptionSettings
from processor.errors import ConfigError, FatalError, ItemError, StageFailed
from processor.manifest import CaptionInfo
from processor.models.caption import ResolvedCaptionModel, clip_used, load_caption_model, require_packages
from processor.models.clip import ResolvedClip, load_open_clip
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
#: Format tag inside each cached table (bump when the layout changes).
TABLE_FORMAT = "toy-cartoonizer/label-table/v1"



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
        return clip_used(self.mode)

    # ----------------------------------------------------------------- setup

    def setup(self) -> None:
        """Load the models and label tables (once; later calls do nothing)."""
        if self.ready or self.mode == "none":
            return
        require_packages(self.mode)
        started = time.perf_counter()
        from clip_interrogator import Config

        from processor.pipeline.interrogator import InjectedInterrogator

        device, dtype = self.models.device(), self.models.dtype()
        config = Config(caption_model_name=None, clip_model_name=self.settings.clip_model, device=device,
                        quiet=True, download_cache=False, cache_path=None, chunk_size=self.settings.chunk_size,
                        caption_max_length=self.settings.max_caption_tokens,
                        caption_offload=self.settings.offload, clip_offload=self.settings.offload)
        self.caption_model, config.caption_model, config.caption_processor = load_caption_model(
            self.settings, self.models, dtype)
        tokenize, tables = None, {}
        if self.uses_clip():
            clip = load_open_clip(self.settings, self.models, device, dtype)
            self.clip, self.clip_identity = clip.resolved, clip.identity
            config.clip_model, config.clip_preprocess, tokenize = clip.model, clip.preprocess, clip.tokenize
            tables = self._tables(config.clip_model, tokenize, device)
        self.interrogator = InjectedInterrogator(config, tokenize=tokenize, tables=tables)
        clip_model = self.settings.clip_model if self.uses_clip() else None
        log.info("captioner_ready", extra={"mode": self.mode, "clip_model": clip_model,
                                           "caption_model": self.settings.caption_model, "device": device,
                                           "seconds": round(time.perf_counter() - started, 3),
                                           "tables": dict(self.table_sources)})

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
