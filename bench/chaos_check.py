"""Check the promise from the bucket alone, by listing every object version.

The bucket must be versioned from the start, so every write left a version. For each input (its
latest version; sidecars are not inputs):

- **result**: exactly one committed manifest (a ``manifest.json`` version whose ``source.etag`` is
  the input's ETag) or, with no manifest, a failure record for that ETag. Neither: a *lost* input.
- **duplicate commits**: manifest versions for one input ETag beyond the first (must be 0).
- **changed after commit**: a committed variant or contact sheet with a version written after the
  manifest version that committed it, or whose current bytes differ from the manifest's sha256
  (must be 0). Write times come from SeaweedFS version ids (an inverted nanosecond timestamp),
  else from Last-Modified (whole seconds).
- **claim takeovers**: consecutive versions of one claim object written by different claim tokens;
  the takeover latency is the time from the old holder's last write (its last renewal) to the
  new holder's takeover write. A second token sooner than the TTL is a *double claim*: two
  ``If-None-Match: *`` creates both succeeded.

``check_bucket`` returns a ``BucketReport``; the harness adds what only logs can tell (refused
zombie commits) and prints the table.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from processor.config import PrefixSettings
from processor.manifest import FailureRecord, Manifest
from processor.queue.keys import KeyLayout, is_directory_marker, is_sidecar
from processor.store.base import strip_etag

#: Parallel GETs of object versions (manifests, variants, claims).
FETCH_THREADS = 16
#: Seconds a takeover may come before the TTL by the gap between a request's arrival and its
#: version's timestamp; anything sooner is not a takeover.
TTL_SLACK_S = 0.1
#: SeaweedFS version ids start with 16 hex digits of (2**63 - 1 - write time in ns).
_MAX_INT64 = (1 << 63) - 1


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    etag: str
    last_modified: datetime
    is_latest: bool
    deleted: bool

    @property
    def t(self) -> float:
        """Write time in seconds since the epoch, as precise as the server tells."""
        try:
            ns = _MAX_INT64 - int(self.version_id[:16], 16)
            if 0 < ns < _MAX_INT64 // 2:  # a plausible date: this is a SeaweedFS inverted timestamp
                t = ns / 1e9
                if abs(t - self.last_modified.timestamp()) < 2:
                    return t
        except ValueError:
            pass
        return self.last_modified.timestamp()


@dataclass
class Takeover:
    claim_key: str
    from_worker: str
    to_worker: str
    latency_s: float
    #: When the old holder last wrote the claim (seconds since the epoch).
    last_renewal_t: float = 0.0


@dataclass
class BucketReport:
    inputs: int = 0
    committed: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)
    #: Input keys with both a committed manifest and a failure record for the same ETag.
    conflicting: list[str] = field(default_factory=list)
    duplicate_commits: int = 0
    duplicate_failure_records: int = 0
    #: (variant key, why) for committed outputs written again after their commit.
    changed_after_commit: list[tuple[str, str]] = field(default_factory=list)
    missing_outputs: list[str] = field(default_factory=list)
    #: Manifest versions written over a committed manifest of the same input ETag (also duplicates).
    manifest_versions: int = 0
    output_versions: int = 0
    takeovers: list[Takeover] = field(default_factory=list)
    #: A second token written sooner than the TTL after the first, with no release between: two
    #: ``If-None-Match: *`` creates both succeeded (the store's conditional create raced).
    double_claims: list[Takeover] = field(default_factory=list)
    claims_left: int = 0
    #: Input key → "done" / "failed" / "lost".
    outcome: dict[str, str] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        problems = []
        if self.lost:
            problems.append(f"{len(self.lost)} lost input(s): {self.lost[:5]}")
        if self.duplicate_commits:
            problems.append(f"{self.duplicate_commits} duplicate commit(s)")
        if self.changed_after_commit:
            problems.append(f"{len(self.changed_after_commit)} output(s) changed after commit: "
                            f"{self.changed_after_commit[:5]}")
        if self.conflicting:
            problems.append(f"{len(self.conflicting)} input(s) with both a manifest and a failure record")
        if self.missing_outputs:
            problems.append(f"{len(self.missing_outputs)} committed output(s) missing: {self.missing_outputs[:5]}")
        return problems


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[int(pct) - 1]


def list_versions(client: Any, bucket: str, prefix: str = "") -> dict[str, list[Version]]:
    """Every version and delete marker under ``prefix``, per key, oldest first."""
    by_key: dict[str, list[Version]] = defaultdict(list)
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for v in page.get("Versions", []):
            by_key[v["Key"]].append(Version(v["Key"], v["VersionId"], strip_etag(v["ETag"]), v["LastModified"],
                                            v["IsLatest"], False))
        for d in page.get("DeleteMarkers", []):
            by_key[d["Key"]].append(Version(d["Key"], d["VersionId"], "", d["LastModified"], d["IsLatest"], True))
    for versions in by_key.values():
        versions.sort(key=lambda v: v.t)
    return by_key


def _fetch_all(client: Any, bucket: str, versions: Iterable[Version]) -> dict[tuple[str, str], bytes]:
    wanted = [v for v in versions if not v.deleted]

    def fetch(v: Version) -> tuple[tuple[str, str], bytes]:
        resp = client.get_object(Bucket=bucket, Key=v.key, VersionId=v.version_id)
        return (v.key, v.version_id), resp["Body"].read()

    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        return dict(pool.map(fetch, wanted))


def _latest(versions: list[Version]) -> Version | None:
    return versions[-1] if versions else None


def check_bucket(client: Any, bucket: str, prefixes: PrefixSettings | None = None) -> BucketReport:
    prefixes = prefixes or PrefixSettings()
    layout = KeyLayout(prefixes)
    versions = list_versions(client, bucket)
    report = BucketReport()

    inputs: dict[str, str] = {}
    for key, vs in versions.items():
        if not key.startswith(prefixes.inputs) or is_sidecar(key) or is_directory_marker(key):
            continue
        latest = _latest(vs)
        if latest and not latest.deleted:
            inputs[key] = latest.etag
    report.inputs = len(inputs)

    records = [v for key, vs in versions.items()
               if key.endswith("/manifest.json") or key.startswith(prefixes.failed) for v in vs]
    bodies = _fetch_all(client, bucket, records)
    report.manifest_versions = sum(1 for v in records if v.key.endswith("/manifest.json") and not v.deleted)
    report.output_versions = sum(len(vs) for key, vs in versions.items()
                                 if key.startswith(prefixes.outputs) and not key.endswith("/manifest.json"))

    to_verify: list[tuple[str, Manifest, Version]] = []
    for key, etag in sorted(inputs.items()):
        keys = layout.for_input(key)
        commits: list[tuple[Version, Manifest]] = []
        for v in versions.get(keys.manifest, []):
            if v.deleted:
                continue
            try:
                m = Manifest.model_validate_json(bodies[(v.key, v.version_id)])
            except ValidationError:
                continue
            if m.source.etag == etag and m.source.key == key:
                commits.append((v, m))
        failures = 0
        for v in versions.get(keys.failure, []):
            if v.deleted:
                continue
            try:
                r = FailureRecord.model_validate_json(bodies[(v.key, v.version_id)])
            except ValidationError:
                continue
            failures += r.source.etag == etag
        if commits:
            report.committed += 1
            report.outcome[key] = "done"
            report.duplicate_commits += len(commits) - 1
            first_version, first_manifest = commits[0]
            to_verify.append((key, first_manifest, first_version))
            if failures:
                report.conflicting.append(key)
        elif failures:
            report.failed += 1
            report.outcome[key] = "failed"
        else:
            report.lost.append(key)
            report.outcome[key] = "lost"
        report.duplicate_failure_records += max(0, failures - 1)

    # Committed outputs: nothing written after the commit, and the bytes are the manifest's.
    current: list[Version] = []
    expected: dict[str, tuple[str | None, Version]] = {}
    for _key, manifest, commit in to_verify:
        outputs = [(v.key, v.sha256) for v in manifest.variants]
        if manifest.contact_sheet:
            outputs.append((manifest.contact_sheet, None))
        for out_key, sha in outputs:
            vs = versions.get(out_key, [])
            latest = _latest(vs)
            if latest is None or latest.deleted:
                report.missing_outputs.append(out_key)
                continue
            later = [v for v in vs if v.t > commit.t]
            if later:
                report.changed_after_commit.append(
                    (
                        out_key,
                        f"{len(later)} version(s) written {max(v.t for v in later) - commit.t:.3f}s after the commit",
                    )
                )
            if sha:
                current.append(latest)
                expected[out_key] = (sha, commit)
    contents = _fetch_all(client, bucket, current)
    for (out_key, _vid), body in contents.items():
        sha, _commit = expected[out_key]
        if hashlib.sha256(body).hexdigest() != sha:
            if not any(k == out_key for k, _ in report.changed_after_commit):
                report.changed_after_commit.append((out_key, "current bytes differ from the manifest's sha256"))

    # Claims: who wrote each version, in order.
    claim_versions = {k: vs for k, vs in versions.items() if k.startswith(layout.claims_prefix)}
    claim_bodies = _fetch_all(client, bucket, (v for vs in claim_versions.values() for v in vs))
    for key, vs in claim_versions.items():
        previous: tuple[Version, dict[str, Any]] | None = None
        for v in vs:
            if v.deleted:
                previous = None  # released: the next create is not a takeover
                continue
            try:
                body = json.loads(claim_bodies[(v.key, v.version_id)])
            except (ValueError, KeyError):
                continue
            if previous and body.get("token") != previous[1].get("token"):
                change = Takeover(key, str(previous[1].get("worker")), str(body.get("worker")),
                                  v.t - previous[0].t, previous[0].t)
                ttl = float(previous[1].get("ttl_s") or 0)
                # A takeover needs the claim expired; sooner means both creates won.
                (report.double_claims if change.latency_s < ttl - TTL_SLACK_S else report.takeovers).append(change)
            previous = (v, body)
        latest = _latest(vs)
        if latest is not None and not latest.deleted:
            report.claims_left += 1
    return report
