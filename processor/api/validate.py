"""Turn a request's fields into a ``Submission``, or a problem that names the field to change.

No rule of its own: the overrides become the sidecar mapping a user could have written next to a
photo, checked by ``pipeline.sidecar.validate_overrides``, the one validator the worker also runs
on sidecars and metadata. The photo is
sniffed from its first bytes (``pipeline.decode.sniff_format``), as the worker sniffs it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from processor.api.problems import Problem
from processor.api.upload import IMAGE_FIELD, STYLE_IMAGE_FIELD
from processor.config import Settings
from processor.errors import InvalidSidecar
from processor.pipeline.decode import SNIFF_BYTES, describe_unsupported, sniff_format
from processor.pipeline.sidecar import ItemOverrides, Sidecar, validate_overrides
from processor.queue.submit import EXTENSIONS, Submission
from processor.queue.webhook_records import ALL_EVENTS, WebhookEvent

#: Request fields, in the order documented; all but ``image`` optional.
FIELDS = ("image", "styles", "variants", "seed", "prompt", "negative", "instruction",
          "background_mode", "background_prompt", "webhook", "webhook_events", "style_image")
#: Fields a form may repeat (or give comma-separated), and JSON gives as a list of strings.
LIST_FIELDS = ("styles", "webhook_events")
#: Sidecar locations → the request field that sets them.
_FIELD_OF = {"background.mode": "background_mode", "background.prompt": "background_prompt",
             "background": "background_mode"}

Resolver = Callable[[str], list[str]]


def decode_base64_image(value: Any, limit: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise Problem(422, "image must be the photo as a base64 string", field=IMAGE_FIELD,
                      hint='Send {"image": "<base64 of the file>"} or a multipart form with an image file.')
    if value.startswith("data:") and "," in value:  # a data: URL, as browsers make them
        value = value.split(",", 1)[1]
    if (len(value) * 3) // 4 > limit + 2:
        raise Problem(413, f"the photo is larger than {limit:,} bytes (api.max_upload_bytes)", field=IMAGE_FIELD,
                      hint=f"Downscale the photo below {limit:,} bytes, or raise api.max_upload_bytes.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(422, "image is not valid base64", field=IMAGE_FIELD,
                      hint="Encode the file's bytes with standard base64 (RFC 4648), no line breaks.") from None


def build_submission(image: bytes | None, fields: Mapping[str, Any], settings: Settings, *,
                     limit: int, resolve: Resolver | None = None, style_image: bytes | None = None,
                     filename: str | None = None) -> Submission:
    """Validate everything before anything is written. ``fields`` come from a form (strings,
    ``styles`` repeated or comma-separated) or from JSON (typed values); ``style_image`` is a form's
    picture file part (a text ``style_image`` field is a key, or base64: ``style_image_value``);
    ``filename`` the photo part's file name (kept with the upload, ``queue.submit.filename_metadata``)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise Problem(422, f"unknown field(s): {', '.join(unknown)}", field=unknown[0],
                      hint=f"Known fields: {', '.join(FIELDS)}.")
    if image is None:
        raise Problem(422, "no photo: the image field is missing", field=IMAGE_FIELD,
                      hint="Send the photo in the form field 'image' (curl -F image=@photo.jpg) or as base64 "
                      "in the JSON member 'image'.")
    if len(image) > limit:
        raise Problem(413, f"the photo is {len(image):,} bytes; limit is {limit:,} (api.max_upload_bytes)",
                      field=IMAGE_FIELD, hint="Downscale the photo, or raise api.max_upload_bytes.")
    fmt = sniff_format(image[:SNIFF_BYTES])
    if fmt is None or fmt not in EXTENSIONS:
        message, hint = describe_unsupported(image)
        raise Problem(415, message, field=IMAGE_FIELD, hint=hint)
    sidecar = sidecar_mapping(fields)
    look, look_key = style_image, None
    if fields.get(STYLE_IMAGE_FIELD) is not None:
        if look is not None:
            raise Problem(422, "style_image is given twice (a file and a field)", field=STYLE_IMAGE_FIELD,
                          hint="Send the picture of the look once: a file, a key or base64.")
        look, look_key = style_image_value(fields[STYLE_IMAGE_FIELD], settings.prefixes.styles, limit)
    look_format = None
    if look_key is not None:  # an existing picture: the sidecar names it as given
        check_with_style_image(sidecar, look_key, settings)
        sidecar["style_image"] = look_key
    elif look is not None:
        look_format = _picture_format(look, limit)
        # A key of the form the upload will get (``processor.queue.submit.write_job``), for the checks.
        check_with_style_image(sidecar, settings.prefixes.styles + settings.api.submit_prefix + "upload"
                               + EXTENSIONS[look_format], settings)
    else:
        check_sidecar(sidecar, settings)
    webhook = fields.get("webhook")
    if webhook is not None:
        webhook = check_webhook(str(webhook), settings.api.webhook_allow, resolve)
    events = webhook_events(fields.get("webhook_events"), webhook)
    return Submission(image=image, format=fmt, sidecar=sidecar, webhook=webhook, webhook_events=events,
                      style_image=look, style_image_format=look_format, filename=filename)


