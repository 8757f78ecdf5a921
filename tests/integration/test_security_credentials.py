"""Bad credentials: one clear fatal error naming the endpoint and the credential source; no secret
in any log line, at DEBUG level too (botocore and urllib3 included).

S3 runs against the real SeaweedFS, which enforces its keys. The IBM IAM token service cannot be
reached from here, so the API-key path runs against a local stand-in that refuses the key the way
IAM does (HTTP 400 with ``errorCode``/``errorMessage``), and against a closed port.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from processor.errors import StoreAccessError, StoreError, TransientStoreError
from testkit.seaweed import S3Server
from testkit.waits import HANG_GUARD_S

#: Attempts the COS stores below make per call (``_cos_store``): failing fast is counted in attempts,
#: not seconds, so a busy machine cannot fail the tests.
COS_MAX_ATTEMPTS = 2


def _all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as a handler would print it: message, args, fields and traceback."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = []
    for record in caplog.records:
        lines.append(formatter.format(record))
        lines.append(repr(vars(record)))
    return "\n".join(lines)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # the root logger: botocore, urllib3 and ibm_botocore too
    for name in ("botocore", "ibm_botocore", "urllib3", "boto3", "ibm_boto3", "processor"):
        # Through caplog, which restores each level after the test: a level left at DEBUG made
        # later tests' output (a CLI's stderr) carry botocore's debug records.
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No ambient AWS credentials: no variables, files, profile or instance metadata."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "COS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# --- S3 (SeaweedFS with enforced keys) ---------------------------------------------------------


def test_wrong_secret_names_endpoint_and_source_and_leaks_nothing_at_debug(
    s3_server: S3Server, monkeypatch, tmp_path, debug_logs
) -> None:
    from processor.store.s3 import S3Store

    _clean_env(monkeypatch, tmp_path)
    secret = "wrong-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = S3Store.from_settings(s3_server.settings(s3_server.new_bucket()))
    with pytest.raises(StoreAccessError) as caught:
        list(store.list("inputs/"))
    message = str(caught.value)
    assert s3_server.endpoint_url in message
    assert "$AWS_ACCESS_KEY_ID" in message and "$AWS_SECRET_ACCESS_KEY" in message
    assert secret not in message
    logs = _all_log_text(debug_logs)
    assert "botocore" in logs, "DEBUG capture must include botocore's own records"
    assert secret not in logs


def test_missing_credentials_name_where_to_put_them(s3_server: S3Server, monkeypatch, tmp_path) -> None:
    from processor.store.s3 import S3Store

    _clean_env(monkeypatch, tmp_path)
    store = S3Store.from_settings(s3_server.settings(s3_server.new_bucket()))
    with pytest.raises(StoreAccessError) as caught:
        list(store.list("inputs/"))
    assert store.retry_policy.retries == 0  # not retried: no retry can help
    message = str(caught.value)
    assert s3_server.endpoint_url in message
    assert "none found" in message and "$AWS_ACCESS_KEY_ID" in message and "store.profile" in message


def test_unknown_profile_is_a_config_error_naming_the_key(s3_server: S3Server, monkeypatch, tmp_path) -> None:
    from processor.errors import ConfigError
    from processor.store.s3 import S3Store

    _clean_env(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match=r"store\.profile: AWS profile 'no-such-profile' not found"):
        S3Store.from_settings(s3_server.settings("any", profile="no-such-profile"))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "processor", *args], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, check=False)


def test_cli_wrong_or_missing_keys_exit_4_once_with_no_secret_in_debug_output(s3_server: S3Server, tmp_path) -> None:
    """Through the real CLI at --log-level DEBUG, with a wrong secret and with no keys at all: exit 4,
    one fatal event, the secret nowhere."""
    secret = "wrong-secret-" + uuid.uuid4().hex
    bucket = s3_server.new_bucket()
    config = tmp_path / "config.yaml"
    config.write_text("store: {kind: s3}\nstyles: {toon: {engine: toon, variants: 1}}\nrun: {styles: [toon]}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_"))}
    env |= {
        "PROCESSOR_STORE__KIND": "s3",
        "PROCESSOR_STORE__BUCKET": bucket,
        "PROCESSOR_STORE__ENDPOINT_URL": s3_server.endpoint_url,
        "PROCESSOR_STORE__REGION": "us-east-1",
        "PROCESSOR_CONFIG": str(config),
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    runs = [(env, ["run", "--once"]), (env, ["status"]), (env, ["doctor"])]
    # And with no credentials anywhere: the same single error, saying where keys are looked for.
    bare = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    bare |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
             "AWS_EC2_METADATA_DISABLED": "true"}
    runs.append((bare, ["run", "--once"]))
    for run_env, command in runs:
        proc = _cli(run_env, *command, "--log-level", "DEBUG")
        output = proc.stdout + proc.stderr
        assert proc.returncode in (4, 6), (command, output[-2000:])  # doctor reports with its own code
        assert secret not in output, command
        assert s3_server.endpoint_url in output
        if command[0] != "doctor":
            events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
            assert [e["event"] for e in events if e["level"] == "error"] == ["fatal"], command
            assert "$AWS_SECRET_ACCESS_KEY" in proc.stderr


# --- IBM COS with an IAM API key ---------------------------------------------------------------


class _RefusingIam(http.server.BaseHTTPRequestHandler):
    """Answers every token request as IAM does for an unknown API key."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found.",
                           "context": {"requestId": "test"}}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def refusing_iam() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingIam)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/identity/token"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cos_store(monkeypatch, tmp_path, auth_endpoint: str, endpoint_url: str, api_key: str):
    from processor.config import StoreSettings
    from processor.store.cos import CosStore

    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("COS_API_KEY", api_key)
    settings = StoreSettings(kind="cos", bucket="toys", endpoint_url=endpoint_url, auth_endpoint=auth_endpoint,
                             instance_id="crn:v1:test", max_attempts=COS_MAX_ATTEMPTS, max_backoff_s=0.05,
                             connect_timeout_s=2, read_timeout_s=2)
    return CosStore.from_settings(settings)


