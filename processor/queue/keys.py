"""Where each object of one input lives, derived from the input key alone.

``inputs/<path>.<ext>`` → ``outputs/<path>/<style>-<nn>.png``, ``outputs/<path>/manifest.json``,
``failed/<path>.<ext>.json``, claims and done markers under the state prefix.

Input keys come from users and may hold ``..``, ``//``, a leading ``/``, spaces or unicode. Every
derived key is built from *safe segments*: ``%`` is escaped first, then empty, ``.`` and ``..``
segments and ``\\`` are percent-encoded, so derived keys never leave their prefix and stay distinct for
distinct inputs (the mapping is injective). Over-long names and paths are cut and end in ``%~``
and a hash of the whole (``%~`` never comes out of the escaping, so this stays injective): every
derived key then fits a file system's 255 bytes a name and S3's 1024 bytes a key.

Derived keys never nest into one another where a file system would need one name to be both a
file and a folder. A failure record is ``failed/<safe relpath>.json``, so the record of
``inputs/x.png`` (``failed/x.png.json``) would be the folder that holds the record of
``inputs/x.png.json/y.png``: in a record key, a folder name ending in ``.json`` (any case) has
that dot escaped (``failed/x.png%2Ejson/y.png.json``). Done markers cannot collide this way (a
marker's folder is the input's own path, which a file system cannot hold beside the input), and
an output name of one input that is another input's output folder (``outputs/a/manifest.json``
and ``inputs/a/manifest.json.png``) is refused by the local store and becomes that input's
failure record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from processor.config import PrefixSettings
from processor.names import is_plain_name
from processor.queue.outcomes import ENDED, Outcome

#: Extensions of per-image sidecar files (``inputs/<path>.json``), which are not inputs themselves.
SIDECAR_SUFFIX = ".json"
#: Bytes: a sidecar is a few lines of JSON; anything larger is a mistake (read with this cap).
MAX_SIDECAR_BYTES = 64 * 1024
MANIFEST_NAME = "manifest.json"
CONTACT_SHEET_NAME = "contact-sheet.jpg"
#: The subject mask of an input whose styles change the background (8-bit greyscale, 255 = subject).
MASK_NAME = "mask.png"
#: The subject mask drawn over the photo (background tinted, subject outlined), beside ``mask.png``.
MASK_OVERLAY_NAME = "mask-overlay.jpg"


#: Bytes: the longest safe segment kept whole. File systems allow 255 bytes a name, and derived
#: names add to it (``<name>.json``, ``<etag>.failed``).
MAX_SEGMENT_BYTES = 200
#: Bytes: the longest safe path kept whole. S3 allows 1024 bytes a key; prefixes, a style or
#: ETag segment and a file name are added to the path.
MAX_PATH_BYTES = 600
#: Hex digits of the hash that ends a cut name or path (64 bits).
CUT_HASH_CHARS = 16
#: Marks a cut: escaping turns every "%" of the input into "%25", so "%~" only ever comes from here.
CUT_MARK = "%~"


def _cut(safe: str, original: str, limit: int) -> str:
    """``safe`` itself when it fits ``limit`` bytes, else its head, ``%~`` and a hash of ``original``."""
    encoded = safe.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return safe
    keep = limit - len(CUT_MARK) - CUT_HASH_CHARS
    head = encoded[:keep].decode("utf-8", "ignore")  # never split a multi-byte character
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:CUT_HASH_CHARS]
    return f"{head}{CUT_MARK}{digest}"


def safe_segment(segment: str) -> str:
    # "\\" is a path separator on Windows and SeaweedFS turns it into "/": derived keys never hold one.
    # "/" only reaches here in whole values (a style name, an ETag), where it would start a segment.
    escaped = segment.replace("%", "%25").replace("\\", "%5C").replace("/", "%2F")
    if escaped == "":
        return "%00"
    if escaped in (".", ".."):
        return escaped.replace(".", "%2E")
    return _cut(escaped, segment, MAX_SEGMENT_BYTES)


def safe_path(path: str) -> str:
    """A relative path whose every segment is a plain name (see module docstring)."""
    return _cut("/".join(safe_segment(part) for part in path.split("/")), path, MAX_PATH_BYTES)


def record_path(safe_rel: str) -> str:
    """``safe_rel`` (a ``safe_path``) with the dot of every *folder* name ending in ``.json``
    escaped, so no record key (``<path>.json``) is another record's folder (module docstring).
    Injective: ``safe_segment`` never makes a name ending in ``%2Ejson`` ("%" becomes "%25")."""
    *folders, name = safe_rel.split("/")
    escaped = [f"{part[:-5]}%2E{part[-4:]}" if part.lower().endswith(SIDECAR_SUFFIX) else part
               for part in folders]
    return "/".join([*escaped, name])


def split_extension(relpath: str) -> tuple[str, str]:
    """``a/b.c.jpg`` → (``a/b.c``, ``.jpg``); a name without a dot keeps an empty extension."""
    head, slash, name = relpath.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return relpath, ""
    return head + slash + stem, "." + ext


def is_sidecar(key: str) -> bool:
    return key.lower().endswith(SIDECAR_SUFFIX)


def is_directory_marker(key: str) -> bool:
    return key.endswith("/")


@dataclass(frozen=True)
class ItemKeys:
    """Every key one input owns."""

    input: str
    relpath: str
    output_prefix: str
    manifest: str
    failure: str
    sidecar: str
    claim: str
    done_prefix: str
    #: The input's cancel request, then record (``processor.queue.cancel``).
    cancel: str

    def variant(self, style: str, index: int) -> str:
        return f"{self.output_prefix}{safe_segment(style)}-{index:02d}.png"

    @property
    def contact_sheet(self) -> str:
        return self.output_prefix + CONTACT_SHEET_NAME

    @property
    def mask(self) -> str:
        return self.output_prefix + MASK_NAME

    def output_name(self, key: str) -> str | None:
        """The plain file name of ``key`` in this input's output folder; None for any other key.

        Whoever can write the bucket can write a manifest: the API, ``processor results`` and the
        prototype's route serve, sign or download only the files a manifest names by this rule."""
        name = key[len(self.output_prefix):] if key.startswith(self.output_prefix) else ""
        return name if is_plain_name(name) else None

    def done_marker(self, etag: str, outcome: Outcome | str) -> str:
        """``<state>/done/<safe relpath>/<safe etag>.<done|failed|cancelled>``: one key per ended input
        version, so a scan learns what is finished from LIST calls alone (1000 keys a call).
        ``outcome`` is one of ``outcomes.ENDED`` (done, failed, cancelled), or its value."""
        return f"{self.done_prefix}{safe_segment(etag)}.{Outcome(outcome).value}"


