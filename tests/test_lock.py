"""The lock files keep up with pyproject.toml, and the image's pins are CI's.

requirements/ci.txt (what .ci/run installs) and requirements/image.txt (what the Dockerfile
installs) are written by scripts/lock.sh. A dependency added to pyproject.toml without re-locking
would otherwise install in neither place (both install with --no-deps), or CI would test other
versions than the image runs. Every failure here says: run ``bash scripts/lock.sh``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, which is what the lock is resolved for

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
RELOCK = "run `bash scripts/lock.sh` and commit requirements/"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_lock(path: Path) -> dict[str, tuple[Version, int]]:
    """{canonical name: (pinned version, number of hashes)} of a uv/pip-compile lock file."""
    pins: dict[str, tuple[Version, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{path.name} pins {current} twice"
            pins[current] = (Version(match.group(2)), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def declared(*extras: str) -> list[Requirement]:
    """The project's requirements plus those of ``extras`` ("*": every extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in (project["optional-dependencies"] if extras == ("*",) else extras):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize(("lock", "extras"), [("ci.txt", ("*",)), ("image.txt", ("sd", "api"))])
def test_every_declared_dependency_is_locked_within_its_range(lock, extras):
    pins = read_lock(LOCKS / lock)
    for req in declared(*extras):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (pyproject.toml) is not in requirements/{lock}: {RELOCK}"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {name}=={version}, outside pyproject.toml's {req}: {RELOCK}")


def test_every_pin_carries_hashes():
    for lock in ("ci.txt", "image.txt"):
        pins = read_lock(LOCKS / lock)
        assert len(pins) > 20, f"requirements/{lock} looks empty"
        unhashed = sorted(name for name, (_, hashes) in pins.items() if hashes == 0)
        assert not unhashed, f"requirements/{lock} has pins without --hash ({unhashed}): {RELOCK}"


def test_the_image_runs_the_versions_ci_tested():
    ci, image = read_lock(LOCKS / "ci.txt"), read_lock(LOCKS / "image.txt")
    differ = {name: (str(v), str(ci[name][0]) if name in ci else None)
              for name, (v, _) in image.items() if name not in ci or ci[name][0] != v}
    assert not differ, f"image.txt pins that CI did not test (image, ci): {differ}: {RELOCK}"
    # The image is the sd and api extras without the test tools.
    assert "pytest" in ci and "pytest" not in image and "torch" in image


def test_deliberate_pins_hold():
    pins = read_lock(LOCKS / "ci.txt")
    for line in (LOCKS / "pins.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert req.specifier.contains(pins[canonicalize_name(req.name)][0]), f"{req} not honoured: {RELOCK}"


def test_ci_and_the_image_install_from_the_lock():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install .*--require-hashes.* -r requirements/ci\.txt", ci)
    assert re.search(r"pip install .*--no-deps -e \.", ci), ".ci/run must not resolve the project's deps again"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'--require-hashes --no-deps .*-r "\$\{LOCK_FILE\}"', dockerfile)
    assert "ARG LOCK_FILE=requirements/image.txt" in dockerfile
    # The build stage copies the lock before the source: a code change keeps the dependency layer.
    build = dockerfile[dockerfile.index("AS build"):dockerfile.index("AS runtime")]
    assert build.index("COPY requirements/") < build.index("COPY processor")
