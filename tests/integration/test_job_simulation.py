"""The Kubernetes Indexed Job, simulated: N ``processor run --once`` processes, each with its own
``JOB_COMPLETION_INDEX`` (what the Job controller sets), over one SeaweedFS bucket.

The bucket is versioned, so every write of a manifest leaves a version: "committed exactly once"
is counted, not inferred. Both ways the pods can share the work are run: claims in the bucket, and
static shards by index. Kubernetes runs a Job at least once, so the shards run also starts a
second pod for index 0 beside the first (a replacement pod while the old one still runs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from processor.manifest import Manifest
from processor.queue.scan import shard_of
from testkit.images import photo_bytes
from testkit.waits import HANG_GUARD_S
from tests.integration import test_s3_integration
from tests.integration.test_s3_integration import cli_env, processor

#: The versioned-bucket fixture of the S3 integration tests (a fixture is found by its name here).
bucket = test_s3_integration.bucket

#: The Job's completions (= parallelism): pods, each with its own index.
INDEXES = 3
INPUTS = 6
#: Seconds one pod may take to drain its share.
POD_TIMEOUT_S = 240


def manifest_writes(client, name: str) -> Counter:
    """Writes of each outputs/<path>/manifest.json, from the bucket's version history."""
    writes: Counter = Counter()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=name, Prefix="outputs/"):
        for version in page.get("Versions", []):
            if version["Key"].endswith("/manifest.json"):
                writes[version["Key"]] += 1
    return writes


@pytest.mark.parametrize("coordination", ["shards", "claims"])
def test_indexed_job_commits_every_input_exactly_once(s3_server, bucket, tmp_path, coordination):
    name, client = bucket
    inputs = [f"inputs/toy{i}.jpg" for i in range(INPUTS)]
    for i, key in enumerate(inputs):
        client.put_object(Bucket=name, Key=key, Body=photo_bytes(192, 144, seed=i))
    env = cli_env(s3_server, name, tmp_path, PROCESSOR_RUN__COORDINATION=coordination,
                  PROCESSOR_RUN__SHARD_COUNT=str(INDEXES))
    # Every shard must have work, or the shards run would not show who did what.
    assert {shard_of(key, INDEXES) for key in inputs} == set(range(INDEXES))

    pods = [(index, f"job-{index}") for index in range(INDEXES)]
    if coordination == "shards":
        pods.append((0, "job-0-retry"))  # at least once: a second pod for index 0
    procs = [
        subprocess.Popen([sys.executable, "-m", "processor", "run", "--once"],
                         env=env | {"JOB_COMPLETION_INDEX": str(index), "PROCESSOR_RUN__WORKER_ID": pod},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index, pod in pods
    ]
    for (_, pod), proc in zip(pods, procs, strict=False):
        _, err = proc.communicate(timeout=POD_TIMEOUT_S)
        assert proc.returncode == 0, f"{pod} exited {proc.returncode}:\n{err[-3000:]}"

    stems = {key[len("inputs/"):].rsplit(".", 1)[0] for key in inputs}
    writes = manifest_writes(client, name)
    assert writes == Counter({f"outputs/{stem}/manifest.json": 1 for stem in stems}), "each input committed once"

    owners = {}
    for key in inputs:
        stem = key[len("inputs/"):].rsplit(".", 1)[0]
        manifest = Manifest.model_validate_json(
            client.get_object(Bucket=name, Key=f"outputs/{stem}/manifest.json")["Body"].read())
        assert manifest.source.key == key
        assert manifest.source.etag == client.head_object(Bucket=name, Key=key)["ETag"].strip('"')
        owners[key] = manifest.worker.id
    if coordination == "shards":
        # Index i committed exactly the inputs of shard i (or its twin did, for index 0).
        for key, owner in owners.items():
            assert owner.startswith(f"job-{shard_of(key, INDEXES)}"), (key, owner)

    status = json.loads(processor("status", "--json", env=env).stdout)
    assert (status["done"], status["pending"], status["in_progress"], status["failed"]) == (INPUTS, 0, 0, 0)
    assert not client.list_objects_v2(Bucket=name, Prefix=".processor/claims/").get("KeyCount")


def test_an_index_outside_the_shard_count_is_a_config_error(s3_server, bucket, tmp_path):
    """A Job with more completions than run.shard_count would leave inputs to nobody: refuse it."""
    name, _ = bucket
    env = cli_env(s3_server, name, tmp_path, PROCESSOR_RUN__COORDINATION="shards", PROCESSOR_RUN__SHARD_COUNT="2",
                  JOB_COMPLETION_INDEX="2")
    proc = processor("run", "--once", env=env, timeout=HANG_GUARD_S)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "PROCESSOR_RUN__SHARD_COUNT" in proc.stderr and "JOB_COMPLETION_INDEX" in proc.stderr
