"""The toy cartoonizer as a Gradio app (a Hugging Face Space).

Upload a photo, pick a style, get its variants in a gallery (and the PNG files, the contact sheet
and their manifest entries), with a progress bar per diffusion round. Two modes, one form:

* in-process (the default): the same ``ItemPipeline`` as ``processor run`` and ``processor
  process`` runs on the Space's GPU. No bucket: the photo goes straight through decode, caption,
  prompt, render and encode.
* a front end to a running ``processor serve``, when ``PROCESSOR_API_URL`` is set (with
  ``PROCESSOR_API_TOKEN``, a bearer token of the API): the photo is submitted with
  ``processor.client.Client``, a ``processor run`` worker behind the API renders it, and the Space
  follows the job's progress and downloads its files. The Space needs no GPU then.

Settings come from ``$PROCESSOR_CONFIG`` (default: ``config.yaml`` beside this file), like every
other entry point; in front of an API they only name the styles the form offers. ``python app.py``
serves it (Spaces run exactly that; ``GRADIO_SERVER_PORT`` and ``GRADIO_SERVER_NAME`` move it).
This is the only file of the project that imports gradio.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
from PIL import Image

HERE = Path(__file__).resolve().parent
# In a Space the package is copied beside this file; in a checkout it is two folders up.
for candidate in (HERE, HERE.parent.parent):
    if (candidate / "processor" / "__init__.py").is_file() and str(candidate) not in sys.path:
        sys.path.insert(0, str(candidate))
        break

from processor.api.schemas import JobOut, Progress  # noqa: E402 - after the sys.path lookup above
from processor.cli.compose import build_captioner, build_registry  # noqa: E402 - after the sys.path lookup above
from processor.client import ApiError, Client, WaitTimeout  # noqa: E402 - after the sys.path lookup above
from processor.config import Settings, load_settings  # noqa: E402 - after the sys.path lookup above
from processor.errors import ItemError  # noqa: E402 - after the sys.path lookup above
from processor.pipeline.item import ItemPipeline  # noqa: E402 - after the sys.path lookup above
from processor.queue.jobs import JobStatus  # noqa: E402 - after the sys.path lookup above

#: Variants the form allows per request (a Space's GPU is shared by its visitors).
MAX_VARIANTS = 8
#: Seconds a request's files stay on disk (Gradio serves copies from its cache; see delete_cache).
FILES_TTL_S = 3600
#: Where each request's PNG files are written, one folder per request.
FILES_ROOT = Path(tempfile.gettempdir()) / "toy-cartoonizer"
#: The environment variables that turn the Space into a front end of a running ``processor serve``.
API_URL_ENV = "PROCESSOR_API_URL"
API_TOKEN_ENV = "PROCESSOR_API_TOKEN"
#: Seconds the Space waits for a job of the API to end (queued behind others, then rendered).
API_WAIT_S = 1800.0
#: Requests the Space has in flight at once in front of an API (the API's workers queue them; the
#: Space only waits). In-process it is one: the Space's own GPU.
API_CONCURRENCY = 4


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


class Form:
    """What both modes share: the styles the form offers (the config's), their variant counts,
    and the checks of a request before it goes anywhere. ``__call__`` runs one photo."""

    #: Requests Gradio runs at once (the others wait in its queue with their position shown).
    concurrency = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.styles = sorted(settings.styles)

    def default_variants(self, style: str) -> int:
        """The style's own variant count, as the form's starting value (within the form's bound)."""
        return max(1, min(MAX_VARIANTS, int(getattr(self.settings.styles.get(style), "variants", 1) or 1)))

    def check(self, photo: str | None, style: str) -> Path:
        """The photo's path, once the request names a photo and a known style (``gr.Error`` if not)."""
        if not photo:
            raise gr.Error("Upload a photo first.")
        if style not in self.settings.styles:
            raise gr.Error(f"Unknown style {style!r}; pick one of {', '.join(self.styles)}.")
        return Path(photo)

    def __call__(self, photo: str | None, style: str, variants: float | None, seed: float | None,
                 report: Callable[..., None] | None = None) -> SpaceResult:
        raise NotImplementedError


class Cartoonizer(Form):
    """The pipeline, set up once per process; ``__call__`` runs one photo through it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.pipeline = ItemPipeline(settings, build_registry(settings), captioner=build_captioner(settings))
        self.pipeline.setup()

    def __call__(self, photo: str | None, style: str, variants: float | None, seed: float | None,
                 report: Callable[..., None] | None = None) -> SpaceResult:
        path = self.check(photo, style)
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
        folder = _request_folder()
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


class ApiCartoonizer(Form):
    """A front end to a running ``processor serve`` at ``url``: ``__call__`` submits the photo
    with the Python client, follows the job to its end and downloads its files. Whatever the API
    answers wrong (a problem+json, a failed or cancelled job, no answer) is a ``gr.Error`` that
    says what to change."""

    concurrency = API_CONCURRENCY

    def __init__(self, settings: Settings, url: str, token: str | None, *, wait_s: float = API_WAIT_S) -> None:
        super().__init__(settings)
        self.url, self.token, self.wait_s = url.rstrip("/"), token, wait_s

    def __call__(self, photo: str | None, style: str, variants: float | None, seed: float | None,
                 report: Callable[..., None] | None = None) -> SpaceResult:
        path = self.check(photo, style)
        try:
            with Client(self.url, self.token) as api:
                created = api.submit(path, styles=[style], variants=int(variants) if variants else None,
                                     seed=int(seed) if seed is not None and seed >= 0 else None)
                if report is not None:
                    report(stage="queued")
                job = api.wait(created.id, self.wait_s, on_progress=_forward(report))
                if job.status is JobStatus.failed:
                    failure = job.failure
                    if failure is None:
                        raise gr.Error(f"The job failed. {job.detail or ''}".strip())
                    raise gr.Error(f"{failure.message} What to change: {failure.hint}")
                if job.status is JobStatus.cancelled:
                    raise gr.Error("The job was cancelled on the server (DELETE /v1/jobs). What to change: "
                                   "run it again.")
                return self._result(api, job)
        except ApiError as exc:
            hint = exc.problem.hint or "check the request against the API's /docs."
            where = f" ({exc.problem.field})" if exc.problem.field else ""
            raise gr.Error(f"The API refused the request{where}: {exc.problem.detail.rstrip('.')}. "
                           f"What to change: {hint}") from None
        except WaitTimeout as exc:
            raise gr.Error(f"The job {exc.job.id} is still {exc.job.status.value} after {self.wait_s:g} s. What to "
                           "change: the API's workers are busy or stopped; ask the operator, or try later.") from None
        except httpx.HTTPError as exc:
            raise gr.Error(f"The API at {self.url} did not answer: {exc}. What to change: check {API_URL_ENV} "
                           "and that processor serve is running.") from None

    def _result(self, api: Client, job: JobOut) -> SpaceResult:
        """The done job's variants, contact sheet and manifest entries, as the in-process mode shows them."""
        folder = _request_folder()
        files: list[str] = []
        gallery: list[tuple[Image.Image, str]] = []
        for variant in job.variants:
            files.append(str(api.download(variant.url, folder)))
            # A still's gallery picture is its PNG; a clip's is its animated preview (an MP4 is no
            # picture: a clip without a preview is in the files only).
            if variant.kind == "image":
                picture = Path(files[-1])
            elif variant.preview:
                picture = api.download(variant.preview, folder)
            else:
                continue
            with Image.open(picture) as image:
                gallery.append((image.convert("RGB"), f"{variant.style} #{variant.index} · seed {variant.seed}"))
        sheet = None
        if job.contact_sheet:
            files.append(str(api.download(job.contact_sheet, folder)))
            with Image.open(files[-1]) as image:
                sheet = image.convert("RGB")
        manifest = job.manifest or {}
        details = {"variants": manifest.get("variants", []), "caption": manifest.get("caption")}
        return SpaceResult(gallery=gallery, contact_sheet=sheet, files=files, details=details)


def _forward(report: Callable[..., None] | None) -> Callable[[Progress], None] | None:
    """The API's progress reports, passed on to the bar as the engines' own reports are."""
    if report is None:
        return None

    def forward(progress: Progress) -> None:
        report(**progress.model_dump(exclude_none=True))
    return forward


def _request_folder() -> Path:
    """A new folder for one request's files (older ones pruned first)."""
    _prune(FILES_ROOT, FILES_TTL_S)
    FILES_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=FILES_ROOT))


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


def build_demo(cartoonizer: Form) -> gr.Blocks:
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


def build_form(settings: Settings, environ: Mapping[str, str]) -> Form:
    """The API's front end when ``PROCESSOR_API_URL`` is set, else the pipeline in-process."""
    url = (environ.get(API_URL_ENV) or "").strip()
    if not url:
        return Cartoonizer(settings)
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"{API_URL_ENV}={url!r} is not a URL: set it to the API's base URL, "
                         "e.g. https://cartoons.example.com (or unset it to run the pipeline in-process)")
    return ApiCartoonizer(settings, url, (environ.get(API_TOKEN_ENV) or "").strip() or None)


def main() -> None:
    config = os.environ.get("PROCESSOR_CONFIG") or str(HERE / "config.yaml")
    settings = load_settings(config)
    form = build_form(settings, os.environ)
    # One request at a time on the GPU (a few in front of an API); the others wait in Gradio's queue
    # with their position shown. Uploads past the decoder's byte limit are refused by Gradio before
    # they reach the pipeline (or the API, whose own api.max_upload_bytes may be lower).
    build_demo(form).queue(default_concurrency_limit=form.concurrency).launch(
        max_file_size=settings.pipeline.decode.max_bytes)


if __name__ == "__main__":
    main()
