"""The API's OpenAPI document (``/openapi.json``, shown at ``/docs``), true to what the routes do.

FastAPI writes most of it from the routes, their response models and their dependencies (the
``bearer`` and ``cookie`` security schemes come from ``deps.authorize``). ``document`` adds what
FastAPI cannot see, and ``tests/unit/test_openapi.py`` holds the result to the server's answers:

- ``POST /v1/jobs`` and the prototype's route read their bodies themselves (streamed and capped as
  they arrive, ``processor.api.upload``), so their request bodies are declared here
  (``request_bodies``): ``multipart/form-data`` (``JobForm``) and ``application/json``
  (``JobJson``; the prototype's ``DirectRequest``).
- Every error is ``application/problem+json`` (``ProblemOut``): each route names the statuses it
  can answer with ``problems(...)``. FastAPI's own 422 (``HTTPValidationError``), which this API
  never sends, becomes a problem where the route has query parameters to get wrong, and is dropped
  where it has none.
- An event stream's events and the schema of each one's data: ``x-events`` on its ``200`` answer
  (``EVENTS``), also listed in its description.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from processor.api.problems import MEDIA_TYPE
from processor.api.schemas import DirectRequest, JobForm, JobJson, JobOut, ProblemOut, Progress, StreamEnded

REF = "#/components/schemas/{model}"
#: Models the document names that no route's response model brings in.
EXTRA_MODELS: tuple[type[BaseModel], ...] = (ProblemOut, JobForm, JobJson, DirectRequest, StreamEnded, Progress)
#: Of them, the request bodies (their schemas say what a request may carry).
REQUESTS: tuple[type[BaseModel], ...] = (JobForm, JobJson, DirectRequest)
#: The event stream's events (``routes.events``) and the models of each one's data.
EVENTS: dict[str, tuple[type[BaseModel], ...]] = {
    "status": (JobOut,), "progress": (Progress,), "done": (JobOut,), "failed": (JobOut, StreamEnded),
    "cancelled": (JobOut,), "expired": (StreamEnded,),
}
#: Statuses every route that takes a token can answer: no or a wrong token, too many wrong tokens,
#: an open server's Host check, and a bucket that does not answer.
AUTH_AND_STORE = (401, 421, 429, 503)
#: Statuses every request with a body can answer besides: a state change with the login cookie
#: from another site, a body that stalls, one over its cap.
BODY = (403, 408, 413)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route's problem answers (``ProblemOut`` as ``application/problem+json``)."""
    return {status: {"description": HTTPStatus(status).phrase, "content": {MEDIA_TYPE: {"schema": ref(ProblemOut)}}}
            for status in sorted(set(statuses))}


def request_bodies(**models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring a route's request body in each media type (``multipart`` →
    ``multipart/form-data``, ``json`` → ``application/json``)."""
    media = {"multipart": "multipart/form-data", "json": "application/json"}
    content: dict[str, Any] = {media[kind]: {"schema": ref(model)} for kind, model in models.items()}
    if "multipart" in models:
        content["multipart/form-data"]["encoding"] = {"image": {"contentType": "image/*"}}
    return {"requestBody": {"required": True, "content": content}}


def event_stream() -> dict[int | str, dict[str, Any]]:
    """The ``200`` answer of ``GET /v1/jobs/{job}/events``: ``text/event-stream``."""
    listed = "; ".join(f"`{name}` ({' or '.join(m.__name__ for m in models)})" for name, models in EVENTS.items())
    return {200: {
        "description": (
            "Server-sent events until the job ends: `event: <name>` then `data: <JSON>`. Events: "
            f"{listed}. `status` comes first and on each change; `done`, `failed` and `cancelled` end the "
            "stream, and so does `expired` when the stream reaches api.stream_max_s (reconnect); a job whose "
            "input is deleted while streamed ends with `failed` and a StreamEnded. Comments (`: keep-alive`) "
            "keep a quiet stream open."),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "x-events": {name: ref(models[0]) if len(models) == 1 else {"anyOf": [ref(m) for m in models]}
                     for name, models in EVENTS.items()},
    }}


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document (module docstring), built once."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    _, extra = models_json_schema([(m, "validation" if m in REQUESTS else "serialization") for m in EXTRA_MODELS],
                                  ref_template=REF)
    for name, schema in extra.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            _problem_422(path, operation)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = doc
    return doc


def _problem_422(path: str, operation: dict[str, Any]) -> None:
    """FastAPI's default 422 becomes a problem when the route has parameters besides the path's."""
    response = operation.get("responses", {}).get("422")
    if response is None or MEDIA_TYPE in response.get("content", {}):
        return
    if any(p.get("in") != "path" for p in operation.get("parameters", [])):
        operation["responses"]["422"] = problems(422)[422]
    else:
        del operation["responses"]["422"]


def install(app: FastAPI) -> None:
    """Serve ``document(app)`` at ``/openapi.json``."""
    build: Callable[[], dict[str, Any]] = lambda: document(app)  # noqa: E731 - FastAPI calls app.openapi()
    app.openapi = build  # type: ignore[method-assign]
