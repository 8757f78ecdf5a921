"""scripts/release.sh: the wheel, the sdist and the SBOM end to end, and what it hands docker build.

Docker does not run here: the image path is checked with a stand-in ``docker`` on PATH that
records its arguments, against the Dockerfile's build arguments and OCI labels. The release tools
(build, cyclonedx-bom) come from the ``release`` extra; without them the tests skip, except under
CI (``$CI`` set), where a missing tool is a failure.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from processor import __version__
from tests.unit.test_lock import read_lock

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "release.sh"
LICENCE = "Apache-2.0"
#: Seconds for a release build without the image (a few seconds here).
RELEASE_TIMEOUT_S = 300
#: The OCI annotation keys the image carries, and the build argument release.sh fills each with.
OCI_LABELS = {"version": "VERSION", "revision": "REVISION", "created": "CREATED", "source": "SOURCE_URL",
              "licenses": "LICENSES"}
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def _need_release_tools() -> None:
    missing = [m for m in ("build", "cyclonedx_py") if importlib.util.find_spec(m) is None]
    if missing:
        message = f"{missing} missing: pip install -e '.[release]'"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI installs the release extra from requirements/ci.txt")
        pytest.skip(message)


def _fake_docker(folder: Path) -> Path:
    """A ``docker`` that records its arguments, one a line, in ``folder/docker-args``."""
    folder.mkdir(parents=True, exist_ok=True)
    docker = folder / "docker"
    docker.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{folder}/docker-args"\n')
    docker.chmod(0o755)
    return folder / "docker-args"


def _release(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    recorded = _fake_docker(tmp_path / "bin")
    dist = tmp_path / "dist"
    environ = {k: v for k, v in os.environ.items() if k not in ("IMAGE", "SOURCE_URL", "LOCK_FILE", "DIST")}
    environ |= {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
                "DIST": str(dist), **env}
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=environ, capture_output=True, text=True,
                          timeout=RELEASE_TIMEOUT_S, cwd=ROOT)
    return proc, dist, recorded


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_no_image_builds_the_wheel_the_sdist_and_the_sbom_of_the_image_lock(tmp_path: Path) -> None:
    _need_release_tools()
    proc, dist, recorded = _release(tmp_path, "--no-image")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not recorded.exists(), "--no-image ran docker"
    wheel = dist / f"toy_cartoonizer-{__version__}-py3-none-any.whl"
    sdist = dist / f"toy_cartoonizer-{__version__}.tar.gz"
    sbom = dist / f"toy-cartoonizer-{__version__}-image.cdx.json"
    assert sorted(p.name for p in dist.iterdir()) == sorted(["SHA256SUMS", wheel.name, sdist.name, sbom.name])

    # The wheel: version and licence in its metadata, the licence text itself, the web pages' files.
    with zipfile.ZipFile(wheel) as zf:
        info = f"toy_cartoonizer-{__version__}.dist-info"
        metadata = HeaderParser().parsestr(zf.read(f"{info}/METADATA").decode())
        assert metadata["Name"] == "toy-cartoonizer" and metadata["Version"] == __version__
        assert metadata["License-Expression"] == LICENCE and metadata["License-File"] == "LICENSE"
        assert zf.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        names = zf.namelist()
    assert "processor/__init__.py" in names and any(n.startswith("processor/api/templates/") for n in names)
    assert "ibm-cos-sdk>=2.13; extra == \"cos\"" in metadata.get_all("Requires-Dist")

    # The sdist: the source, the licence and the changelog, no half test tree.
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"LICENSE", "CHANGELOG.md", "pyproject.toml", "README.md", "processor/__init__.py"} <= members
    assert not any(m.startswith("tests/") for m in members)

    # The SBOM: CycloneDX JSON of exactly the image's locked packages, versions and hashes.
    bom = json.loads(sbom.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"]) == ("toy-cartoonizer", __version__)
    assert root["purl"] == f"pkg:pypi/toy-cartoonizer@{__version__}"
    assert [lic["license"]["id"] for lic in root["licenses"]] == [LICENCE]
    lock = read_lock(ROOT / "requirements" / "image.txt")
    components = {canonicalize_name(c["name"]): c for c in bom["components"]}
    assert set(components) == set(lock)
    for name in ("torch", "diffusers", "pillow", "fastapi"):
        component = components[canonicalize_name(name)]
        version, hashes = lock[canonicalize_name(name)]
        assert component["version"] == str(version) and component["purl"] == f"pkg:pypi/{name}@{version}"
        listed = [h for ref in component.get("externalReferences", []) for h in ref.get("hashes", [])]
        assert len(listed) == hashes and all(h["alg"] == "SHA-256" for h in listed)
    assert "gradio" not in components and "pytest" not in components  # CI's and the Space's, not the image's

    sums = dict(reversed(line.split(None, 1)) for line in (dist / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {wheel.name, sdist.name, sbom.name}


def test_the_image_build_gets_every_oci_label_the_dockerfile_declares(tmp_path: Path) -> None:
    _need_release_tools()
    proc, _, recorded = _release(tmp_path, "--", "--build-arg", "TORCH_INDEX_URL=https://example.invalid/whl",
                                 IMAGE="registry.example.com/toy-cartoonizer",
                                 SOURCE_URL="https://example.invalid/toy-cartoonizer", SOURCE_DATE_EPOCH="0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    args = recorded.read_text().splitlines()
    assert args[0] == "build" and args[-3:] == ["-t", f"registry.example.com/toy-cartoonizer:{__version__}", "."]
    build_args = dict(a.split("=", 1) for prev, a in itertools.pairwise(args) if prev == "--build-arg")
    assert build_args["VERSION"] == __version__
    assert re.fullmatch(re.escape(_head()) + r"(-dirty)?", build_args["REVISION"])
    assert build_args["CREATED"] == "1970-01-01T00:00:00Z"
    assert build_args["SOURCE_URL"] == "https://example.invalid/toy-cartoonizer"
    assert build_args["LICENSES"] == LICENCE
    assert build_args["LOCK_FILE"] == "requirements/image.txt"
    assert build_args["TORCH_INDEX_URL"] == "https://example.invalid/whl"  # arguments after -- pass through

    # Each label reads the build argument release.sh fills, declared in the runtime stage.
    runtime = re.split(r"(?m)^FROM\s", (ROOT / "Dockerfile").read_text())[-1]
    declared = dict(re.findall(r"(?m)^ARG\s+(\w+)=(.*)$", runtime))
    labels = dict(re.findall(r'org\.opencontainers\.image\.(\w+)="([^"]*)"', runtime))
    for key, arg in OCI_LABELS.items():
        assert labels[key] == "${" + arg + "}" and arg in declared and arg in build_args, key
    assert declared["LICENSES"] == LICENCE


def test_an_image_build_without_docker_stops_before_building(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin",
                               "SOURCE_URL": "https://example.invalid/x", "DIST": str(tmp_path / "dist"),
                               "PYTHON": sys.executable})
    if "is missing: pip install" in proc.stderr:
        _need_release_tools()
    if Path("/usr/bin/docker").exists():
        pytest.skip("docker is installed here")
    assert proc.returncode == 1 and "docker is not installed (or use --no-image)" in proc.stderr
    assert not (tmp_path / "dist").exists()


def test_the_version_is_semver_and_every_shipped_tag_is_it() -> None:
    """One version: processor/__init__.py's. The deploy overlays pin the image tag of that version,
    and CHANGELOG.md's sections are SemVer versions under an Unreleased section."""
    assert SEMVER.match(__version__), __version__
    for kustomization in sorted((ROOT / "deploy").rglob("kustomization.yaml")):
        for image in yaml.safe_load(kustomization.read_text()).get("images", []):
            assert image["newTag"] == __version__, f"{kustomization.relative_to(ROOT)}: tag {image['newTag']}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"(?m)^## \[([^\]]+)\]", changelog)
    assert sections and sections[0] == "Unreleased", sections
    for version in sections[1:]:
        assert SEMVER.match(version), f"CHANGELOG.md: section [{version}] is not a SemVer version"
    assert "Semantic Versioning" in changelog and "Keep a Changelog" in changelog


def test_the_licence_is_apache_2_everywhere_it_is_stated() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'(?m)^license = "Apache-2\.0"$', pyproject)
    assert re.search(r'(?m)^license-files = \["LICENSE"\]$', pyproject)
