"""The checker finds each way the promise can break, from a versioned bucket's history alone."""

from __future__ import annotations

import hashlib

import pytest

from bench.chaos_check import check_bucket
from processor.manifest import FailureRecord, Manifest, Source, Variant, WorkerInfo

WORKER = WorkerInfo(id="t", version="0", device="cpu")


def commit(client, bucket: str, name: str, body: bytes = b"png-bytes") -> str:
    """Upload input ``name``, one variant and its manifest, the way a worker commits."""
    etag = client.put_object(Bucket=bucket, Key=f"inputs/{name}.jpg", Body=b"photo " + name.encode())["ETag"].strip('"')
    variant = f"outputs/{name}/toon-00.png"
    client.put_object(Bucket=bucket, Key=variant, Body=body)
    manifest = Manifest(source=Source(key=f"inputs/{name}.jpg", etag=etag, size=1), worker=WORKER,
                        variants=[Variant(key=variant, style="toon", engine="toon", index=0, seed=0, width=1, height=1,
                                          sha256=hashlib.sha256(body).hexdigest())])
    client.put_object(Bucket=bucket, Key=f"outputs/{name}/manifest.json", Body=manifest.to_json_bytes())
    return etag


@pytest.fixture
def versioned(s3_server):
    return s3_server.client(), s3_server.new_bucket(versioned=True)


def test_a_clean_bucket_passes(versioned):
    client, bucket = versioned
    commit(client, bucket, "a")
    etag = client.put_object(Bucket=bucket, Key="inputs/bad.jpg", Body=b"")["ETag"].strip('"')
    record = FailureRecord(source=Source(key="inputs/bad.jpg", etag=etag, size=0), error="CorruptImage",
                           message="empty", hint="upload it again", worker=WORKER)
    client.put_object(Bucket=bucket, Key="failed/bad.jpg.json", Body=record.to_json_bytes())
    report = check_bucket(client, bucket)
    assert (report.inputs, report.committed, report.failed) == (2, 1, 1)
    assert report.violations == []


def test_lost_duplicate_and_rewritten_results_are_found(versioned):
    client, bucket = versioned
    commit(client, bucket, "rewritten")
    client.put_object(Bucket=bucket, Key="outputs/rewritten/toon-00.png", Body=b"a zombie's bytes")
    commit(client, bucket, "twice")
    manifest = client.get_object(Bucket=bucket, Key="outputs/twice/manifest.json")["Body"].read()
    client.put_object(Bucket=bucket, Key="outputs/twice/manifest.json", Body=manifest)  # a second commit
    client.put_object(Bucket=bucket, Key="inputs/lost.jpg", Body=b"never processed")
    report = check_bucket(client, bucket)
    assert report.lost == ["inputs/lost.jpg"]
    assert report.duplicate_commits == 1
    assert [key for key, _why in report.changed_after_commit] == ["outputs/rewritten/toon-00.png"]
    assert len(report.violations) == 3


def test_claim_takeovers_are_read_from_claim_versions(versioned):
    client, bucket = versioned
    key = ".processor/claims/abc.json"
    client.put_object(Bucket=bucket, Key=key, Body=b'{"worker": "w1", "token": "t1"}')
    client.put_object(Bucket=bucket, Key=key, Body=b'{"worker": "w1", "token": "t1"}')  # a renewal
    client.put_object(Bucket=bucket, Key=key, Body=b'{"worker": "w2", "token": "t2"}')  # the takeover
    client.delete_object(Bucket=bucket, Key=key)  # released
    client.put_object(Bucket=bucket, Key=key, Body=b'{"worker": "w3", "token": "t3"}')  # a fresh claim
    other = ".processor/claims/def.json"  # two creates that both won, milliseconds apart
    client.put_object(Bucket=bucket, Key=other, Body=b'{"worker": "w4", "token": "t4", "ttl_s": 60}')
    client.put_object(Bucket=bucket, Key=other, Body=b'{"worker": "w5", "token": "t5", "ttl_s": 60}')
    report = check_bucket(client, bucket)
    assert [(t.from_worker, t.to_worker) for t in report.takeovers] == [("w1", "w2")]
    assert [(t.from_worker, t.to_worker) for t in report.double_claims] == [("w4", "w5")]
    assert report.takeovers[0].latency_s >= 0
    assert report.claims_left == 2
