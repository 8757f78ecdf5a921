"""One input through every stage: decode → sidecar → caption → prompt → render (each style, its
background) → encode. ``processor run`` (the worker) and ``processor process`` (local files) both
drive this class, so they make the same files from the same bytes and sidecar.

The worker runs the three steps on three threads: ``prepare`` on the fetch thread (CPU: decode),
``compute`` on the main thread (the GPU), ``encode`` on the upload thread (CPU: PNG encoding),
so that the compute stage never waits for the others. ``__call__`` runs all three in a row.
Every step raises ``ItemError`` for a failure of this input; it never touches the store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from processor.config import Settings
from processor.manifest import CaptionInfo, Variant
from processor.pipeline.outputs import OutputFile, encode_outputs
from processor.pipeline.base import DecodedImage, VariantImage
from processor.pipeline.caption import caption_item, caption_used, metadata_prompt
from processor.pipeline.decode import decode_image
from processor.pipeline.render import EngineRegistry, render
from processor.pipeline.sidecar import Sidecar, parse_sidecar


@dataclass
class Prepared:
    """An input decoded, with its per-image settings: what ``compute`` needs."""

    decoded: DecodedImage
    sidecar: Sidecar | None = None
    #: ``x-amz-meta-prompt`` of the input: replaces its caption (after a sidecar prompt).
    metadata_prompt: str | None = None


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

    def setup(self) -> None:
        """Load every configured style, and the captioner when one of them uses it; a sidecar that
        picks such a style for one input loads it on first use."""
        self.registry.setup(self.styles)
        if self.captioner is not None and caption_used(self.settings.caption, self.settings.styles, self.styles):
            self.captioner.setup()

    def prepare(self, body: bytes, *, name: str, sidecar: bytes | None = None, sidecar_name: str = "",
                metadata: Mapping[str, str] | None = None, timings: dict[str, float] | None = None) -> Prepared:
        """Decode and validate the image, then parse its sidecar (``InvalidInput`` subclasses)."""
        started = time.perf_counter()
        decoded = decode_image(body, self.settings.pipeline.decode, name=name)
        if timings is not None:
            timings["decode"] = round(time.perf_counter() - started, 4)
        parsed = parse_sidecar(sidecar, sidecar_name or name) if sidecar is not None else None
        return Prepared(decoded=decoded, sidecar=parsed, metadata_prompt=metadata_prompt(metadata))

    def compute(self, prepared: Prepared, timings: dict[str, float] | None = None) -> Rendered:
        """Caption, build the prompts and render every style of this input (with its background)."""
        sidecar = prepared.sidecar
        styles = sidecar.styles if sidecar and sidecar.styles else self.styles
        overrides = sidecar.style_overrides() if sidecar else None
        image = prepared.decoded.image
        context, caption = caption_item(
            self.captioner, image, settings=self.settings.caption, styles=self.settings.styles,
            style_names=styles, sidecar_prompt=sidecar.prompt if sidecar else None,
            metadata_prompt=prepared.metadata_prompt,
        )
        if timings is not None and caption is not None and caption.seconds:
            timings["caption"] = caption.seconds
        variants, style_timings = render(image, styles, self.registry, overrides, context)
        if timings is not None:
            timings.update(style_timings)
        return Rendered(variants=variants, caption=caption)

    def encode(self, prepared: Prepared, rendered: Rendered, *, output_prefix: str = "",
               timings: dict[str, float] | None = None) -> Encoded:
        """The PNGs (with their ``parameters`` text), the subject mask and the contact sheet."""
        pipeline = self.settings.pipeline
        started = time.perf_counter()
        files, entries, sheet = encode_outputs(
            prepared.decoded.image, rendered.variants, output_prefix=output_prefix,
            sheet_height=pipeline.contact_sheet_height if pipeline.contact_sheet else None,
            png_compress_level=pipeline.png_compress_level,
        )
        if timings is not None:
            timings["encode"] = round(time.perf_counter() - started, 4)
        return Encoded(files=files, variants=entries, contact_sheet=sheet)

    def __call__(self, body: bytes, *, name: str, sidecar: bytes | None = None, sidecar_name: str = "",
                 output_prefix: str = "", timings: dict[str, float] | None = None,
                 ) -> tuple[Prepared, Rendered, Encoded]:
        """All three steps on one input, in a row."""
        prepared = self.prepare(body, name=name, sidecar=sidecar, sidecar_name=sidecar_name, timings=timings)
        rendered = self.compute(prepared, timings)
        return prepared, rendered, self.encode(prepared, rendered, output_prefix=output_prefix, timings=timings)
