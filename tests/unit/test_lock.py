"""The lock files keep up with pyproject.toml, and the image's pins agree with CI's where they can.

requirements/ci.txt (what .ci/run installs) and requirements/image.txt (what the Dockerfile
installs) are written by scripts/lock.sh. A dependency added to pyproject.toml without re-locking
would otherwise install in neither place (both install with --no-deps). Every failure here says:
run ``bash scripts/lock.sh``.

The image's lock is resolved on its own (the sd, api and cos extras), so a cap that only a CI or
Space package brings does not hold the image back. The rule for the two locks (``AGREEMENT``):

1. A package pinned in both has the same version in both, unless a package only CI installs
   forbids the image's version (its declared requirement excludes it). Then no one version fits
   both, and the difference is allowed. Any other difference fails: scripts/lock.sh prefers the
   image's versions, so it only appears when the locks were not written together.
2. Every allowed difference is reported (a warning in pytest's summary).
3. A difference in a dependency the project itself declares (pyproject.toml) also needs an entry
   in requirements/ci-differs.txt saying why. Then CI tests our own code against a version other
   than the one the image ships, and that must be a decision, not an accident. An entry whose
   difference is gone fails too, so the file stays true.
4. A package that only the image pins is allowed only when it comes in through a difference that
   rule 1 allows. Otherwise the image would carry a package CI never installed.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, which is what the lock is resolved for

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
RELOCK = "run `bash scripts/lock.sh` and commit requirements/"
#: The extras the image installs (Dockerfile: requirements/image.txt).
IMAGE_EXTRAS = ("sd", "api", "cos")
#: Where a difference between the locks in a dependency the project declares is acknowledged (rule 3).
ACKNOWLEDGED = LOCKS / "ci-differs.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_VIA_ONE = re.compile(r"^    # via ([A-Za-z0-9][A-Za-z0-9._-]*)")
_VIA_MANY = re.compile(r"^    #   ([A-Za-z0-9][A-Za-z0-9._-]*)")


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


def dependents(path: Path) -> dict[str, set[str]]:
    """{canonical name: names of the packages that pull it in} from a lock's ``# via`` comments
    (the project itself is ``toy-cartoonizer``; ``-c`` constraint files are left out)."""
    via: dict[str, set[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            via[current] = set()
            continue
        found = _VIA_ONE.match(line) or _VIA_MANY.match(line)
        if current and found and not line.strip().startswith(("# via -", "#   -")):
            via[current].add(canonicalize_name(found.group(1)))
    return via


def declared(*extras: str) -> list[Requirement]:
    """The project's requirements plus those of ``extras`` ("*": every extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in (project["optional-dependencies"] if extras == ("*",) else extras):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def ci_only_requirements(names: set[NormalizedName]) -> dict[str, list[Requirement]]:
    """{who: its requirements} for what only CI installs among ``names`` (packages pinned in ci.txt,
    not in image.txt), read from their installed metadata (CI's environment is installed from
    ci.txt; elsewhere the test skips), and for the project's extras that the image leaves out."""
    ci, image = read_lock(LOCKS / "ci.txt"), read_lock(LOCKS / "image.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {f"toy-cartoonizer[{extra}]": [Requirement(r) for r in reqs]
             for extra, reqs in project["optional-dependencies"].items() if extra not in IMAGE_EXTRAS}
    for name in sorted(names & (set(ci) - set(image))):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed: this check reads the metadata of an environment installed "
                        "from requirements/ci.txt, as .ci/run makes")
        if Version(installed) != ci[name][0]:
            pytest.skip(f"{name} {installed} is installed, requirements/ci.txt pins {ci[name][0]}: this check "
                        "needs an environment installed from the lock, as .ci/run makes")
        found[name] = [Requirement(r) for r in importlib.metadata.requires(name) or []]
    return found


def forbidders(name: NormalizedName, version: Version, requirements: dict[str, list[Requirement]]) -> list[str]:
    """Who among ``requirements`` excludes ``name==version`` (a requirement under an extra of theirs
    counts only if it holds without one)."""
    blocked = []
    for who, reqs in requirements.items():
        for req in reqs:
            if canonicalize_name(req.name) != name or (req.marker and not req.marker.evaluate({"extra": ""})):
                continue
            if not req.specifier.contains(version, prereleases=True):
                blocked.append(f"{who} ({req})")
    return blocked