def webhook_events(value: Any, webhook: str | None) -> frozenset[WebhookEvent]:
    """The ``webhook_events`` a request chose (a list, repeated form fields or comma-separated);
    every end of the job when it names none. 422 for an unknown event, or events without a webhook."""
    if value is None:
        return ALL_EVENTS
    known = ", ".join(e.value for e in WebhookEvent)
    hint = f"Name one or more of: {known}."
    if webhook is None:
        raise Problem(422, "webhook_events without a webhook", field="webhook_events",
                      hint="Send the webhook URL too, or leave webhook_events out.")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise Problem(422, "webhook_events must be a list of event names", field="webhook_events", hint=hint)
    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    unknown = [n for n in names if n not in {e.value for e in WebhookEvent}]
    if unknown or not names:
        what = f"unknown webhook event(s): {', '.join(unknown)}" if unknown else "webhook_events names no event"
        raise Problem(422, what, field="webhook_events", hint=hint)
    return frozenset(WebhookEvent(n) for n in names)


def style_image_value(value: Any, prefix: str, limit: int) -> tuple[bytes | None, str | None]:
    """A text ``style_image``: (picture bytes, None) for base64 or a ``data:`` URL, (None, key) for a
    key under ``prefix`` (checked with the sidecar's rules afterwards); 422 for anything else."""
    hint = (f"Send the picture as a file (-F style_image=@look.png), as base64, or the key of a picture "
            f"already under {prefix!r}.")
    if not isinstance(value, str) or not value:
        raise Problem(422, f"style_image must be a key under {prefix!r} or a base64 picture", field=STYLE_IMAGE_FIELD,
                      hint=hint)
    if value.startswith(prefix):
        return None, value
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    if (len(value) * 3) // 4 > limit + 2:
        raise Problem(413, f"the style picture is larger than {limit:,} bytes (api.max_upload_bytes)",
                      field=STYLE_IMAGE_FIELD, hint=f"Downscale it below {limit:,} bytes.")
    try:
        return base64.b64decode(value, validate=True), None
    except (binascii.Error, ValueError):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise Problem(422, f"style_image {shown!r} is neither a key under {prefix!r} (prefixes.styles) nor "
                      "base64 of a picture", field=STYLE_IMAGE_FIELD, hint=hint) from None


def _picture_format(data: bytes, limit: int) -> str:
    """The style picture's sniffed format, capped and sniffed like the photo."""
    if len(data) > limit:
        raise Problem(413, f"the style picture is {len(data):,} bytes; limit is {limit:,} (api.max_upload_bytes)",
                      field=STYLE_IMAGE_FIELD, hint="Downscale the picture, or raise api.max_upload_bytes.")
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None or fmt not in EXTENSIONS:
        message, hint = describe_unsupported(data)
        raise Problem(415, f"style_image: {message}", field=STYLE_IMAGE_FIELD, hint=hint)
    return fmt


def check_with_style_image(sidecar: dict[str, object], key: str, settings: Settings) -> None:
    """``check_sidecar`` with the picture's key in it; a refusal of the picture itself (the key,
    or a style that takes none) is named as the ``style_image`` field."""
    from processor.pipeline.look import validate_style_image

    try:
        validate_overrides(sidecar | {"style_image": key}, settings, where="request")
    except InvalidSidecar as exc:
        listed = sidecar.get("styles")
        names = listed if isinstance(listed, list) and all(isinstance(n, str) for n in listed) else settings.run.styles
        try:
            validate_style_image(key, names, settings.styles, settings.prefixes, "request")
        except InvalidSidecar as own:
            raise Problem(422, str(own), field=STYLE_IMAGE_FIELD, hint=own.hint) from None
        raise Problem(422, str(exc), field=_first_field(sidecar), hint="Change the field named in the message.",
                      errors=_field_errors(sidecar)) from None


