"""Read a request body as it streams in, with a running byte count: never held whole before the
size check, and cut off (413) the moment it passes the cap.

``multipart/form-data``: python-multipart's push parser. The ``image`` part (and a ``style_image``
file part, the picture of the look) goes to a spooled temporary file (memory up to
``SPOOL_MEMORY_BYTES``, then disk), each capped at the limit; every other part is a small text
field; the whole body is capped too (``form_limit``: the files, the fields and the framing), so
bytes before the first part or after the last one cannot stream on forever. JSON: the body is read
up to the size a base64 photo at the cap can have, and parsed with limits (``parse_json_object``):
a body of thousands of small values is refused before it costs many times its size in memory.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

# The pure-Python object and array parsers and scanner: public in the module, absent from typeshed.
from json.decoder import JSONArray, JSONObject  # type: ignore[attr-defined]
from json.scanner import py_make_scanner  # type: ignore[attr-defined]
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from processor.api.problems import Problem

#: Bytes of an upload kept in memory before the spool moves to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024
#: Bytes: one text field of a form (a prompt is at most 2000 characters, in UTF-8 at most 8000).
MAX_FIELD_BYTES = 16 * 1024
#: Bytes: every text field of a form together, and what a JSON body may carry beside its image.
MAX_FIELDS_BYTES = 64 * 1024
#: Parts a form may have (the image and the documented fields).
MAX_PARTS = 32
#: Bytes of a form's framing (boundaries, part headers, bytes around the parts) beyond its files
#: and fields.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Values a JSON body may hold in all, and how deep: an object of the documented fields, one of
#: them a list of style names. Anything bigger is not a request of ours.
MAX_JSON_VALUES = 256
MAX_JSON_DEPTH = 3
#: The form field (and JSON member) that carries the photo.
IMAGE_FIELD = "image"
#: The form field (and JSON member) of the picture of the look wanted: a file part (spooled and
#: capped like the photo), or text naming a key under ``prefixes.styles``.
STYLE_IMAGE_FIELD = "style_image"


@dataclass
class Form:
    """A parsed form: the photo's bytes (None when no ``image`` part came) and the text fields."""

    image: bytes | None
    fields: dict[str, list[str]] = field(default_factory=dict)
    #: The ``style_image`` file part's bytes (a text ``style_image`` is in ``fields``).
    style_image: bytes | None = None
    #: The file name the ``image`` part came with (its ``Content-Disposition`` ``filename``).
    image_filename: str | None = None


def too_large(limit: int, what: str = "the photo", name: str = IMAGE_FIELD) -> Problem:
    return Problem(413, f"{what} is larger than {limit:,} bytes (api.max_upload_bytes)", field=name,
                   hint=f"Downscale {what} below {limit:,} bytes, or raise api.max_upload_bytes.")


def form_limit(limit: int, files: int = 2) -> int:
    """Bytes a whole form with ``files`` file parts of at most ``limit`` bytes may take."""
    return files * limit + MAX_FIELDS_BYTES + FORM_OVERHEAD_BYTES


