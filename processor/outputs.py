"""Turn one input's variants into the bytes and manifest entries to upload.

Shared by the worker (bucket) and ``processor process`` (local folder) so both produce the same
files: ``<style>-<nn>.png`` with a ``parameters`` text chunk, and the contact sheet.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from processor.keys import CONTACT_SHEET_NAME, safe_segment
from processor.manifest import Variant
from processor.pipeline.base import VariantImage
from processor.pipeline.encode import contact_sheet, encode_png, sha256_hex


@dataclass(frozen=True)
class OutputFile:
    #: Name relative to the input's output folder.
    name: str
    body: bytes
    content_type: str


def variant_name(style: str, index: int) -> str:
    return f"{safe_segment(style)}-{index:02d}.png"


def encode_outputs(
    original: Image.Image,
    variants: list[VariantImage],
    *,
    output_prefix: str,
    sheet_height: int | None,
) -> tuple[list[OutputFile], list[Variant], str | None]:
    """(files in upload order, manifest variant entries, contact sheet name or None)."""
    files: list[OutputFile] = []
    entries: list[Variant] = []
    for v in variants:
        body = encode_png(v.image, v.parameters | {"seed": v.seed, "style": v.style, "engine": v.engine})
        name = variant_name(v.style, v.index)
        files.append(OutputFile(name, body, "image/png"))
        entries.append(
            Variant(
                key=output_prefix + name,
                style=v.style,
                engine=v.engine,
                index=v.index,
                seed=v.seed,
                width=v.image.width,
                height=v.image.height,
                sha256=sha256_hex(body),
                parameters=v.parameters,
            )
        )
    sheet_name = None
    if sheet_height and variants:
        labels = ["original"] + [f"{v.style} #{v.index}" for v in variants]
        sheet = contact_sheet(original, [v.image for v in variants], height=sheet_height, labels=labels)
        files.append(OutputFile(CONTACT_SHEET_NAME, sheet, "image/jpeg"))
        sheet_name = CONTACT_SHEET_NAME
    return files, entries, sheet_name
