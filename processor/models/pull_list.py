"""Every model beside the diffusion pipelines that ``processor models pull`` fetches: caption
models, the CLIP scorer, hub LoRAs (``lora``, ``lcm``), IP-Adapters and their image encoders,
ControlNets, ControlNet preprocessors, the segmenter.

Contract: ``addon_models`` is the one list. ``models pull`` calls each entry's ``fetch(True)``;
``models pull --dry-run`` and ``processor doctor`` call ``fetch(False)``, which looks in the cache
only and raises ``ModelUnavailableError`` (or ``ConfigError``) saying what is missing and the fix.
So what a pull fetches, what a dry run lists and what doctor checks cannot drift apart. Local
folders and ``bucket:`` keys are not listed: there is nothing to fetch. (The diffusion pipelines
are ``configured_models``, at the end: their dry run is planned file by file in ``safeweights``.)
Each entry resolves through the module that owns its weights (``caption``, ``clip``,
``segmenters``, ``preprocessors``, ``ip_adapter``, ``loader``), the same code the stages load
through; nothing here imports a pipeline stage. The caption models are listed with
``captions=True`` (``doctor`` checks them in its own rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from processor.config import (
    CaptionSettings,
    ClipScoreSettings,
    LoraSettings,
    MaskSettings,
    PreprocessorSettings,
    Settings,
    StyleBase,
)
from processor.models.hub import fetch_snapshot, is_local


class Role(str, Enum):
    """What an add-on model is for (the first word of its pull, dry-run and doctor lines)."""

    CAPTION_CLIP = "caption clip model"
    CAPTION = "caption caption model"
    CLIP_SCORE = "clip score"
    LORA = "lora"
    LCM_LORA = "lcm lora"
    IP_ADAPTER = "ip-adapter"
    CONTROLNET = "controlnet"
    PREPROCESSOR = "preprocessor"
    SEGMENTER = "segmenter"


@dataclass(frozen=True)
class Fetched:
    """Where an entry's files are on disk."""

    path: str
    #: The hub commit the files are at, when known.
    commit: str | None = None
    #: Said after the path ("converted from pickle").
    note: str = ""


@dataclass(frozen=True)
class AddonModel:
    """One hub model ``models pull`` fetches besides the diffusion pipelines."""

    role: Role
    model: str
    revision: str | None
    #: The styles that use it (empty: every style, or a pipeline-wide stage).
    styles: tuple[str, ...]
    #: ``fetch(download)``: fetch (True) or look in the cache only (False); raises ``ModelUnavailableError``.
    fetch: Callable[[bool], Fetched]
    #: The preprocessor's map type (``depth``, ``lineart``, ``softedge``), else "".
    kind: str = ""
    #: The file(s) inside the repo, where the config names them (LoRAs, preprocessors, IP-Adapters):
    #: two entries differing only in these are two downloads.
    weight_name: str | None = None
    #: What runs in its place when it is missing (the segmenter: GrabCut), so that its absence is
    #: worth a warning, never a failure; "" when nothing does.
    fallback: str = ""

    @property
    def label(self) -> str:
        """``lineart preprocessor``, ``controlnet``, ... as the lines print it."""
        return f"{self.kind} {self.role.value}" if self.kind else self.role.value

    @property
    def shown(self) -> str:
        """``model@revision`` as configured."""
        return self.model + (f"@{self.revision}" if self.revision else "")


def _hub_lora(lora: LoraSettings, loader: Any) -> Callable[[bool], Fetched]:
    from processor.models.loader import LORA_PATTERNS

    def fetch(download: bool) -> Fetched:
        if download:
            path = loader.resolve_lora(lora)
        else:
            what = f"LoRA {lora.path!r}" + (f" at revision {lora.revision!r}" if lora.revision else "")
            path = fetch_snapshot(lora.path, what=what, revision=lora.revision, cache_dir=loader.cache_dir,
                                  allow_patterns=LORA_PATTERNS, download=False, offline=loader.offline)
        return Fetched(str(path), path.name)

    return fetch