async def read_form(chunks: AsyncIterator[bytes], content_type: str, limit: int) -> Form:
    """Parse a multipart body from ``chunks``; 413 as soon as the image passes ``limit`` bytes, or
    the whole body ``form_limit(limit)``."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart/form-data without a boundary", field="Content-Type",
                      hint="Let your HTTP client build the form (curl -F image=@photo.jpg).")
    state = _FormState(limit)
    parser = MultipartParser(boundary, callbacks={
        "on_part_begin": state.part_begin, "on_part_data": state.part_data, "on_part_end": state.part_end,
        "on_header_field": state.header_field, "on_header_value": state.header_value,
        "on_header_end": state.header_end,
    })
    total, cap = 0, form_limit(limit)
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > cap:
                raise Problem(413, f"the form is larger than {cap:,} bytes (two photos of api.max_upload_bytes "
                              "and the fields)", hint="Send one photo, a picture of the look at most, and the "
                              "documented fields.")
            parser.write(chunk)
        parser.finalize()
    except Problem:
        state.close()
        raise
    except FormParserError as exc:  # python-multipart's parse errors: a malformed body
        state.close()
        raise Problem(400, f"the multipart body could not be parsed: {exc}", hint="Send a well-formed "
                      "multipart/form-data body (curl -F image=@photo.jpg).") from None
    image = state.image_bytes()
    return Form(image, state.fields, state.style_image_bytes(), state.image_filename)


class _FormState:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, list[str]] = {}
        self.parts = 0
        self.field_bytes = 0
        self._header_field = b""
        self._header_value = b""
        self._name: str | None = None
        self._value = bytearray()
        self._image: tempfile.SpooledTemporaryFile | None = None
        self._image_size = 0
        self._image_done = False
        #: The current part has a filename (a file, not a text field).
        self._file = False
        #: The ``image`` part's file name, as the client sent it.
        self.image_filename: str | None = None
        self._look: tempfile.SpooledTemporaryFile | None = None
        self._look_size = 0
        self._look_done = False

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise Problem(422, f"the form has more than {MAX_PARTS} parts",
                          hint="Send one image and the documented fields.")
        self._name = None
        self._file = False
        self._value = bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            _, options = parse_options_header(self._header_value)
            self._name = options.get(b"name", b"").decode("utf-8", "replace")
            self._file = b"filename" in options
            if self._name == IMAGE_FIELD and self._file:
                self.image_filename = options[b"filename"].decode("utf-8", "replace")
        self._header_field, self._header_value = b"", b""

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == IMAGE_FIELD:
            if self._image_done:
                raise Problem(422, "the form has more than one image part", field=IMAGE_FIELD,
                              hint="Send one photo per job.")
            if self._image is None:
                self._image = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
            self._image_size += end - start
            if self._image_size > self.limit:
                raise too_large(self.limit)
            self._image.write(data[start:end])
            return
        if self._name == STYLE_IMAGE_FIELD and self._file:
            if self._look_done:
                raise Problem(422, "the form has more than one style_image part", field=STYLE_IMAGE_FIELD,
                              hint="Send one picture of the look per job.")
            if self._look is None:
                self._look = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
            self._look_size += end - start
            if self._look_size > self.limit:
                raise too_large(self.limit, "the style picture", STYLE_IMAGE_FIELD)
            self._look.write(data[start:end])
            return
        self.field_bytes += end - start
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES or self.field_bytes > MAX_FIELDS_BYTES:
            raise Problem(413, f"form field {self._name!r} is longer than {MAX_FIELD_BYTES:,} bytes", field=self._name,
                          hint="Shorten the field (a prompt is at most 2000 characters).")

    def part_end(self) -> None:
        if self._name == IMAGE_FIELD:
            if self._image is None:  # an empty image part: an empty photo (415 names it)
                self._image = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
            self._image_done = True
            return
        if self._name == STYLE_IMAGE_FIELD and self._file:
            if self._look is None:  # an empty file part: an empty picture (415 names it)
                self._look = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
            self._look_done = True
            return
        if self._name:
            try:
                text = bytes(self._value).decode("utf-8")
            except UnicodeDecodeError:
                raise Problem(422, f"form field {self._name!r} is not UTF-8 text", field=self._name,
                              hint="Send text fields as UTF-8.") from None
            self.fields.setdefault(self._name, []).append(text)

    def image_bytes(self) -> bytes | None:
        if self._image is None:
            return None
        self._image.seek(0)
        data = self._image.read()
        self._image.close()
        return data

    def style_image_bytes(self) -> bytes | None:
        if self._look is None:
            return None
        self._look.seek(0)
        data = self._look.read()
        self._look.close()
        return data

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
        if self._look is not None:
            self._look.close()


async def read_capped(chunks: AsyncIterator[bytes], limit: int, what: str, *, field: str | None = IMAGE_FIELD,
                      hint: str = "Downscale the photo, or raise api.max_upload_bytes.") -> bytearray:
    """The whole body when it is at most ``limit`` bytes; 413 the moment it passes that. A
    bytearray: no second copy of a large body."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise Problem(413, f"{what} is larger than {limit:,} bytes", field=field, hint=hint)
    return body


def parse_json_object(body: bytes | bytearray, *, hint: str, max_values: int = MAX_JSON_VALUES,
                      max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The JSON object in ``body``; 422 for invalid JSON, for anything but an object, and, as
    soon as the parser meets them, for more than ``max_values`` values or nesting deeper than
    ``max_depth``: memory is spent on the values of a request, not on thousands of empty ones."""
    try:
        text = body.decode(json.detect_encoding(body))
        data = _LimitedDecoder(max_values, max_depth).decode(text)
    except _TooMuch as exc:
        raise Problem(422, f"the JSON body is not a request: {exc}", hint=hint) from None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Problem(422, "the body is not valid JSON", hint=hint) from None
    if not isinstance(data, dict):
        raise Problem(422, "the JSON body must be an object", hint=hint)
    return data


class _TooMuch(Exception):
    pass


class _LimitedDecoder(json.JSONDecoder):
    """The standard library's decoder (its pure-Python scanner, whose object and array parsers can
    be wrapped; strings are still scanned in C) counting values and depth as it goes."""

    def __init__(self, max_values: int, max_depth: int) -> None:
        super().__init__()
        self.max_values, self.max_depth = max_values, max_depth
        self.values = 0
        self.depth = 0
        self.parse_object = self._object
        self.parse_array = self._array
        self.scan_once = py_make_scanner(self)

    def _counting(self, scan_once: Callable[[str, int], Any]) -> Callable[[str, int], Any]:
        def counted(string: str, idx: int) -> Any:
            self.values += 1
            if self.values > self.max_values:
                raise _TooMuch(f"more than {self.max_values} values")
            return scan_once(string, idx)
        return counted

    def _nested(self) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise _TooMuch(f"nested deeper than {self.max_depth} levels")

    def _object(self, s_and_end: tuple[str, int], strict: bool, scan_once: Callable[[str, int], Any],
                *args: Any) -> tuple[Any, int]:
        self._nested()
        try:
            return JSONObject(s_and_end, strict, self._counting(scan_once), *args)
        finally:
            self.depth -= 1

    def _array(self, s_and_end: tuple[str, int], scan_once: Callable[[str, int], Any]) -> tuple[Any, int]:
        self._nested()
        try:
            return JSONArray(s_and_end, self._counting(scan_once))
        finally:
            self.depth -= 1


def json_body_limit(image_limit: int) -> int:
    """Bytes a JSON body with a base64 photo of ``image_limit`` bytes may take (4 characters per 3
    bytes) plus its other fields."""
    return (image_limit + 2) // 3 * 4 + MAX_FIELDS_BYTES
