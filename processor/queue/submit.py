"""Writing a job: the photo, its sidecar and its picture of the look, in the order that keeps a
worker from ever seeing half of it.

A job submitted through the queue (the HTTP API; ``processor submit`` uploads plain inputs) is
written as:

1. the picture of the look, when one came with it, under ``prefixes.styles`` (a job-scoped name);
2. the sidecar beside the input (``inputs/<path>.json``), naming that picture;
3. the webhook's pending record, when the job has one (its job may end before a later write);
4. the input itself, created only if absent: the photo is what makes a worker take the job, so
   everything it reads with it is already there;
5. the rescan hint naming the input, so daemons find it even when it sorts before their
   high-water mark, without listing the whole bucket (``rescan.ArrivalHints``).

Names are time-ordered (listings show jobs in submit order) and unguessable
(``new_upload_name``), so a create-if-absent that answers 412 can only be our own write, landed
with its response lost and retried by the store (``create_unique``).

Ownership: a client's uploads go to a folder of its own under the upload folder
(``inputs/api/<client>/<name>.<ext>``, ``owner_folder``), and the folder is what records the owner
(``upload_owner``): the API writes it from the caller's identity, never from the request, and a
client's jobs are one LIST of that folder. Inputs anywhere else (dropped into the bucket directly,
or uploaded by an open server) have no owner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from processor.errors import PreconditionFailed, StoreAccessError, StoreError
from processor.queue.keys import KeyLayout, split_extension
from processor.queue.rescan import ArrivalHints
from processor.queue.webhook_records import ALL_EVENTS, WebhookEvent, WebhookRecords
from processor.store.base import ObjectStore

log = logging.getLogger("processor.submit")

#: File extension of an upload, from its sniffed format (``pipeline.decode.sniff_format``).
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "HEIF": ".heic", "AVIF": ".avif",
              "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp"}
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "HEIF": "image/heif",
                 "AVIF": "image/avif", "GIF": "image/gif", "TIFF": "image/tiff", "BMP": "image/bmp"}

#: The object metadata key of a photo's original file name (``x-amz-meta-filename`` on S3), written
#: by ``processor submit`` and the HTTP API, read by the job view and the worker (``source.filename``).
FILENAME_METADATA_KEY = "filename"
#: Bytes: the longest file name value kept in metadata (percent-encoded); a longer name is
#: shortened, its extension kept. Metadata is for a person to recognise the photo by.
MAX_FILENAME_BYTES = 255
#: Characters: an extension longer than this is part of the name, not an extension.
MAX_EXTENSION_CHARS = 8
#: Printable ASCII left as it is in a stored file name; everything else (``%`` too) is %XX of its
#: UTF-8 bytes, so every store takes the value and it reads back exactly.
_FILENAME_SAFE = " ()[]{},;!'@#&=+$"
#: Marks a shortened name.
_SHORTENED = "~"


def clean_filename(name: str | None) -> str | None:
    """The last segment of a file name as a client sent it (a path, a Windows path), without
    control characters; None when nothing is left."""
    if not name:
        return None
    base = re.split(r"[\\/]", name[-4 * MAX_FILENAME_BYTES:])[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    return base if base not in ("", ".", "..") else None


def filename_metadata(name: str | None, budget: int = MAX_FILENAME_BYTES) -> dict[str, str]:
    """``{"filename": value}`` for a photo's original name: ``clean_filename``, percent-encoded
    (ASCII, which every store takes), shortened to at most ``budget`` bytes with its extension
    kept; empty when there is no name or not even one character fits."""
    clean = clean_filename(name)
    if clean is None:
        return {}
    stem, dot, ext = clean.rpartition(".")
    if not dot or not stem or len(ext) > MAX_EXTENSION_CHARS:
        stem, ext = clean, ""
    else:
        ext = "." + ext
    for cut in range(min(len(stem), budget), 0, -1):
        shown = stem[:cut] + ("" if cut == len(stem) else _SHORTENED) + ext
        value = quote(shown, safe=_FILENAME_SAFE)
        if len(value) <= budget:
            return {FILENAME_METADATA_KEY: value}
    return {}


def filename_from_metadata(metadata: Mapping[str, str] | None) -> str | None:
    """The original file name ``filename_metadata`` stored (any key case: S3 lowercases them);
    None when the object has none. Whoever can write the bucket can write metadata: the value is
    cleaned and bounded as on the way in."""
    for key, value in (metadata or {}).items():
        if key.lower() == FILENAME_METADATA_KEY and isinstance(value, str):
            return clean_filename(unquote(value[:MAX_FILENAME_BYTES * 3], errors="replace"))
    return None


@dataclass(frozen=True)
class Submission:
    """A validated request: the photo's bytes and format, and the sidecar to write beside it."""

    image: bytes
    #: The sniffed format (``JPEG``, ``PNG``, ...).
    format: str
    #: The sidecar mapping, already validated by ``pipeline.sidecar``; empty: no sidecar.
    sidecar: dict[str, object] = field(default_factory=dict)
    webhook: str | None = None
    #: The events the webhook is sent for (``webhook_events``; default: every end of the job).
    webhook_events: frozenset[WebhookEvent] = ALL_EVENTS
    #: The picture of the look uploaded with the photo (written under ``prefixes.styles``), and its
    #: sniffed format; None when the request named none or an existing key (then in ``sidecar``).
    style_image: bytes | None = None
    style_image_format: str | None = None
    #: The photo's file name as the client sent it (stored as ``FILENAME_METADATA_KEY``); not part
    #: of the fingerprint: the same photo under another name is the same job.
    filename: str | None = None

    def fingerprint(self) -> str:
        """What makes two requests the same (an ``Idempotency-Key`` reused with another is a conflict)."""
        digest = hashlib.sha256(self.image)
        # Only a chosen set of events enters it: a request that names none stays the same request
        # (an Idempotency-Key repeat, not a conflict) whatever the default set is.
        chosen = [sorted(e.value for e in self.webhook_events)] if self.webhook_events != ALL_EVENTS else []
        digest.update(json.dumps([self.sidecar, self.webhook, *chosen], sort_keys=True).encode())
        if self.style_image is not None:
            digest.update(b"\0style_image\0" + hashlib.sha256(self.style_image).digest())
        return digest.hexdigest()


