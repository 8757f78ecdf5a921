"""The whole product against a real S3 server (SeaweedFS), through the real command line.

Done-when of the backbone issue: ``processor run --once`` with ``store.kind: s3`` over good photos
and bad inputs exits 0, writes one manifest per good photo (variants present, ``source.etag``
matching) and one failure record per bad input; a second run writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import boto3
import pytest
from botocore.config import Config

from processor.config import Settings
from processor.manifest import FailureRecord, Manifest
from processor.queue.keys import KeyLayout
from testkit.images import bad_inputs, photo_bytes
from testkit.waits import HANG_GUARD_S


@pytest.fixture
def bucket(s3_server):
    """A fresh versioned bucket: every write leaves a version, so a test can count writes."""
    name = f"it-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name, client


def cli_env(s3_server, bucket_name: str, tmp_path, **extra: str) -> dict[str, str]:
    config = tmp_path / "config.yaml"
    config.write_text(
        "store: {kind: s3}\n"
        "styles: {toon: {engine: toon, variants: 2, max_side: 256}}\n"
        "pipeline: {contact_sheet_height: 64}\n"
        # full_rescan_s: the daemon finds inputs that sort before its last listed key only at a full scan.
        "run: {poll_interval_s: 0.2, full_rescan_s: 2}\n"
        # Several workers run side by side here: none binds the fixed metrics port.
        "metrics: {port: 0}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_"))}
    env |= {
        "PROCESSOR_CONFIG": str(config),
        "PROCESSOR_STORE__BUCKET": bucket_name,
        "PROCESSOR_STORE__ENDPOINT_URL": s3_server.endpoint_url,
        "PROCESSOR_STORE__REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        **extra,
    }
    return env


def processor(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "processor", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def count_versions(client, bucket_name: str) -> int:
    """Object versions and delete markers in the bucket, but the workers' presence records (each
    run writes its own while it runs and deletes it at its end: that is no result written)."""
    workers = KeyLayout(Settings().prefixes).workers_prefix
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket_name)
    return sum(1 for p in pages for v in [*p.get("Versions", []), *p.get("DeleteMarkers", [])]
               if not v["Key"].startswith(workers))


def test_run_once_over_good_and_bad_inputs_then_a_second_run_writes_nothing(s3_server, bucket, tmp_path):
    name, client = bucket
    good = {
        "inputs/cow.jpg": photo_bytes(640, 480),
        "inputs/shelf/tall bear.png": photo_bytes(480, 640, fmt="PNG", seed=1),
        "inputs/日本/おもちゃ.webp": photo_bytes(400, 300, fmt="WEBP", seed=2),
    }
    bad = {
        "inputs/bad/empty.jpg": bad_inputs()["empty"],
        "inputs/bad/truncated.jpg": bad_inputs()["truncated-jpeg"],
        "inputs/bad/text.png": bad_inputs()["text-as-png"],
        "inputs/bad/page.jpg": bad_inputs()["html-as-jpg"],
        "inputs/bad/bomb.png": bad_inputs()["png-bomb-40000"],
        "inputs/bad/dot.png": bad_inputs()["one-pixel"],
    }
    for key, data in {**good, **bad}.items():
        client.put_object(Bucket=name, Key=key, Body=data)
    env = cli_env(s3_server, name, tmp_path)

    first = processor("run", "--once", env=env)
    assert first.returncode == 0, first.stderr[-3000:]

    for key in good:
        etag = client.head_object(Bucket=name, Key=key)["ETag"].strip('"')
        stem = key[len("inputs/"):].rsplit(".", 1)[0]
        manifest = Manifest.model_validate_json(
            client.get_object(Bucket=name, Key=f"outputs/{stem}/manifest.json")["Body"].read()
        )
        assert manifest.source.etag == etag and manifest.source.key == key
        assert len(manifest.variants) == 2
        for v in manifest.variants:
            body = client.get_object(Bucket=name, Key=v.key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == v.sha256
    for key in bad:
        raw = client.get_object(Bucket=name, Key=f"failed/{key[len('inputs/'):]}.json")["Body"].read()
        record = FailureRecord.model_validate_json(raw)
        assert record.source.etag == client.head_object(Bucket=name, Key=key)["ETag"].strip('"')
        assert record.hint

    writes = count_versions(client, name)
    second = processor("run", "--once", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert count_versions(client, name) == writes, "a second run must write nothing"

    status = processor("status", "--json", env=env)
    counts = json.loads(status.stdout)
    assert (counts["done"], counts["failed"], counts["pending"]) == (len(good), len(bad), 0)


def test_wrong_credentials_are_one_clear_fatal_error_without_the_secret(s3_server, bucket, tmp_path):
    name, _ = bucket
    secret = "not-the-secret-" + uuid.uuid4().hex
    env = cli_env(s3_server, name, tmp_path, AWS_SECRET_ACCESS_KEY=secret)
    proc = processor("run", "--once", env=env, timeout=HANG_GUARD_S)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert s3_server.endpoint_url in proc.stderr
    assert secret not in proc.stderr + proc.stdout


def test_doctor_against_seaweedfs(s3_server, bucket, tmp_path):
    name, _ = bucket
    proc = processor("doctor", env=cli_env(s3_server, name, tmp_path), timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "atomic" in proc.stdout and s3_server.endpoint_url in proc.stdout


def test_daemon_stops_cleanly_on_sigterm(s3_server, bucket, tmp_path):
    name, client = bucket
    for i in range(4):
        client.put_object(Bucket=name, Key=f"inputs/toy{i}.jpg", Body=photo_bytes(320, 240, seed=i))
    env = cli_env(s3_server, name, tmp_path)
    daemon = subprocess.Popen([sys.executable, "-m", "processor", "run"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            listed = client.list_objects_v2(Bucket=name, Prefix="outputs/").get("Contents", [])
            if sum(o["Key"].endswith("manifest.json") for o in listed) == 4:
                break
            time.sleep(0.5)
        # Work arriving while the daemon runs is picked up too.
        client.put_object(Bucket=name, Key="inputs/late.jpg", Body=photo_bytes(320, 240, seed=9))
        while time.monotonic() < deadline:
            if client.list_objects_v2(Bucket=name, Prefix="outputs/late/manifest.json").get("KeyCount"):
                break
            time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=HANG_GUARD_S)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err[-2000:]
    assert "worker_stop" in err
    listed = client.list_objects_v2(Bucket=name, Prefix="outputs/").get("Contents", [])
    assert sum(o["Key"].endswith("manifest.json") for o in listed) == 5
    assert not client.list_objects_v2(Bucket=name, Prefix=".processor/claims/").get("KeyCount")


def test_parallel_workers_commit_each_input_once(s3_server, bucket, tmp_path):
    """Three worker processes over one bucket (claims): every input committed exactly once."""
    name, client = bucket
    for i in range(9):
        client.put_object(Bucket=name, Key=f"inputs/t{i}.jpg", Body=photo_bytes(256, 192, seed=i))
    env = cli_env(s3_server, name, tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "processor", "run", "--once"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=HANG_GUARD_S)
        assert p.returncode == 0, err[-2000:]
    versions = client.list_object_versions(Bucket=name, Prefix="outputs/").get("Versions", [])
    manifest_writes = [v for v in versions if v["Key"].endswith("manifest.json")]
    assert len(manifest_writes) == 9