def _is_hub_lora(path: str) -> bool:
    from processor.models.loader import is_bucket

    return not is_local(path) and not is_bucket(path) and not Path(path).expanduser().is_file()


def _ip_adapter(settings: Any, loader: Any) -> Callable[[bool], Fetched]:
    def fetch(download: bool) -> Fetched:
        from processor.models.ip_adapter import resolve_files

        files = resolve_files(loader, settings, download=download)
        return Fetched(f"{files.weights} (image encoder {files.encoder})", files.revision)

    return fetch


def _controlnet(model: str, revision: str | None, loader: Any) -> Callable[[bool], Fetched]:
    def fetch(download: bool) -> Fetched:
        resolved = loader.resolve_controlnet(model, revision, download=download)
        return Fetched(str(resolved.path), resolved.revision)

    return fetch


def _preprocessor(kind: str, settings: PreprocessorSettings, loader: Any) -> Callable[[bool], Fetched]:
    def fetch(download: bool) -> Fetched:
        from processor.models import preprocessors

        if download:
            made = preprocessors.pull(kind, settings, cache_dir=loader.cache_dir, offline=loader.offline)
        else:
            made = preprocessors.resolve(kind, settings, cache_dir=loader.cache_dir, offline=loader.offline,
                                         download=False)
        return Fetched(str(made.path), made.revision, " (converted from pickle)" if made.converted else "")

    return fetch


def _clip_score(settings: ClipScoreSettings, loader: Any) -> Callable[[bool], Fetched]:
    def fetch(download: bool) -> Fetched:
        from processor.models.clip import resolve_clip_scorer

        found = resolve_clip_scorer(settings, loader.cache_dir, download=download, offline=loader.offline)
        return Fetched(str(found.path), found.revision)

    return fetch


def _caption(caption: CaptionSettings, loader: Any, clip: bool) -> Callable[[bool], Fetched]:
    def fetch(download: bool) -> Fetched:
        from processor.models.caption import require_packages, resolve_caption_model
        from processor.models.clip import resolve_open_clip

        require_packages(caption.mode)  # the resolvers import open_clip / transformers
        if clip:
            return Fetched(str(resolve_open_clip(caption, loader, download=download).location))
        model = resolve_caption_model(caption, loader, download=download)
        return Fetched(str(model.path), model.revision)

    return fetch


def _segmenter(mask: MaskSettings, cache_dir: str | None, offline: bool) -> Callable[[bool], Fetched]:
    def fetch(download: bool) -> Fetched:
        from processor.models.segmenters import resolve_onnx, resolve_semantic_segmenter

        if mask.onnx is not None:
            found = resolve_onnx(mask.onnx, cache_dir, download=download)
        else:
            found = resolve_semantic_segmenter(mask, cache_dir, download=download, offline=offline)
        return Fetched(str(found.path), found.revision)

    return fetch


