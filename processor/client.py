"""A Python client of the HTTP API (``processor serve``): small, on httpx, with typed results (the
API's own response models, ``processor.api.schemas``).

::

    from processor.client import Client

    with Client("http://127.0.0.1:8080", token="...") as api:
        job = api.submit("bear.jpg", styles=["toon"], variants=2, idempotency_key="order-4711")
        done = api.wait(job.id)                  # the job's events; polling where a stream is refused
        for variant in done.variants:
            api.download(variant.url, "out/")

Every error the API answers (``application/problem+json``) raises ``ApiError`` with its status,
``detail``, the ``field`` at fault and the ``hint`` of what to change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from processor.api.schemas import JobCreated, JobList, JobOut, ProblemOut, Progress, StreamEnded

#: Seconds one request may take (an upload of a large photo included).
DEFAULT_TIMEOUT_S = 60.0
#: Seconds between two reads of a job while ``wait`` polls.
DEFAULT_POLL_S = 1.0
#: Statuses of a job that has ended.
ENDED = frozenset({"done", "failed", "cancelled"})


class ApiError(Exception):
    """The API answered an error: ``problem`` is its body (status, detail, field, hint)."""

    def __init__(self, problem: ProblemOut, headers: httpx.Headers | None = None) -> None:
        where = f" ({problem.field})" if problem.field else ""
        super().__init__(f"{problem.status} {problem.title}{where}: {problem.detail}"
                         + (f" -> {problem.hint}" if problem.hint else ""))
        self.problem = problem
        self.status = problem.status
        self.headers = headers or httpx.Headers()


class WaitTimeout(TimeoutError):
    """``wait`` gave up before the job ended; ``job`` is how it was last seen."""

    def __init__(self, job: JobOut, seconds: float) -> None:
        super().__init__(f"job {job.id} is still {job.status.value} after {seconds:g} s")
        self.job = job


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event of a job: its name and its data (typed by name)."""

    name: str
    data: JobOut | Progress | StreamEnded