def sidecar_mapping(fields: Mapping[str, Any]) -> dict[str, object]:
    """The sidecar a user would write for these fields (absent fields are left out)."""
    sidecar: dict[str, object] = {}
    styles = fields.get("styles")
    if styles is not None:
        if isinstance(styles, str):
            styles = [styles]
        if isinstance(styles, list) and all(isinstance(s, str) for s in styles):
            styles = [name.strip() for s in styles for name in s.split(",") if name.strip()]
        sidecar["styles"] = styles
    for name in ("variants", "seed", "prompt", "negative", "instruction"):
        if fields.get(name) is not None:
            sidecar[name] = fields[name]
    # A form sends every field as text; the sidecar validator is strict (a JSON "3" is refused
    # there), so whole numbers written as digits become numbers here and nothing else changes.
    for name in ("variants", "seed"):
        value = sidecar.get(name)
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 20:
            sidecar[name] = int(value.strip())
    background = {key: fields[f"background_{key}"] for key in ("mode", "prompt")
                  if fields.get(f"background_{key}") is not None}
    if background:
        sidecar["background"] = background
    return sidecar


def check_sidecar(sidecar: dict[str, object], settings: Settings) -> ItemOverrides | None:
    """The request's overrides through ``validate_overrides``, the one validator the worker runs on
    a sidecar (bounds, caps, duplicate and unknown styles, each style's own rules); a 422 problem
    naming the field otherwise."""
    if not sidecar:
        return None
    try:
        return validate_overrides(sidecar, settings, where="request")
    except InvalidSidecar as exc:
        # The sidecar's own hint speaks of a file next to the photo; here the fields are the request's.
        raise Problem(422, str(exc), field=_first_field(sidecar), hint="Change the field named in the message.",
                      errors=_field_errors(sidecar)) from None


def _field_errors(sidecar: dict[str, object]) -> list[dict[str, str]]:
    """One ``{field, message}`` per bad field, from the sidecar model's own errors."""
    try:
        Sidecar.model_validate(sidecar)
    except ValidationError as exc:
        out = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            out.append({"field": _FIELD_OF.get(loc, loc.split(".")[0]), "message": e["msg"]})
        return out
    return []


def _first_field(values: Mapping[str, object]) -> str | None:
    errors = _field_errors(dict(values))
    if errors:
        return errors[0]["field"]
    return next(iter(values), None)


# --------------------------------------------------------------------------- webhooks


def host_allowed(host: str, allow: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allow:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*.") and host.endswith(entry[1:]) and host != entry[2:]:
            return True
        if host == entry:
            return True
    return False


def default_resolve(host: str) -> list[str]:
    # An IPv4/IPv6 sockaddr starts with the address as text; the str() only narrows typeshed's
    # union, which also covers the (int, bytes) sockaddr of a Python built without IPv6.
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL that passed ``vet_webhook``, with the addresses it was vetted at.

    ``pinned()`` is the request to send: to one of those addresses, with the host name in the
    ``Host`` header and as the TLS server name (so the certificate is still checked against the
    name). Connecting by name instead would resolve it a second time, and a DNS answer that
    changes between the check and the connect (rebinding) could reach a private address.
    """

    url: str
    addresses: tuple[str, ...]

    def pinned(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """``(url, headers, httpx extensions)`` for a request to ``addresses[0]``."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        address = self.addresses[0]
        netloc = f"[{address}]" if ":" in address else address
        if parts.port is not None:
            netloc += f":{parts.port}"
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        return parts._replace(netloc=netloc).geturl(), {"host": parts.netloc}, extensions


def check_webhook(url: str, allow: list[str], resolve: Resolver | None = None) -> str:
    """The URL when its host is on ``api.webhook_allow`` and, unless the entry names it exactly as
    an address, resolves to public addresses only; else 422."""
    return vet_webhook(url, allow, resolve).url


def vet_webhook(url: str, allow: list[str], resolve: Resolver | None = None) -> WebhookTarget:
    """``check_webhook``, keeping the addresses it checked (see ``WebhookTarget``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise Problem(422, f"webhook {url!r} is not an http(s) URL with a host", field="webhook",
                      hint="Send a URL like https://hooks.example.com/toys, without credentials in it.")
    host = parts.hostname
    if not host_allowed(host, allow):
        raise Problem(422, f"webhook host {host!r} is not on the allow-list (api.webhook_allow)", field="webhook",
                      hint="Use a host the operator allowed, or ask them to add yours to api.webhook_allow.")
    explicit = any(entry.lower() == host.lower() for entry in allow)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = (resolve or default_resolve)(host)
        except OSError as exc:
            raise Problem(422, f"webhook host {host!r} does not resolve ({exc})", field="webhook",
                          hint="Check the host name.") from None
    private = [a for a in addresses if not ipaddress.ip_address(a).is_global]
    if private and not explicit:
        raise Problem(422, f"webhook host {host!r} resolves to a private or loopback address ({private[0]})",
                      field="webhook", hint="Webhooks go to public addresses only, unless the operator lists the "
                      "host itself (not a wildcard) in api.webhook_allow.")
    return WebhookTarget(url, tuple(addresses))