def addon_models(settings: Settings, loader: Any, *, captions: bool = False) -> list[AddonModel]:
    """Every hub model besides the diffusion pipelines that the configuration loads, each once, in
    the order ``models pull`` fetches them. ``loader`` is the ``ModelLoader``; ``captions`` adds
    the caption stage's models (when ``caption.mode`` is not ``none``)."""
    from processor.models import preprocessors
    from processor.models.caption import clip_used
    from processor.models.clip import LOCAL_DIR
    from processor.models.ip_adapter import encoder_source
    from processor.models.segmenters import is_local_onnx

    found: list[AddonModel] = []

    def add(entry: AddonModel) -> None:
        same = (entry.role, entry.kind, entry.model, entry.revision, entry.weight_name)
        for i, known in enumerate(found):
            if (known.role, known.kind, known.model, known.revision, known.weight_name) == same:
                styles = known.styles + tuple(s for s in entry.styles if s not in known.styles)
                found[i] = replace(known, styles=styles)
                return
        found.append(entry)

    caption = settings.caption
    if captions and caption.mode != "none":
        if clip_used(caption.mode) and not caption.clip_model.startswith(LOCAL_DIR):
            add(AddonModel(Role.CAPTION_CLIP, caption.clip_model, None, (), _caption(caption, loader, clip=True)))
        if not is_local(caption.caption_model):
            add(AddonModel(Role.CAPTION, caption.caption_model, caption.caption_revision, (),
                           _caption(caption, loader, clip=False)))
    clip = settings.pipeline.clip_score
    if clip is not None and not is_local(clip.model):
        add(AddonModel(Role.CLIP_SCORE, clip.model, clip.revision, (), _clip_score(clip, loader)))
    for name, style in settings.styles.items():
        lora, lcm, ip_adapter = style.addons().lora, style.addons().lcm, style.addons().ip_adapter
        if lora is not None and _is_hub_lora(lora.path):
            add(AddonModel(Role.LORA, lora.path, lora.revision, (name,), _hub_lora(lora, loader),
                           weight_name=lora.weight_name))
        if lcm is not None and _is_hub_lora(lcm.lora):
            lcm_lora = lcm.as_lora()
            add(AddonModel(Role.LCM_LORA, lcm.lora, lcm_lora.revision, (name,), _hub_lora(lcm_lora, loader),
                           weight_name=lcm.weight_name))
        if ip_adapter is not None and not (is_local(ip_adapter.model) and is_local(encoder_source(ip_adapter)[0])):
            files = "/".join(p for p in (ip_adapter.subfolder, ip_adapter.weight_name) if p)
            encoder = "/".join(str(x) for x in encoder_source(ip_adapter))
            add(AddonModel(Role.IP_ADAPTER, ip_adapter.model, ip_adapter.revision, (name,),
                           _ip_adapter(ip_adapter, loader), weight_name=f"{files} (image encoder {encoder})"))
    for name, style in settings.styles.items():
        for control in style.addons().control:
            if not is_local(control.model):
                add(AddonModel(Role.CONTROLNET, control.model, control.revision, (name,),
                               _controlnet(control.model, control.revision, loader)))
    for name, style in settings.styles.items():
        for kind, preprocessor in preprocessors.configured_preprocessors({name: style}):
            if not (is_local(preprocessor.model) or Path(preprocessor.model).expanduser().is_file()):
                add(AddonModel(Role.PREPROCESSOR, preprocessor.model, preprocessor.revision, (name,),
                               _preprocessor(kind, preprocessor, loader), kind, preprocessor.weight_name))
    mask = settings.pipeline.mask
    onnx = mask.onnx
    if onnx is not None:
        if not is_local_onnx(onnx.model):
            add(AddonModel(Role.SEGMENTER, onnx.model, onnx.revision, (),
                           _segmenter(mask, loader.cache_dir, loader.offline),
                           fallback="GrabCut makes the masks, and each records why"))
    elif mask.segmenter and not is_local(mask.segmenter):
        add(AddonModel(Role.SEGMENTER, mask.segmenter, mask.segmenter_revision, (),
                       _segmenter(mask, loader.cache_dir, loader.offline)))
    return found


#: Roles of the weights that are whole diffusion pipelines (``models pull`` fetches them as such).
PIPELINE_ROLES = frozenset({"model", "refiner", "background"})


def configured_models(styles: Mapping[str, StyleBase]) -> list[tuple[str, str | None]]:
    """(model, revision) of every diffusion pipeline the styles load (their models, refiners and
    background models), each once, in config order."""
    seen: list[tuple[str, str | None]] = []
    for style in styles.values():
        for use in style.weights():
            if use.role in PIPELINE_ROLES and (use.ref.model, use.ref.revision) not in seen:
                seen.append((use.ref.model, use.ref.revision))
    return seen


def configured_controlnets(styles: Mapping[str, StyleBase]) -> list[tuple[str, str | None]]:
    """(model, revision) of every style's ControlNets, each once, in config order."""
    seen: list[tuple[str, str | None]] = []
    for style in styles.values():
        for control in style.addons().control:
            if (control.model, control.revision) not in seen:
                seen.append((control.model, control.revision))
    return seen
