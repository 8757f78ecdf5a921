"""``processor submit``: upload photos (and their sidecars) under ``inputs/``, then ask running
daemons for a full scan; or, with ``--api URL``, submit them as jobs of the HTTP API through the
Python client (``processor.client``), with the token from ``PROCESSOR_API_TOKEN``."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from processor.cli.compose import StoreUse, build_store
from processor.config import Settings
from processor.config.base import API_TOKEN_ENV
from processor.errors import EXIT_SOME_FAILED, ConfigError, ItemError
from processor.localfiles import walk
from processor.queue.keys import KeyLayout, is_sidecar
from processor.store.base import ObjectStore

#: Sidecar fields that ``submit --api`` sends as request fields, and the field each becomes.
SIDECAR_FIELDS = {"styles": "styles", "variants": "variants", "seed": "seed", "prompt": "prompt",
                  "negative": "negative", "instruction": "instruction"}


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    if args.api:
        return _submit_over_api(args)
    from tqdm import tqdm

    prefix = settings.prefixes.inputs + (args.prefix.strip("/") + "/" if args.prefix else "")
    files = sorted(walk(args.paths))
    if not files:
        raise ConfigError(f"no files found under {', '.join(args.paths)}")
    prompt = _metadata_prompt(args.prompt, settings) if args.prompt else None
    files, refused = _refuse_non_photos(files)
    store = build_store(settings, StoreUse.WRITE)
    photo_metadata = {"prompt": prompt} if prompt else {}
    if args.style_image:
        from processor.pipeline.look import STYLE_IMAGE_METADATA_KEY

        photo_metadata[STYLE_IMAGE_METADATA_KEY] = _upload_style_image(Path(args.style_image), store, settings)
    for path, rel in tqdm(files, desc="uploading", unit="file", disable=args.quiet):
        ctype = "application/json" if is_sidecar(rel) else "application/octet-stream"
        metadata = None if is_sidecar(rel) else {**photo_metadata, **_filename(path, photo_metadata)}
        store.put(prefix + rel, path.read_bytes(), content_type=ctype, metadata=metadata or None)
    left_out = f"; refused {len(refused)} that are not photos" if refused else ""
    print(f"uploaded {len(files)} file(s) to {store.description} under {prefix}{left_out}")
    if files:
        _request_rescan(store, settings, by="submit", count=len(files))
    return EXIT_SOME_FAILED if refused else 0


def _refuse_non_photos(files: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str]], list[Path]]:
    """The files to upload and those refused, each refusal said in one line on stderr."""
    # Every file is looked at before the first upload: a folder with a stray notes.txt uploads its
    # photos and says which files it left out, rather than stopping half-way.
    refused = [(path, why) for path, rel in files if (why := _not_a_photo(path, rel)) is not None]
    for path, why in refused:
        print(f"refused {path}: {why}", file=sys.stderr)
    skipped = {path for path, _ in refused}
    return [(path, rel) for path, rel in files if path not in skipped], [path for path, _ in refused]


def _not_a_photo(path: Path, rel: str) -> str | None:
    """Why ``path`` is no photo the worker reads (sniffed from its first bytes, as the worker and
    the HTTP API do), with what to send instead; None for a photo or a sidecar."""
    from processor.pipeline.decode import SNIFF_BYTES, describe_unsupported, sniff_format
    from processor.queue.submit import EXTENSIONS

    if is_sidecar(rel):
        return None
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    fmt = sniff_format(head)
    if fmt is not None and fmt in EXTENSIONS:
        return None
    message, hint = describe_unsupported(head)
    return f"{message} -> {hint}"


def _filename(path: Path, others: dict[str, str]) -> dict[str, str]:
    """The photo's file name as metadata, in what the other metadata leaves of S3's 2 KB."""
    from processor.pipeline.sidecar import MAX_METADATA_BYTES
    from processor.queue.submit import FILENAME_METADATA_KEY, MAX_FILENAME_BYTES, filename_metadata

    used = sum(len(k) + len(v) for k, v in others.items()) + len(FILENAME_METADATA_KEY)
    return filename_metadata(path.name, min(MAX_FILENAME_BYTES, MAX_METADATA_BYTES - used))


def _submit_over_api(args: argparse.Namespace) -> int:
    """``--api URL``: each photo a job of the API (a sidecar beside it gives its fields); with
    ``--wait``, wait for every job and exit ``EXIT_SOME_FAILED`` when one did not end done."""
    from processor.client import ApiError, Client

    if args.prefix:
        raise ConfigError("--prefix and --api: the API names its uploads; drop --prefix")
    files = sorted(walk(args.paths))
    photos = [(path, rel) for path, rel in files if not is_sidecar(rel)]
    if not photos:
        raise ConfigError(f"no photos found under {', '.join(args.paths)}")
    photos, refused = _refuse_non_photos(photos)
    if not photos:
        print(f"submitted no job: refused {len(refused)} file(s) that are not photos")
        return EXIT_SOME_FAILED
    sidecars = {rel: path for path, rel in files if is_sidecar(rel)}
    jobs: list[tuple[str, str]] = []
    with Client(args.api, os.environ.get(API_TOKEN_ENV) or None) as api:
        for path, rel in photos:
            fields = _sidecar_fields(sidecars.get(rel.rsplit(".", 1)[0] + ".json"))
            if args.prompt:
                fields["prompt"] = args.prompt
            try:
                job = api.submit(path, style_image=Path(args.style_image) if args.style_image else None, **fields)
            except ApiError as exc:
                raise ConfigError(f"{rel}: {exc}") from None
            jobs.append((rel, job.id))
            print(f"{rel} -> {job.id} {job.status.value}")
        if not args.wait:
            return EXIT_SOME_FAILED if refused else 0
        ended = [(rel, api.wait(job)) for rel, job in jobs]
    for rel, state in ended:
        why = f": {state.failure.error}: {state.failure.message}" if state.failure else ""
        print(f"{rel} {state.status.value}{why}")
    all_done = all(state.status.value == "done" for _, state in ended)
    return 0 if all_done and not refused else EXIT_SOME_FAILED


def _sidecar_fields(path: Path | None) -> dict[str, Any]:
    """The request fields a sidecar gives (``SIDECAR_FIELDS`` and its ``background``)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sidecar {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sidecar {path} is not a JSON object")
    fields = {SIDECAR_FIELDS[k]: v for k, v in data.items() if k in SIDECAR_FIELDS}
    background = data.get("background")
    if isinstance(background, dict):
        fields |= {f"background_{k}": background[k] for k in ("mode", "prompt") if k in background}
    return fields


def _upload_style_image(path: Path, store: ObjectStore, settings: Settings) -> str:
    """``--style-image``: the picture checked as the worker will decode it, uploaded under
    ``prefixes.styles`` by its content (the same picture twice is one object); its key."""
    from processor.pipeline.decode import decode_image
    from processor.queue.submit import CONTENT_TYPES, EXTENSIONS

    if not any(style.addons().ip_adapter is not None for style in settings.styles.values()):
        raise ConfigError("--style-image: no configured style has an ip_adapter to read it; drop --style-image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--style-image {path}: {exc.strerror or exc}") from None
    try:
        decoded = decode_image(data, settings.pipeline.decode, name=f"--style-image {path}")
    except ItemError as exc:
        raise ConfigError(f"{exc} ({exc.hint})") from None
    if decoded.format not in EXTENSIONS:
        raise ConfigError(f"--style-image {path} is {decoded.format}; send a JPEG, PNG or WebP picture")
    key = f"{settings.prefixes.styles}submit/{hashlib.sha256(data).hexdigest()[:32]}{EXTENSIONS[decoded.format]}"
    store.put(key, data, content_type=CONTENT_TYPES[decoded.format])
    return key


def _metadata_prompt(text: str, settings: Settings) -> str:
    """``--prompt`` checked as the worker will check it, encoded so every store takes it (S3
    metadata is ASCII: non-ASCII text travels RFC 2047-encoded and the worker decodes it)."""
    from processor.pipeline.sidecar import MAX_METADATA_BYTES, encode_metadata, validate_overrides

    try:
        validate_overrides({"prompt": text}, settings, where="--prompt")
    except ItemError as exc:
        raise ConfigError(str(exc)) from None
    encoded = encode_metadata(text)
    if len(encoded) + len("prompt") > MAX_METADATA_BYTES:
        raise ConfigError(f"--prompt is {len(encoded):,} bytes as object metadata; S3 keeps at most "
                          f"{MAX_METADATA_BYTES:,}: shorten it, or put it in a sidecar photo.json "
                          '({"prompt": "..."}) next to the photo')
    return encoded


def _request_rescan(store: ObjectStore, settings: Settings, *, by: str, count: int) -> None:
    """Ask running daemons for a full scan now: what ``by`` wrote may sort before their mark."""
    from processor.queue.rescan import request_rescan

    layout = KeyLayout(settings.prefixes)
    if not request_rescan(store, layout, by=by, count=count):
        print(f"could not write the rescan hint ({layout.rescan_hint}); running daemons "
              "will find these inputs at their next full scan (run.full_rescan_s)", file=sys.stderr)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``submit`` (``common``: --config, --log-level, --quiet)."""
    p = sub.add_parser("submit", parents=[common], help="upload photos to inputs/",
                       description="Upload files (folders recursively, keeping relative paths) under inputs/. "
                       "A photo.json next to photo.jpg is uploaded too and acts as its sidecar. A file that is "
                       f"no photo is refused before anything is uploaded (the others still are; exit "
                       f"{EXIT_SOME_FAILED}); each photo's file name is kept as its metadata "
                       "(x-amz-meta-filename). Then writes the "
                       "rescan hint under the state prefix, so that running daemons make their next scan a full "
                       "one and find a re-upload under a key they had already passed.")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR",
                   help="photos (JPEG, PNG, WebP, HEIC, ...), their photo.json sidecars, and folders of them")
    p.add_argument("--prefix", metavar="SUBFOLDER", help="put the files under inputs/SUBFOLDER/")
    p.add_argument("--prompt", help="a prompt stored as object metadata (x-amz-meta-prompt)")
    p.add_argument("--style-image", metavar="FILE",
                   help="a picture of the look for styles with an ip_adapter: uploaded under prefixes.styles and "
                        "named in each photo's metadata (x-amz-meta-style-image)")
    p.add_argument("--api", metavar="URL",
                   help=f"submit each photo as a job of the HTTP API at URL (processor serve) instead of writing "
                        f"the bucket; the token is read from {API_TOKEN_ENV}; a sidecar's fields become the job's")
    p.add_argument("--wait", action="store_true",
                   help=f"with --api: wait for every job and print how it ended (exit {EXIT_SOME_FAILED} if one "
                        "did not end done)")
    p.set_defaults(func=cmd_submit)