def new_upload_name(now: Callable[[], float] = time.time) -> str:
    """Time-ordered (listings show jobs in submit order) and unguessable."""
    return f"{int(now() * 1000):013d}-{secrets.token_hex(8)}"


def owner_folder(upload_folder: str, owner: str | None) -> str:
    """The folder under the inputs prefix that ``owner``'s uploads go to (``upload_folder`` itself
    without an owner)."""
    return upload_folder + (f"{owner}/" if owner else "")


def upload_owner(upload_folder: str, relpath: str) -> str | None:
    """The owner an input path records: the folder right under ``upload_folder`` that holds it
    (``api/alice/<name>.jpg`` -> ``alice``); None for any other path."""
    if not relpath.startswith(upload_folder):
        return None
    owner, sep, name = relpath[len(upload_folder):].partition("/")
    if not sep or not owner or not name or "/" in name:
        return None
    return owner


def write_job(store: ObjectStore, layout: KeyLayout, relpath: str, submission: Submission, *,
              job: str, webhooks: WebhookRecords, hints: ArrivalHints) -> None:
    """Write ``submission`` as the input ``inputs/<relpath>`` (module docstring: the order)."""
    keys = layout.for_input(layout.prefixes.inputs + relpath)
    sidecar = dict(submission.sidecar)
    if submission.style_image is not None and submission.style_image_format is not None:
        # Job-scoped (the input's unguessable name) and first: the sidecar naming it comes after.
        look_key = layout.prefixes.styles + split_extension(relpath)[0] + EXTENSIONS[submission.style_image_format]
        create_unique(store, look_key, submission.style_image, CONTENT_TYPES[submission.style_image_format])
        sidecar["style_image"] = look_key
    if sidecar:
        store.put(keys.sidecar, json.dumps(sidecar).encode(), content_type="application/json")
    if submission.webhook:
        webhooks.add(job, submission.webhook, submission.webhook_events)
    create_unique(store, keys.input, submission.image, CONTENT_TYPES[submission.format],
                  metadata=filename_metadata(submission.filename) or None)
    # An upload may sort before a daemon's high-water mark: name it in the hint its next scan reads.
    hints.announce(keys.input)
    log.info("job_submitted", extra={"job": job, "key": keys.input, "bytes": len(submission.image)})


def create_unique(store: ObjectStore, key: str, body: bytes, content_type: str,
                  metadata: Mapping[str, str] | None = None) -> None:
    """Create ``key``, a name unique to this request (``new_upload_name``), only if absent. A 412
    can then only be our own write, landed with its response lost and retried by the store: the
    object of our size there is ours. Anything else there is refused (``PreconditionFailed``)."""
    try:
        store.put(key, body, content_type=content_type, metadata=metadata, if_none_match=True)
    except PreconditionFailed:
        if store.head(key).size != len(body):
            raise
        log.info("create_response_lost", extra={"key": key, "bytes": len(body)})


def discard_job(store: ObjectStore, layout: KeyLayout, relpath: str, *, job: str) -> None:
    """Delete the input and sidecar ``write_job`` wrote for ``inputs/<relpath>`` (best effort: a
    store that refuses leaves an extra job, which a worker processes like any other). A pending
    webhook of it ends by itself: the sender finds its input deleted."""
    keys = layout.for_input(layout.prefixes.inputs + relpath)
    for key in (keys.input, keys.sidecar):
        try:
            store.delete(key)
        except (StoreError, StoreAccessError):
            log.warning("discard_failed", extra={"job": job, "key": key})
