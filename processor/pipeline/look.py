"""An input's own style picture: ``style_image: <bucket key>`` in its sidecar, its
``x-amz-meta-style-image`` metadata or the API's ``style_image`` field, read for that input only.

Contract (everything here is untrusted input):

- The key names one object under ``prefixes.styles`` (default ``styles/``), never under the
  inputs, outputs, failed or state prefixes (``PrefixSettings`` keeps them disjoint); no ``..``,
  ``.`` or empty parts, no leading ``/``, no ``\\``, no control characters, no scheme
  (``bucket:``, ``file:``): it is a bucket key, never a local path (``check_style_image_key``).
- Every style the input runs must have an ``ip_adapter`` (the model that reads the picture); a
  style with ``ip_adapter`` but no style-level ``style_image`` takes its picture from each input and
  refuses an input without one (``validate_style_image``). Both are ``InvalidSidecar`` naming the
  style and the key.
- The worker reads the object on its fetch thread with the input's byte cap
  (``pipeline.decode.max_bytes``) and decodes it with the inputs' decoder and limits
  (``decode_style_image``). Missing, too large, unreadable or undecodable: that input's failure
  record, the other inputs go on.
- The picture travels in ``ItemContext.style_image``, not in the style's settings: the engine
  registry's cache key does not see it, so one engine serves every picture and the style's own
  picture stays as it was loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from processor.config import DecodeSettings, PrefixSettings
from processor.errors import InvalidSidecar, ItemError
from processor.names import is_plain_path

#: The object metadata key of a per-input style picture (``x-amz-meta-style-image`` on S3). A
#: hyphen, not an underscore: proxies (nginx by default) drop header names with underscores.
STYLE_IMAGE_METADATA_KEY = "style-image"
#: Characters of a style picture's key (S3 keys are at most 1024 bytes).
MAX_STYLE_IMAGE_KEY_CHARS = 1024
#: Where the picture a variant used came from (``parameters.ip_adapter.style_image_source``).
FROM_INPUT = "input"
FROM_STYLE = "style"


@dataclass(frozen=True)
class InputStyleImage:
    """One input's own style picture, decoded: what the IP-Adapter engine uses for that input."""

    #: The bucket key (under ``prefixes.styles``).
    key: str
    #: sha256 of the object's bytes.
    sha256: str
    etag: str | None
    image: Image.Image
    #: Where the key was given: ``sidecar`` (also the API's field) or ``metadata``.
    given_in: str

    @property
    def source(self) -> str:
        """The key as ``style_image`` sources are recorded (``bucket:<key>``, as in the config)."""
        return f"bucket:{self.key}"


def check_style_image_key(value: Any, prefixes: PrefixSettings, where: str) -> str:
    """``value`` as a style picture key, or ``InvalidSidecar`` saying what to change (see the module
    docstring)."""
    prefix = prefixes.styles
    example = f"{prefix}look.png"
    if not isinstance(value, str) or not value.strip():
        raise InvalidSidecar(f"{where}: style_image must be a bucket key like {example!r}",
                             hint=_key_hint(prefix))
    shown = value if len(value) <= 200 else value[:200] + "..."
    if len(value) > MAX_STYLE_IMAGE_KEY_CHARS:
        raise InvalidSidecar(f"{where}: style_image is {len(value):,} characters; at most "
                             f"{MAX_STYLE_IMAGE_KEY_CHARS:,}", hint=_key_hint(prefix))
    if not value.isprintable() or "\\" in value:
        raise InvalidSidecar(f"{where}: style_image {shown!r} holds control characters or '\\'; name a key "
                             f"like {example!r}", hint=_key_hint(prefix))
    if value.startswith("/") or value.startswith("~") or ":" in value.split("/", 1)[0]:
        raise InvalidSidecar(f"{where}: style_image {shown!r} is a path or URL; it names a bucket key under "
                             f"{prefix!r} (prefixes.styles), like {example!r}", hint=_key_hint(prefix))
    if not is_plain_path(value):
        raise InvalidSidecar(f"{where}: style_image {shown!r} has empty, '.' or '..' parts; name one object "
                             f"like {example!r}", hint=_key_hint(prefix))
    if not value.startswith(prefix) or value == prefix:
        raise InvalidSidecar(f"{where}: style_image {shown!r} is not under {prefix!r} (prefixes.styles); a "
                             f"style picture is read from there only, like {example!r}", hint=_key_hint(prefix))
    return value


def validate_style_image(key: str | None, style_names: Sequence[str], styles: Mapping[str, Any],
                         prefixes: PrefixSettings, where: str) -> str | None:
    """The checked key (None: the input gives none). ``InvalidSidecar`` when the key is bad, when a
    style of the input cannot take a picture, or when a style needs one and the input gives none."""
    if key is not None:
        key = check_style_image_key(key, prefixes, where)
        unable = [n for n in style_names if n in styles and styles[n].addons().ip_adapter is None]
        if unable:
            able = sorted(n for n, s in styles.items() if s.addons().ip_adapter is not None)
            raise InvalidSidecar(
                f"{where}: style_image {key!r} is for a style with an ip_adapter; style "
                f"{unable[0]!r} has none",
                hint=(f"Name only styles that take a style picture in the sidecar's styles ({', '.join(able)})"
                      if able else "No style of this worker takes a style picture; drop style_image")
                + ", or drop style_image.")
        return key
    needing = [n for n in style_names if n in styles and styles[n].addons().ip_adapter is not None
               and styles[n].addons().style_image is None]
    if needing:
        raise InvalidSidecar(
            f"{where}: style {needing[0]!r} takes its style picture from each input, and this input names "
            f"none", hint=f"Upload a picture of the look under {prefixes.styles!r} and set style_image to its "
                          f"key in the sidecar (or x-amz-meta-{STYLE_IMAGE_METADATA_KEY}), or pick another style.")
    return None


def decode_style_image(data: bytes, key: str, etag: str | None, limits: DecodeSettings,
                       given_in: str) -> InputStyleImage:
    """Decode an input's style picture with the inputs' decoder and ``limits``; ``InvalidSidecar``
    naming the key and what is wrong with the picture otherwise."""
    from processor.pipeline.decode import decode_image

    try:
        decoded = decode_image(data, limits, name=f"style_image {key}")
    except ItemError as exc:
        raise InvalidSidecar(str(exc),
                             hint=f"{exc.hint} Replace the style picture {key} (or drop style_image).") from None
    return InputStyleImage(key=key, sha256=hashlib.sha256(data).hexdigest(), etag=etag, image=decoded.image,
                           given_in=given_in)


def _key_hint(prefix: str) -> str:
    return (f"Upload the picture of the look under {prefix!r} and set style_image to that key "
            f"(e.g. {prefix}look.png), or drop style_image.")