def acknowledged() -> set[NormalizedName]:
    """The names in requirements/ci-differs.txt (one a line; ``#`` starts the reason)."""
    names = set()
    for line in ACKNOWLEDGED.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            names.add(canonicalize_name(entry))
    return names


@pytest.mark.parametrize(("lock", "extras"), [("ci.txt", ("*",)), ("image.txt", IMAGE_EXTRAS)])
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


def test_the_image_lock_holds_only_what_the_image_installs():
    ci, image = read_lock(LOCKS / "ci.txt"), read_lock(LOCKS / "image.txt")
    # The image is the sd, api and cos extras without the test tools, the Space or the release tools.
    assert "pytest" in ci and "pytest" not in image and "torch" in image
    assert "gradio" in ci and "gradio" not in image
    assert "ibm-cos-sdk" in image and "cyclonedx-bom" not in image


def test_shared_pins_agree_unless_a_ci_only_package_forbids_it():
    """The agreement rule of the module docstring, on the committed locks."""
    ci, image = read_lock(LOCKS / "ci.txt"), read_lock(LOCKS / "image.txt")
    differ = {name: (image[name][0], ci[name][0]) for name in set(ci) & set(image) if ci[name][0] != image[name][0]}
    # Only what pulls a differing package into ci.txt can forbid the image's version of it.
    pulling = dependents(LOCKS / "ci.txt")
    requirements = ci_only_requirements({who for name in differ for who in pulling[name]}) if differ else {}
    ours = {canonicalize_name(r.name) for r in declared(*IMAGE_EXTRAS)}
    allowed, problems = {}, []
    for name, (in_image, in_ci) in sorted(differ.items()):
        blocked = forbidders(name, in_image, requirements)
        if not blocked:
            problems.append(f"{name}: image.txt pins {in_image}, ci.txt {in_ci}, and nothing only CI installs "
                            f"forbids {in_image}: {RELOCK}")
        elif name in ours and name not in acknowledged():
            problems.append(f"{name}: image.txt pins {in_image}, ci.txt {in_ci} (forced by {', '.join(blocked)}); "
                            "the project imports it, so CI would test our code on another version than the image "
                            f"ships: add `{name}  # why` to requirements/ci-differs.txt, or move the cap")
        else:
            allowed[name] = f"{name} {in_image} in the image, {in_ci} in CI (forced by {', '.join(blocked)})"
    stale = sorted(acknowledged() - set(differ))
    if stale:
        problems.append(f"requirements/ci-differs.txt lists {stale}, which both locks now pin alike: remove them")
    image_only = dependents(LOCKS / "image.txt")
    for name in sorted(set(image) - set(ci)):
        if not image_only[name] & set(allowed):
            problems.append(f"{name} is pinned in image.txt only, pulled in by {sorted(image_only[name])}, none of "
                            f"which is an allowed difference: CI never installed it: {RELOCK}")
    assert not problems, "\n".join(problems)
    for line in allowed.values():
        warnings.warn(f"image and CI locks differ: {line}", stacklevel=1)


def test_the_agreement_check_tells_forced_from_unforced_differences():
    """``forbidders`` on requirements of known shape: what makes a difference allowed."""
    pillow = canonicalize_name("pillow")
    gradio = {"gradio": [Requirement("pillow<13.0,>=8.0"), Requirement("mcp<2; extra == 'mcp'")]}
    assert forbidders(pillow, Version("13.0.0"), gradio) == ["gradio (pillow<13.0,>=8.0)"]
    assert forbidders(pillow, Version("12.3.0"), gradio) == []
    # A cap under one of the CI package's own extras binds only when that extra is installed.
    extra_only = {"gradio": [Requirement("pillow<13; extra == 'oauth'")]}
    assert forbidders(pillow, Version("13.0.0"), extra_only) == []
    assert forbidders(pillow, Version("13.0.0"), {"toy-cartoonizer[space]": [Requirement("gradio>=5")]}) == []


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
