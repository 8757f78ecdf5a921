"""The toy cartoonizer as a Gradio app (a Hugging Face Space).

It runs the same ``ItemPipeline`` as ``processor run`` and ``processor process``, in-process on
the Space's GPU: upload a photo, pick a style, get its variants in a gallery (and the PNG files,
the contact sheet and their manifest entries), with a progress bar per diffusion round. No bucket:
the photo goes straight through decode, caption, prompt, render and encode.

Settings come from ``$PROCESSOR_CONFIG`` (default: ``config.yaml`` beside this file), like every
other entry point. ``python app.py`` serves it (Spaces run exactly that; ``GRADIO_SERVER_PORT`` and
``GRADIO_SERVER_NAME`` move it). This is the only file of the project that imports gradio.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

HERE = Path(__file__).resolve().parent
# In a Space the package is copied beside this file; in a checkout it is two folders up.
for candidate in (HERE, HERE.parent.parent):
    if (candidate / "processor" / "__init__.py").is_file() and str(candidate) not in sys.path:
        sys.path.insert(0, str(candidate))
        break

from processor.cli.compose import build_captioner, build_registry  # noqa: E402 - after the sys.path lookup above
from processor.config import Settings, load_settings  # noqa: E402 - after the sys.path lookup above
from processor.errors import ItemError  # noqa: E402 - after the sys.path lookup above
from processor.pipeline.item import ItemPipeline  # noqa: E402 - after the sys.path lookup above

#: Variants the form allows per request (a Space's GPU is shared by its visitors).
MAX_VARIANTS = 8
#: Seconds a request's files stay on disk (Gradio serves copies from its cache; see delete_cache).
FILES_TTL_S = 3600
#: Where each request's PNG files are written, one folder per request.
FILES_ROOT = Path(tempfile.gettempdir()) / "toy-cartoonizer"


@dataclass(frozen=True)
class SpaceResult:
    """What one request produced: the variants (with a caption each) and the files to download."""

    gallery: list[tuple[Image.Image, str]]
    contact_sheet: Image.Image | None
    files: list[str]
    #: The manifest's entries for the variants (seed, parameters, sha256) and the caption used.
    details: dict[str, Any]


class ProgressBridge:
    """Turns the engines' reports (``ItemContext.report``: ``stage``, ``round`` of ``rounds``,
    ``step`` of ``steps``) into calls of a Gradio progress bar: one bar per round, over its steps."""

    def __init__(self, progress: Callable[..., Any]) -> None:
        self.progress = progress

    def __call__(self, *, stage: str, round: int | None = None, rounds: int | None = None,  # noqa: A002 - the hook's keyword
                 step: int | None = None, steps: int | None = None) -> None:
        label = stage.removeprefix("style:")
        if rounds:
            label += f" · round {round} of {rounds}"
        if steps:
            self.progress((step or 0, steps), desc=label, unit="steps")
        elif rounds:
            self.progress(((round or 1) - 1, rounds), desc=label, unit="rounds")
        else:
            self.progress(0, desc=label)


class Cartoonizer:
    """The pipeline, set up once per process; ``__call__`` runs one photo through it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.styles = sorted(settings.styles)
        self.pipeline = ItemPipeline(settings, build_registry(settings), captioner=build_captioner(settings))
        self.pipeline.setup()

    def default_variants(self, style: str) -> int:
        """The style's own variant count, as the form's starting value (within the form's bound)."""
        return max(1, min(MAX_VARIANTS, int(getattr(self.settings.styles.get(style), "variants", 1) or 1)))

    def __call__(self, photo: str | None, style: str, variants: float | None, seed: float | None,
                 report: Callable[..., None] | None = None) -> SpaceResult:
        if not photo:
            raise gr.Error("Upload a photo first.")
        if style not in self.settings.styles:
            raise gr.Error(f"Unknown style {style!r}; pick one of {', '.join(self.styles)}.")
        path = Path(photo)
        sidecar: dict[str, Any] = {"styles": [style]}
        if variants:
            sidecar["variants"] = int(variants)
        if seed is not None and seed >= 0:  # -1 (or none): the style's own seed
            sidecar["seed"] = int(seed)
        try:
            # The form's choices go through the sidecar rules, as a bucket upload's would.
            prepared = self.pipeline.prepare(path.read_bytes(), name=path.name, sidecar=json.dumps(sidecar).encode(),
                                             sidecar_name="the form")
            rendered = self.pipeline.compute(prepared, report=report)
            encoded = self.pipeline.encode(prepared, rendered)
        except ItemError as exc:
            raise gr.Error(f"{exc} What to change: {exc.hint}") from None
        _prune(FILES_ROOT, FILES_TTL_S)
        FILES_ROOT.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=FILES_ROOT))
        files, sheet = [], None
        for f in encoded.files:
            (folder / f.name).write_bytes(f.body)
            files.append(str(folder / f.name))
            if f.name == encoded.contact_sheet:
                sheet = Image.open(io.BytesIO(f.body))
        gallery = [(v.image, f"{v.style} #{v.index} · seed {v.seed}") for v in rendered.variants]
        details = {"variants": [v.model_dump(mode="json", exclude_none=True) for v in encoded.variants],
                   "caption": rendered.caption.model_dump(mode="json") if rendered.caption else None}
        return SpaceResult(gallery=gallery, contact_sheet=sheet, files=files, details=details)