class Client:
    """The API at ``base_url`` with ``token`` (or an ``httpx.Client`` of the caller's own, such as
    FastAPI's TestClient, already pointed at the API). A context manager; ``close`` ends it."""

    def __init__(self, base_url: str | None = None, token: str | None = None, *, http: httpx.Client | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = DEFAULT_POLL_S) -> None:
        if http is None and base_url is None:
            raise ValueError("give the API's base_url (http://127.0.0.1:8080), or an httpx.Client as http=")
        self.http = http or httpx.Client(base_url=base_url or "", timeout=timeout_s)
        self._own_http = http is None
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.poll_s = poll_s

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_http:
            self.http.close()

    # ----------------------------------------------------------------- jobs

    def submit(self, photo: str | Path | bytes, *, styles: Sequence[str] | None = None, variants: int | None = None,
               seed: int | None = None, prompt: str | None = None, negative: str | None = None,
               instruction: str | None = None, background_mode: str | None = None,
               background_prompt: str | None = None, style_image: str | Path | bytes | None = None,
               webhook: str | None = None, webhook_events: Sequence[str] | None = None,
               idempotency_key: str | None = None, filename: str | None = None) -> JobCreated:
        """Submit a photo (a path or its bytes) with the options of ``POST /v1/jobs``. A ``str``
        ``style_image`` is a key under the server's styles prefix; a path or bytes is uploaded.
        With ``idempotency_key`` a repeat returns the first request's job."""
        body = photo if isinstance(photo, bytes) else Path(photo).read_bytes()
        name = filename or (Path(photo).name if not isinstance(photo, bytes) else "photo")
        fields: dict[str, Any] = {"variants": variants, "seed": seed, "prompt": prompt, "negative": negative,
                                  "instruction": instruction, "background_mode": background_mode,
                                  "background_prompt": background_prompt, "webhook": webhook}
        data: dict[str, Any] = {k: str(v) for k, v in fields.items() if v is not None}
        if styles is not None:
            data["styles"] = list(styles)
        if webhook_events is not None:
            data["webhook_events"] = list(webhook_events)
        files: list[tuple[str, tuple[str, bytes]]] = [("image", (name, body))]
        if isinstance(style_image, str):
            data["style_image"] = style_image
        elif style_image is not None:
            look = style_image if isinstance(style_image, bytes) else Path(style_image).read_bytes()
            files.append(("style_image", ("look", look)))
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        resp = self._request("POST", "/v1/jobs", data=data, files=files, headers=headers)
        return JobCreated.model_validate(resp.json())

    def get(self, job: str) -> JobOut:
        return JobOut.model_validate(self._request("GET", f"/v1/jobs/{job}").json())

    def list(self, *, cursor: str | None = None, limit: int = 50) -> JobList:
        """One page of the caller's jobs, oldest first; pass ``next_cursor`` for the next."""
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        return JobList.model_validate(self._request("GET", "/v1/jobs", params=params).json())

    def jobs(self, *, page_size: int = 50) -> Iterator[JobOut]:
        """Every job of the caller, page after page."""
        cursor = None
        while True:
            page = self.list(cursor=cursor, limit=page_size)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def retry(self, job: str) -> JobOut:
        """Requeue a failed job (409 ``ApiError`` for any other)."""
        return JobOut.model_validate(self._request("POST", f"/v1/jobs/{job}/retry").json())

    def cancel(self, job: str) -> JobOut:
        """Cancel a queued job (removed: ``cancelled`` now) or a running one (``running`` until its
        worker stops at its next step); a 409 ``ApiError`` for a job that ended done or failed."""
        return JobOut.model_validate(self._request("DELETE", f"/v1/jobs/{job}").json())

    # ----------------------------------------------------------------- waiting

    def events(self, job: str) -> Iterator[JobEvent]:
        """The job's server-sent events until its stream ends (the job ended, or the stream's
        lifetime ran out: an ``expired`` event)."""
        with self.http.stream("GET", self._url(f"/v1/jobs/{job}/events"), headers=self.headers,
                              timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise _error(resp)
            name = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    name = line[len("event: "):]
                elif line.startswith("data: ") and name is not None:
                    yield JobEvent(name, _event_data(name, json.loads(line[len("data: "):])))
                    name = None

    def wait(self, job: str, timeout_s: float | None = None, *, stream: bool = True,
             on_progress: Callable[[Progress], None] | None = None) -> JobOut:
        """The job once it ended (done, failed or cancelled), following its events; by polling
        (every ``poll_s``) when ``stream`` is off or the server refuses a stream (429).
        ``on_progress`` is called with each progress report seen on the way (every event, or the
        job's ``progress`` at each poll). ``WaitTimeout`` after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while stream:
            try:
                for event in self.events(job):
                    if isinstance(event.data, JobOut) and event.data.status.value in ENDED:
                        return event.data
                    if on_progress is not None and isinstance(event.data, Progress):
                        on_progress(event.data)
                    if deadline is not None and time.monotonic() > deadline:
                        raise WaitTimeout(self.get(job), timeout_s or 0.0)
            except ApiError as exc:
                if exc.status != 429:
                    raise
                stream = False  # the server's streams are full: poll instead
            except httpx.TransportError:
                pass  # a dropped stream: ask again (polling covers the gap)
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(self.get(job), timeout_s or 0.0)
        while True:
            state = self.get(job)
            if state.status.value in ENDED:
                return state
            if on_progress is not None and state.progress is not None:
                on_progress(state.progress)
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(state, timeout_s or 0.0)
            time.sleep(self.poll_s)

    # ----------------------------------------------------------------- files

    def file(self, url: str) -> bytes:
        """The bytes at a URL a job lists (a variant's ``url``, its ``contact_sheet``). The token
        goes only to the API itself, never to a store's presigned URL."""
        if self._is_ours(url):
            return self._request("GET", url).content
        resp = httpx.get(url, timeout=DEFAULT_TIMEOUT_S)
        resp.raise_for_status()
        return resp.content

    def download(self, url: str, folder: str | Path) -> Path:
        """Save the file at ``url`` into ``folder`` under its own name; its path."""
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        target = Path(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.file(url))
        return target

    # ----------------------------------------------------------------- plumbing

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else str(self.http.base_url).rstrip("/") + path

    def _is_ours(self, url: str) -> bool:
        if not url.startswith(("http://", "https://")):
            return True
        own, given = urlsplit(str(self.http.base_url)), urlsplit(url)
        return (own.scheme, own.netloc) == (given.scheme, given.netloc)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = self.headers | kwargs.pop("headers", {})
        resp = self.http.request(method, self._url(path), headers=headers, **kwargs)
        if resp.status_code >= 400:
            raise _error(resp)
        return resp


def _error(resp: httpx.Response) -> ApiError:
    try:
        problem = ProblemOut.model_validate(resp.json())
    except ValueError:  # not a problem body (a proxy's page): keep what there is
        problem = ProblemOut(title=resp.reason_phrase, status=resp.status_code, detail=resp.text[:500])
    return ApiError(problem, resp.headers)


def _event_data(name: str, data: Any) -> JobOut | Progress | StreamEnded:
    if name == "progress":
        return Progress.model_validate(data)
    if name == "expired" or "links" not in data:  # a job deleted while streamed ends without its links
        return StreamEnded.model_validate(data)
    return JobOut.model_validate(data)


__all__ = ["ApiError", "Client", "JobEvent", "WaitTimeout"]
