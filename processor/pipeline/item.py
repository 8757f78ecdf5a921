"""One input through every stage: decode → sidecar → caption → prompt → render (each style, its
background) → encode. ``processor run`` (the worker) and ``processor process`` (local files) both
drive this class, so they make the same files from the same bytes and sidecar.

The worker runs the three steps on three threads: ``prepare`` on the fetch thread (CPU: decode),
``compute`` on the main thread (the GPU), ``encode`` on the upload thread (CPU: PNG encoding),
so that the compute stage never waits for the others. ``__call__`` runs all three in a row.
Every step raises ``ItemError`` for a failure of this input; it never touches the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from processor.config import Settings, with_sources
from processor.errors import InvalidSidecar, ItemError, StyleUnavailable
from processor.manifest import CaptionInfo, Variant
from processor.pipeline.base import DecodedImage, ItemContext, VariantImage
from processor.pipeline.caption import caption_item, caption_used
from processor.pipeline.decode import decode_image
from processor.pipeline.look import InputStyleImage, decode_style_image
from processor.pipeline.outputs import OutputFile, encode_outputs
from processor.pipeline.render import EngineRegistry, one_line, render_many
from processor.pipeline.sidecar import ItemOverrides, load_sidecar_json, validate_overrides

log = logging.getLogger("processor.pipeline")

#: Reads one bucket object for an input (its own style picture): key -> (bytes, ETag).
ObjectReader = Callable[[str], tuple[bytes, str | None]]


@dataclass
class Prepared:
    """An input decoded, with its per-image settings: what ``compute`` needs."""

    decoded: DecodedImage
    #: Its sidecar and metadata, validated (styles, style fields, prompt and where it came from).
    overrides: ItemOverrides
    #: Its own style picture (``overrides.style_image``), read and decoded (``pipeline.look``).
    style_image: InputStyleImage | None = None


@dataclass
class Rendered:
    """Every variant of every style of one input, and how it was captioned."""

    variants: list[VariantImage]
    #: The manifest's caption section; None when no style of this input took a prompt.
    caption: CaptionInfo | None = None


@dataclass(frozen=True)
class Encoded:
    """The files to upload (in order, names relative to the output folder) and their manifest
    entries."""

    files: list[OutputFile]
    variants: list[Variant]
    #: The contact sheet's file name, None when there is none.
    contact_sheet: str | None


class ItemPipeline:
    """The stages of one input, set up once per process. ``captioner`` is the caption stage
    (``processor.pipeline.caption.Captioner``) or None when captions are off."""

    def __init__(self, settings: Settings, registry: EngineRegistry, *, styles: list[str] | None = None,
                 captioner: Any | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.captioner = captioner
        self.styles = styles or list(settings.run.styles)
        #: Why the captioner could not load for an input's own styles (``_caption_on_demand``).
        self._caption_unavailable: str | None = None
        #: Subject masks for the structure score of inputs no background stage masked (lazy).
        self._masker: Any = None
        #: The CLIP similarity scorer (``pipeline.clip_score``), loaded once in ``setup``.
        self._clip: Any = None

    def setup(self) -> None:
        """Load every configured style, and the captioner when one of them uses it; a sidecar that
        picks such a style for one input loads it on first use."""
        # With the still styles the animate styles start from (``image_from``): they run too.
        running = with_sources(self.styles, self.settings.styles)
        self.registry.setup(running)
        if self.settings.pipeline.clip_score is not None:
            self._clip_scorer().setup()
        if self.captioner is not None and caption_used(self.settings.caption, self.settings.styles, running):
            self.captioner.setup()

    def prepare(self, body: bytes, *, name: str, sidecar: bytes | None = None, sidecar_name: str = "",
                metadata: Mapping[str, str] | None = None, timings: dict[str, float] | None = None,
                read_object: ObjectReader | None = None) -> Prepared:
        """Decode and validate the image, then its sidecar and metadata (``InvalidInput`` subclasses).
        The overrides are validated here, before compute: a bad sidecar is a bad input (a failure
        record), never a compute-stage crash that would spend a retry or feed the circuit breaker.
        An input's own style picture is read here too, through ``read_object`` (the worker's
        bounded bucket read: key -> bytes, ETag); without one such an input fails."""
        started = time.perf_counter()
        decoded = decode_image(body, self.settings.pipeline.decode, name=name)
        if timings is not None:
            timings["decode"] = round(time.perf_counter() - started, 4)
        raw = load_sidecar_json(sidecar, sidecar_name or name) if sidecar is not None else None
        where = f"sidecar {sidecar_name}" if raw is not None else f"input {name}"
        overrides = validate_overrides(raw, self.settings, styles=self.styles, metadata=metadata, where=where)
        look = None
        if overrides.style_image is not None:
            if read_object is None:
                raise InvalidSidecar(f"{where}: style_image {overrides.style_image!r} is a bucket key, and this "
                                     "run reads no bucket", hint="Submit the photo to the bucket (processor submit) "
                                     "or drop style_image.")
            started = time.perf_counter()
            data, etag = read_object(overrides.style_image)
            look = decode_style_image(data, overrides.style_image, etag, self.settings.pipeline.decode,
                                      overrides.style_image_from or "sidecar")
            if timings is not None:
                timings["style_image"] = round(time.perf_counter() - started, 4)
        return Prepared(decoded=decoded, overrides=overrides, style_image=look)

    def compute(self, prepared: Prepared, timings: dict[str, float] | None = None, *,
                report: Callable[..., None] | None = None) -> Rendered:
        """Caption, build the prompts and render every style of this input (with its background).
        ``report`` receives the engines' progress (``ItemContext.report``: round k of N, step)."""
        outcome = self.compute_many([prepared], [timings], [report])[0]
        if isinstance(outcome, ItemError):
            raise outcome
        return outcome

    def compute_many(self, prepared: Sequence[Prepared], timings: Sequence[dict[str, float] | None],
                     reports: Sequence[Callable[..., None] | None]) -> list[Rendered | ItemError]:
        """``compute`` for several inputs, in order: each one's ``Rendered`` or its ``ItemError``.
        Each is captioned on its own; those that ask for the same styles are then rendered
        together (``render_many``: where their values let one pipeline serve them, in one call)."""
        outcomes: list[Rendered | ItemError | None] = [None] * len(prepared)
        contexts: dict[int, tuple[ItemContext, CaptionInfo | None]] = {}
        together: dict[tuple[str, ...], list[int]] = {}
        for j, item in enumerate(prepared):
            try:
                contexts[j] = self._context(item, timings[j], reports[j])
            except ItemError as exc:
                outcomes[j] = exc
                continue
            together.setdefault(tuple(item.overrides.styles), []).append(j)
        for styles, members in together.items():
            made = render_many([prepared[j].decoded.image for j in members], list(styles), self.registry,
                               [dict(prepared[j].overrides.style_fields) or None for j in members],
                               [contexts[j][0] for j in members])
            for j, outcome in zip(members, made, strict=True):
                if isinstance(outcome, ItemError):
                    outcomes[j] = outcome
                    continue
                variants, style_timings = outcome
                if timings[j] is not None:
                    timings[j].update(style_timings)  # type: ignore[union-attr]
                outcomes[j] = Rendered(variants=variants, caption=contexts[j][1])
        return [outcome for outcome in outcomes if outcome is not None]

    def _context(self, prepared: Prepared, timings: dict[str, float] | None,
                 report: Callable[..., None] | None) -> tuple[ItemContext, CaptionInfo | None]:
        """The input's caption and per-image prompt, for its styles' engines."""
        chosen = prepared.overrides
        styles = list(chosen.styles)
        image = prepared.decoded.image
        # A per-image prompt replaces the caption (only ``negative`` mode still captions).
        if chosen.own_styles and not (chosen.prompt and self.settings.caption.mode != "negative"):
            self._caption_on_demand(styles)
        context, caption = caption_item(
            self.captioner, image, settings=self.settings.caption, styles=self.settings.styles,
            style_names=styles, sidecar_prompt=chosen.prompt if chosen.prompt_source == "sidecar" else None,
            metadata_prompt=chosen.prompt if chosen.prompt_source == "metadata" else None,
        )
        if timings is not None and caption is not None and caption.seconds:
            timings["caption"] = caption.seconds
        if report is not None:
            context.report = report
        context.style_image = prepared.style_image
        return context, caption

    def _caption_on_demand(self, styles: list[str]) -> None:
        """An input picked a style that takes a caption while the worker's own styles do not, so
        the captioner loads now. If it cannot (a model missing from the cache), that input waits for
        a worker that can (``StyleUnavailable``: the operator's problem, not the photo's), and this
        worker goes on; the reason is kept for the next such input (``caption_unavailable``)."""
        if self.captioner is None or getattr(self.captioner, "ready", True):
            return
        if not caption_used(self.settings.caption, self.settings.styles, styles):
            return
        if self._caption_unavailable is None:
            try:
                self.captioner.setup()
                return
            except Exception as exc:  # noqa: BLE001 - any load failure is this input's, see above
                log.warning("caption_unavailable", extra={"error": type(exc).__name__, "detail": str(exc)})
                self._caption_unavailable = one_line(exc)
        raise StyleUnavailable(
            f"the styles this input asks for ({', '.join(styles)}) take a caption, and the captioner cannot "
            f"load on this worker: {self._caption_unavailable}",
            styles=tuple(styles),
            hint="Operator: add the caption models (`processor models pull`) or the extra the message names, then "
                 "start or restart the worker; the job then runs by itself. A prompt in the sidecar needs no caption.",
        )

    @property
    def caption_unavailable(self) -> str | None:
        """Why the captioner could not load on demand on this worker (None: it did, or was never needed)."""
        return self._caption_unavailable

    def encode(self, prepared: Prepared, rendered: Rendered, *, output_prefix: str = "",
               timings: dict[str, float] | None = None) -> Encoded:
        """The PNGs (with their ``parameters`` text), the clips (MP4 and WebP preview), the subject
        mask and the contact sheet (unless the input's overrides turn it off, ``review_outputs``)."""
        pipeline = self.settings.pipeline
        started = time.perf_counter()
        variants = rendered.variants
        sheet_wanted, structure_wanted = self.review_outputs(prepared.overrides)
        if structure_wanted or pipeline.clip_score is not None:
            self._score(prepared.decoded.image, variants, timings, structure=structure_wanted)
            if self.settings.run.order_variants_by == "structure":
                variants = order_by_structure(variants)
            elif self.settings.run.order_variants_by == "clip":
                variants = order_by_clip(variants)
            started = time.perf_counter()
        files, entries, sheet = encode_outputs(
            prepared.decoded.image, variants, output_prefix=output_prefix,
            sheet_height=pipeline.contact_sheet_height if sheet_wanted else None,
            png_compress_level=pipeline.png_compress_level, sheet_max_pixels=pipeline.contact_sheet_max_pixels,
            video_crf=pipeline.video.crf,
        )
        if timings is not None:
            timings["encode"] = round(time.perf_counter() - started, 4)
        return Encoded(files=files, variants=entries, contact_sheet=sheet)

    def review_outputs(self, overrides: ItemOverrides) -> tuple[bool, bool]:
        """(contact sheet, structure score) for an input: its overrides' choice, else the pipeline
        settings'. Where ``run.order_variants_by`` is ``structure`` the score is always computed:
        it decides which variants come first."""
        pipeline = self.settings.pipeline
        sheet = pipeline.contact_sheet if overrides.contact_sheet is None else overrides.contact_sheet
        structure = pipeline.structure_score if overrides.structure_score is None else overrides.structure_score
        if self.settings.run.order_variants_by == "structure":
            structure = pipeline.structure_score
        return sheet, structure

    def _score(self, photo: Image.Image, variants: list[VariantImage], timings: dict[str, float] | None = None,
               *, structure: bool = True) -> None:
        """Each variant's structure score (and CLIP similarity, ``pipeline.clip_score``), inside the
        subject mask: the one a background stage made, else (``pipeline.structure_mask``) one
        computed here once per input. Without a mask, or with an unusable one (coverage out of
        bounds), the scores cover the whole image, and say so."""
        from processor.pipeline.structure import structure_score

        started = time.perf_counter()
        mask = next((v.mask for v in variants if v.mask is not None), None)
        if mask is None and self.settings.pipeline.structure_mask:
            mask = self._subject_mask(photo)
        if mask is not None and mask.fallback:
            mask = None
        if structure:
            for v in variants:
                v.structure = structure_score(photo, v.image, mask.alpha_at(v.image.size) if mask is not None else None)
            if timings is not None:
                timings["structure"] = round(time.perf_counter() - started, 4)
        if self.settings.pipeline.clip_score is not None:
            started = time.perf_counter()
            scores = self._clip_scorer()(photo, [v.image for v in variants], mask)
            for v, score in zip(variants, scores, strict=True):
                v.clip = score
            if timings is not None:
                timings["clip"] = round(time.perf_counter() - started, 4)

    def _clip_scorer(self) -> Any:
        if self._clip is None:
            from processor.models.loader import ModelLoader
            from processor.pipeline.clipscore import ClipScorer

            assert self.settings.pipeline.clip_score is not None
            self._clip = ClipScorer(self.settings.pipeline.clip_score, ModelLoader(self.settings.models))
        return self._clip

    def _subject_mask(self, photo: Image.Image) -> Any:
        if self._masker is None:
            from processor.models.loader import ModelLoader
            from processor.pipeline.mask import SubjectMasker

            self._masker = SubjectMasker(self.settings.pipeline.mask, ModelLoader(self.settings.models))
        try:
            return self._masker(photo)
        except Exception as exc:  # noqa: BLE001 - a score is worth less than the item: score the whole image
            log.warning("structure_mask_unavailable", extra={"error": type(exc).__name__, "detail": str(exc)})
            return None

    def __call__(self, body: bytes, *, name: str, sidecar: bytes | None = None, sidecar_name: str = "",
                 output_prefix: str = "", timings: dict[str, float] | None = None,
                 ) -> tuple[Prepared, Rendered, Encoded]:
        """All three steps on one input, in a row."""
        prepared = self.prepare(body, name=name, sidecar=sidecar, sidecar_name=sidecar_name, timings=timings)
        rendered = self.compute(prepared, timings)
        return prepared, rendered, self.encode(prepared, rendered, output_prefix=output_prefix, timings=timings)


def order_by_clip(variants: list[VariantImage]) -> list[VariantImage]:
    """Each style's variants most CLIP-similar to the photo first (ties by index); styles keep
    their order."""
    styles = list(dict.fromkeys(v.style for v in variants))
    ranked: list[VariantImage] = []
    for style in styles:
        own = [v for v in variants if v.style == style]
        ranked.extend(sorted(own, key=lambda v: (-(v.clip.similarity if v.clip else -1.0), v.index)))
    return ranked


def order_by_structure(variants: list[VariantImage]) -> list[VariantImage]:
    """Each style's variants best structure score first (ties by index); styles keep their order."""
    styles = list(dict.fromkeys(v.style for v in variants))
    ranked: list[VariantImage] = []
    for style in styles:
        own = [v for v in variants if v.style == style]
        ranked.extend(sorted(own, key=lambda v: (-(v.structure.f1 if v.structure else 0.0), v.index)))
    return ranked