class KeyLayout:
    """Derives ``ItemKeys`` from input keys for one set of prefixes."""

    def __init__(self, prefixes: PrefixSettings) -> None:
        self.prefixes = prefixes
        self.claims_prefix = prefixes.state + "claims/"
        self.done_prefix = prefixes.state + "done/"
        #: Blobs workers share (label tables of the caption stage), under ``label-tables/`` etc.
        self.cache_prefix = prefixes.state + "cache/"
        #: Written by ``retry`` and ``submit`` so that daemons make their next scan a full one
        #: (``processor.queue.rescan``): their changes may sort before a daemon's high-water mark.
        self.rescan_hint = prefixes.state + "rescan.json"
        #: The API's idempotency records (``processor.queue.idempotency``).
        self.idempotency_prefix = prefixes.state + "api/idempotency/"
        #: The API's webhook records: pending, claims, done (``processor.queue.webhook_records``).
        self.webhooks_prefix = prefixes.state + "api/webhooks/"
        #: Cancel requests and records, one per input (``processor.queue.cancel``).
        self.cancel_prefix = prefixes.state + "cancel/"
        #: One capabilities record per running worker (``processor.queue.workers``).
        self.workers_prefix = prefixes.state + "workers/"

    def relpath(self, input_key: str) -> str:
        if not input_key.startswith(self.prefixes.inputs):
            raise ValueError(f"{input_key!r} is not under {self.prefixes.inputs!r}")
        return input_key[len(self.prefixes.inputs) :]

    def for_input(self, input_key: str) -> ItemKeys:
        relpath = self.relpath(input_key)
        stem, _ext = split_extension(relpath)
        safe_stem = safe_path(stem)
        safe_rel = safe_path(relpath)
        digest = hashlib.sha256(input_key.encode("utf-8")).hexdigest()[:40]
        return ItemKeys(
            input=input_key,
            relpath=relpath,
            output_prefix=f"{self.prefixes.outputs}{safe_stem}/",
            manifest=f"{self.prefixes.outputs}{safe_stem}/{MANIFEST_NAME}",
            failure=f"{self.prefixes.failed}{record_path(safe_rel)}.json",
            sidecar=f"{self.prefixes.inputs}{stem}{SIDECAR_SUFFIX}",
            claim=f"{self.claims_prefix}{digest}.json",
            done_prefix=f"{self.done_prefix}{safe_rel}/",
            cancel=f"{self.cancel_prefix}{record_path(safe_rel)}.json",
        )

    def parse_done_marker(self, key: str) -> tuple[str, str, str] | None:
        """A done marker key → (safe relpath, safe etag, outcome); None for anything else."""
        if not key.startswith(self.done_prefix):
            return None
        safe_rel, sep, name = key[len(self.done_prefix) :].rpartition("/")
        etag, dot, outcome = name.rpartition(".")
        if not sep or not dot or outcome not in ENDED:
            return None
        return safe_rel, etag, outcome
