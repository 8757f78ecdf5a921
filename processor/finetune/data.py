"""The training set: every image under a location, decoded and validated like a worker's input.

A file that does not decode (wrong format, corrupt, too large or small for ``pipeline.decode``),
or that has no usable caption, is skipped with its reason; fewer usable images than needed is a
``TrainingDataError`` that lists every skipped file. Captions come from ``<image>.txt`` beside the
image (``files``), the product's captioner (``auto``) or one prompt for all (``none``); in subject
mode every image is the instance prompt's subject.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image

from processor.config import DecodeSettings
from processor.errors import InvalidInput, StageFailed, TrainingDataError
from processor.finetune.location import Location
from processor.finetune.record import CaptionSource, DatasetImage, Mode, SkippedImage
from processor.pipeline.decode import decode_image

log = logging.getLogger("processor.finetune.data")

#: Suffix of a caption file beside its image (``bear.jpg`` -> ``bear.txt``).
CAPTION_SUFFIX = ".txt"
#: Files under a training prefix that are never images: captions, sidecars, notes.
NOT_IMAGES = (CAPTION_SUFFIX, ".json", ".md")
#: Usable images a style needs by default: fewer teaches the one photo, not a look.
DEFAULT_MIN_IMAGES = 3
#: Characters of a caption file read (CLIP reads 77 tokens; a longer file is a mistake).
MAX_CAPTION_CHARS = 1000


@dataclass
class TrainingImage:
    key: str
    sha256: str
    image: Image.Image
    caption: str


@dataclass
class Dataset:
    images: list[TrainingImage]
    skipped: list[SkippedImage] = field(default_factory=list)
    #: Where the images came from (for the record).
    source: str = ""

    def records(self) -> list[DatasetImage]:
        return [DatasetImage(key=i.key, sha256=i.sha256, width=i.image.width, height=i.image.height,
                             caption=i.caption) for i in self.images]


def caption_name(name: str) -> str:
    """``toys/bear.jpg`` -> ``toys/bear.txt``."""
    path = PurePosixPath(name)
    return str(path.with_suffix(CAPTION_SUFFIX)) if path.suffix else name + CAPTION_SUFFIX


def load_dataset(
    where: Location,
    *,
    mode: Mode,
    captions: CaptionSource,
    limits: DecodeSettings,
    prompt: str | None = None,
    instance_prompt: str | None = None,
    captioner: Callable[[Image.Image], str] | None = None,
    min_images: int = DEFAULT_MIN_IMAGES,
) -> Dataset:
    """Read, decode and caption every image under ``where`` (sorted by key, so runs are repeatable).

    ``captioner`` turns an image into a caption (``auto``). Raises ``TrainingDataError`` when fewer
    than ``min_images`` images are usable.
    """
    check_caption_options(mode, captions, prompt, instance_prompt, captioner)
    listed = {name: info for name, info in where.names() if not _hidden(name)}
    dataset = Dataset(images=[], source=where.description)
    for name in sorted(listed):
        if name.lower().endswith(NOT_IMAGES):
            continue
        key = where.key(name)
        info = listed[name]
        if info.size > limits.max_bytes:
            dataset.skipped.append(SkippedImage(key=key, reason=f"{info.size:,} bytes; limit is {limits.max_bytes:,} "
                                                "(pipeline.decode.max_bytes)"))
            continue
        data = where.get(name)
        try:
            decoded = decode_image(data, limits, name=key)
        except InvalidInput as exc:
            dataset.skipped.append(SkippedImage(key=key, reason=f"{exc} ({exc.hint})"))
            continue
        caption, reason = _caption(where, name, listed, decoded.image, mode, captions, prompt, instance_prompt,
                                   captioner)
        if caption is None:
            dataset.skipped.append(SkippedImage(key=key, reason=reason))
            continue
        dataset.images.append(TrainingImage(key=key, sha256=hashlib.sha256(data).hexdigest(), image=decoded.image,
                                            caption=caption))
    for skipped in dataset.skipped:
        log.warning("finetune_image_skipped", extra={"key": skipped.key, "reason": skipped.reason})
    if len(dataset.images) < min_images:
        raise TrainingDataError(_too_few(where, dataset, min_images))
    return dataset


def check_caption_options(mode: Mode, captions: CaptionSource, prompt: str | None, instance_prompt: str | None,
                          captioner: object | None = None) -> None:
    """The caption options that cannot work together, refused before any image is read."""
    if mode is Mode.subject:
        if not (instance_prompt and instance_prompt.strip()):
            raise TrainingDataError("--mode subject needs --instance-prompt, the words that will name your toy, "
                                    'e.g. --instance-prompt "a photo of sks toy"')
        return
    if captions is CaptionSource.none and not (prompt and prompt.strip()):
        raise TrainingDataError("--captions none uses --prompt for every image: give --prompt "
                                '(e.g. --prompt "a toy in modern disney style"), or use --captions files / auto')
    if captions is CaptionSource.auto and captioner is None:
        raise TrainingDataError("--captions auto needs the captioner (caption.* settings); none was configured")


def _caption(where: Location, name: str, listed: dict, image: Image.Image, mode: Mode, captions: CaptionSource,
             prompt: str | None, instance_prompt: str | None,
             captioner: Callable[[Image.Image], str] | None) -> tuple[str | None, str]:
    if mode is Mode.subject:
        return instance_prompt.strip(), ""  # type: ignore[union-attr]  # checked by check_caption_options
    if captions is CaptionSource.none:
        return prompt.strip(), ""  # type: ignore[union-attr]
    if captions is CaptionSource.files:
        text_name = caption_name(name)
        if text_name not in listed:
            return None, (f"no caption file {where.key(text_name)} (--captions files reads <image>.txt beside each "
                          "image; add one, or use --captions auto / none)")
        raw = where.get(text_name)
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None, f"caption file {where.key(text_name)} is not UTF-8 text"
        if not text:
            return None, f"caption file {where.key(text_name)} is empty"
        if len(text) > MAX_CAPTION_CHARS:
            return None, f"caption file {where.key(text_name)} has {len(text)} characters; at most {MAX_CAPTION_CHARS}"
        return " ".join(text.split()), ""
    try:
        text = captioner(image).strip()  # type: ignore[misc]
    except StageFailed as exc:
        return None, f"the captioner failed: {exc}"
    if not text:
        return None, "the captioner returned an empty caption (use --captions files or none)"
    return text, ""


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def _too_few(where: Location, dataset: Dataset, min_images: int) -> str:
    found = len(dataset.images)
    lines = [(f"{found} usable training image{'s' if found != 1 else ''} under {where.description}; "
              f"at least {min_images} needed (--min-images).")]
    if dataset.skipped:
        lines.append(f"Skipped {len(dataset.skipped)}:")
        lines.extend(f"  {s.key}: {s.reason}" for s in dataset.skipped)
    elif found == 0:
        lines.append("No files were found there: put JPEG, PNG, WebP or HEIC photos there, or point --images at "
                     "the folder or bucket prefix that holds them.")
    lines.append("Add more photos or fix the skipped ones.")
    return "\n".join(lines)