def test_cos_refused_api_key_is_one_clear_error_without_the_key(
    refusing_iam: str, s3_server: S3Server, monkeypatch, tmp_path, debug_logs
) -> None:
    api_key = "fake-iam-key-" + uuid.uuid4().hex
    store = _cos_store(monkeypatch, tmp_path, refusing_iam, s3_server.endpoint_url, api_key)
    with pytest.raises(StoreAccessError) as caught:
        list(store.list("inputs/"))
    assert store.retry_policy.retries == 0  # a refused key is final: not retried
    message = str(caught.value)
    assert s3_server.endpoint_url in message and "$COS_API_KEY" in message
    assert "Provided API key could not be found" in message
    assert api_key not in message
    assert api_key not in _all_log_text(debug_logs)


def test_cos_unreachable_iam_endpoint_fails_fast_without_the_key(
    s3_server: S3Server, monkeypatch, tmp_path, debug_logs
) -> None:
    api_key = "fake-iam-key-" + uuid.uuid4().hex
    iam = f"http://127.0.0.1:{_closed_port()}/identity/token"
    store = _cos_store(monkeypatch, tmp_path, iam, s3_server.endpoint_url, api_key)
    with pytest.raises(StoreError) as caught:
        list(store.list("inputs/"))
    assert store.retry_policy.retries == COS_MAX_ATTEMPTS - 1  # retried as configured, then the error
    # An IAM outage is worth retrying (TransientStoreError); the message says which endpoint failed.
    assert isinstance(caught.value, TransientStoreError)
    assert iam.rsplit(":", 1)[0] in str(caught.value) or "identity/token" in str(caught.value)
    assert api_key not in str(caught.value)
    assert api_key not in _all_log_text(debug_logs)
