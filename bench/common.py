"""What the benchmarks share: a real SeaweedFS, stores on it, memory sampling, and the report.

Every benchmark prints one ``name  value`` line per figure (``--json``: one JSON object instead),
so a person reads it and a test parses it (``parse_report``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: Seconds between resident-memory samples.
RSS_SAMPLE_S = 0.1
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 1024 * 1024


@contextmanager
def seaweedfs_server(server: Any = None) -> Iterator[Any]:
    """``server`` when given (a test's ``s3_server``), else a fresh SeaweedFS in a temp folder."""
    if server is not None:
        yield server
        return
    from testkit.seaweed import WeedServer

    with tempfile.TemporaryDirectory(prefix="bench-weed-") as tmp:
        with WeedServer(Path(tmp)) as weed:
            yield weed.server


def s3_store(server: Any, bucket: str | None = None) -> Any:
    """An ``S3Store`` on ``bucket`` (a new one when None), built like production's
    ``S3Store.from_settings`` but with the server's keys passed in (no process environment)."""
    import boto3

    from processor.store.retry import RetryPolicy
    from processor.store.s3 import S3Store, client_config

    bucket = bucket or server.new_bucket()
    settings = server.settings(bucket, max_attempts=6, max_backoff_s=2.0)
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=client_config(settings, max_pool_connections=32),
    )
    return S3Store(client, bucket, description=f"s3://{bucket} at {server.endpoint_url}",
                   retry_policy=RetryPolicy.from_settings(settings))


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class RssSampler:
    """Samples resident memory in a thread while a block runs: ``start``, ``peak``, and ``growth``
    (the largest sample of the run's second half minus the largest of its first half: near zero
    when memory stays flat, positive when it grows with the number of items)."""

    def __init__(self, interval_s: float = RSS_SAMPLE_S) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self.samples.append((time.perf_counter(), rss_bytes()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), rss_bytes()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.perf_counter(), rss_bytes()))

    @property
    def start(self) -> int:
        return self.samples[0][1]

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)

    @property
    def growth(self) -> int:
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        middle = (t0 + t1) / 2
        first = [rss for t, rss in self.samples if t <= middle]
        second = [rss for t, rss in self.samples if t > middle] or first
        return max(second) - max(first)


def machine() -> dict[str, Any]:
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def report(results: dict[str, Any], *, as_json: bool) -> None:
    """One ``name  value`` line per figure, or one JSON object."""
    if as_json:
        print(json.dumps(results, sort_keys=False))
        return
    width = max(len(k) for k in results)
    for key, value in results.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:<{width}}  {value}")


def parse_report(text: str) -> dict[str, str]:
    """The ``name  value`` lines of a report, as strings."""
    parsed = {}
    for line in text.splitlines():
        if line.strip():
            key, _, value = line.strip().partition("  ")
            parsed[key] = value.strip()
    return parsed