def _prune(root: Path, ttl_s: float) -> None:
    """Remove the folders of requests older than ``ttl_s``, so a long-running Space's disk stays flat."""
    if not root.is_dir():
        return
    cutoff = time.time() - ttl_s
    for folder in root.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            pass  # another request pruned it meanwhile


def _preview(photo: str | None) -> Image.Image | None:
    """A look at the upload before it runs; nothing for a file PIL cannot open (the run says why)."""
    if not photo:
        return None
    try:
        with Image.open(photo) as image:
            image.thumbnail((480, 480))
            return image.convert("RGB")
    except Exception:  # noqa: BLE001 - any unreadable file: no preview; decode reports it on run
        return None


def build_demo(cartoonizer: Cartoonizer) -> gr.Blocks:
    default = cartoonizer.settings.run.styles[0]

    def run(photo: str | None, style: str, variants: float | None, seed: float | None,
            progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - how Gradio passes the bar
        progress(0, desc="starting")
        result = cartoonizer(photo, style, variants, seed, report=ProgressBridge(progress))
        return result.gallery, result.contact_sheet, result.files, result.details

    # delete_cache: Gradio's copies of uploads and results, removed after FILES_TTL_S as well.
    with gr.Blocks(title="Toy cartoonizer", delete_cache=(FILES_TTL_S, FILES_TTL_S)) as demo:
        gr.Markdown("# Toy cartoonizer\nUpload a photo of a toy, pick a style, and get cartoon versions of it.")
        with gr.Row():
            with gr.Column():
                # A file, not gr.Image: gr.Image decodes and re-encodes the upload, and the pipeline
                # must see the original bytes (HEIC, EXIF orientation, its own size and format checks).
                photo = gr.File(label="Photo", file_types=["image", ".heic", ".heif"], type="filepath")
                preview = gr.Image(label="Preview", interactive=False, height=240)
                style = gr.Dropdown(cartoonizer.styles, value=default, label="Style")
                variants = gr.Slider(1, MAX_VARIANTS, step=1, value=cartoonizer.default_variants(default),
                                     label="Variants")
                seed = gr.Number(value=-1, minimum=-1, precision=0, label="Seed (-1: the style's own)")
                go = gr.Button("Cartoonize", variant="primary")
            with gr.Column():
                gallery = gr.Gallery(label="Variants", columns=3, format="png")
                sheet = gr.Image(label="Contact sheet", type="pil", format="jpeg")
                files = gr.File(label="PNG files (with their parameters)", file_count="multiple")
                details = gr.JSON(label="How each variant was made")
        photo.change(_preview, photo, preview)
        style.change(lambda name: gr.update(value=cartoonizer.default_variants(name)), style, variants)
        go.click(run, [photo, style, variants, seed], [gallery, sheet, files, details], api_name="cartoonize")
    return demo


def main() -> None:
    config = os.environ.get("PROCESSOR_CONFIG") or str(HERE / "config.yaml")
    settings = load_settings(config)
    demo = build_demo(Cartoonizer(settings))
    # One request at a time on the GPU; the others wait in Gradio's queue with their position shown.
    # Uploads past the decoder's byte limit are refused by Gradio before they reach the pipeline.
    demo.queue(default_concurrency_limit=1).launch(max_file_size=settings.pipeline.decode.max_bytes)


if __name__ == "__main__":
    main()
