"""Errors as ``application/problem+json`` (RFC 9457): every one names what to change.

Members: ``type`` (``about:blank``: the status says what kind of problem it is), ``title`` (the
status phrase), ``status``, ``detail`` (what was wrong), and our extensions ``field`` (the request
field or header at fault, when there is one), ``hint`` (what to change) and ``errors`` (one entry
per bad field: ``{field, message}``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """Raised by handlers and turned into a problem response by the app's exception handler."""

    def __init__(self, status: int, detail: str, *, field: str | None = None, hint: str | None = None,
                 errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.hint = hint
        self.errors = errors
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(self.status).phrase,
                                "status": self.status, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        if self.hint is not None:
            body["hint"] = self.hint
        if self.errors:
            body["errors"] = self.errors
        return body | self.extra

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, media_type=MEDIA_TYPE, headers=self.headers)
