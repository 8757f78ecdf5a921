"""The README and the docs site stay true and reachable.

``mkdocs build --strict`` (.ci/run) checks the links and anchors between the site's pages. These
tests check what it cannot: the README (outside the site) and its links, the README's size, that
every page is in the nav, that pages carry no issue numbers or dates, and that the reference
pages keep up with the code (every config key, every package, every file they cite).
"""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from PIL import Image
from pydantic import BaseModel

from processor.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: Bytes: the README says what the product is and links into the site; the reference lives there.
README_MAX_BYTES = 12 * 1024
#: Bytes: the README's picture, loaded on every visit of the repository page.
PICTURE_MAX_BYTES = 200_000

# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# This project's issue numbers ("issue 24", "issues 8 and 17", "#24"), but not another
# repository's ("seaweedfs/seaweedfs#8800"), which a page may cite as a source.
_ISSUE = re.compile(r"\bissues?\s+#?\d+|(?<![\w/.-])#\d+\b", re.IGNORECASE)
_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
# Files of this repository a page cites: tests/..., bench/..., scripts/..., deploy/..., and the
# modules `python -m tests.x` / `python -m bench.x` run. (requirements/ is left out: a page may
# name a lock file the reader generates, such as a CUDA 12 image lock.)
_CITED_PATH = re.compile(r"(?<![\w/.-])((?:tests|bench|scripts|deploy)/[\w./-]*\.(?:py|sh|yaml|txt))\b")
_CITED_MODULE = re.compile(r"python -m ((?:tests|bench)(?:\.\w+)+)")


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def nav_pages(nav: list) -> list[str]:
    """The Markdown files mkdocs.yml's nav names, at any depth."""
    found: list[str] = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                found += nav_pages(value)
            elif isinstance(value, str) and value.endswith(".md"):
                found.append(value)
    return found


def relative_links(markdown: str) -> list[str]:
    """Link and image targets that point into the repository (not URLs, not same-page anchors)."""
    targets = [m.group(1) for m in _LINK.finditer(markdown)]
    return [t.split("#", 1)[0] for t in targets
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of the settings tree as a dotted path (``pipeline.decode.max_pixels``);
    ``styles`` is left out: its keys are per engine, on the styles page."""
    keys = []
    for name, field in model.model_fields.items():
        if not prefix and name == "styles":
            continue
        nested = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            keys += config_keys(nested[0], f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_readme_is_at_most_12_kb():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes; at most {README_MAX_BYTES:,}: move reference material into docs/")


def test_readme_links_and_images_resolve():
    targets = relative_links(README.read_text(encoding="utf-8"))
    assert any(t.startswith("docs/") and t.endswith(".md") for t in targets), "README links into no docs page"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_picture_is_a_small_png():
    images = [t for t in relative_links(README.read_text(encoding="utf-8")) if t.endswith(".png")]
    assert images, "README.md shows no picture"
    for image in images:
        path = ROOT / image
        assert path.stat().st_size <= PICTURE_MAX_BYTES, f"{image} is over {PICTURE_MAX_BYTES:,} bytes"
        with Image.open(path) as picture:
            assert picture.format == "PNG"


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = nav_pages(config["nav"])
    on_disk = [str(p.relative_to(DOCS)) for p in pages()]
    assert sorted(set(on_disk) - set(listed)) == [], "pages under docs/ missing from mkdocs.yml's nav"
    assert sorted(set(listed) - set(on_disk)) == [], "mkdocs.yml's nav names pages that do not exist"
    assert len(listed) == len(set(listed)), "a page is in the nav twice"


@pytest.mark.parametrize("path", [README, *pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers_or_dates(path):
    text = path.read_text(encoding="utf-8")
    issues = sorted({m.group(0) for m in _ISSUE.finditer(text)})
    assert not issues, f"{path.name} mentions issue numbers {issues}: write what is true, not where it came from"
    dates = sorted(set(_DATE.findall(text)))
    assert not dates, f"{path.name} has dates in its prose {dates}: a figure keeps its command, not its day"


def test_the_checks_above_can_fail():
    # Made-up numbers and a made-up day: what the patterns must catch, and the citation they must not.
    assert _ISSUE.search("the goal (issue 1)") and _ISSUE.search("Issues 1 and 2") and _ISSUE.search("see #1")
    assert not _ISSUE.search("fixed upstream in example/server#1")
    assert _DATE.search("measured 2001-02-03 on")
    links = "[a](docs/x.md#y) ![b](img/c.png) [c](https://x.org) [d](#here)"
    assert relative_links(links) == ["docs/x.md", "img/c.png"]
    assert nav_pages([{"A": "a.md"}, {"B": [{"C": "c.md"}, "d.md"]}]) == ["a.md", "c.md", "d.md"]


def test_every_config_key_is_in_the_configuration_reference():
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = config_keys(Settings)
    assert "pipeline.decode.max_pixels" in keys and "api.webhook_allow" in keys
    missing = [k for k in keys if f"`{k}`" not in page]
    assert not missing, f"docs/configuration.md does not document {missing}: add a row for each"


def test_every_package_is_named_in_the_architecture_page():
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    packages = sorted(p.parent.name for p in (ROOT / "processor").glob("*/__init__.py"))
    assert "queue" in packages
    missing = [p for p in packages if f"`{p}/`" not in page]
    assert not missing, f"docs/architecture.md does not name the packages {missing}: add them to its floors"


def test_files_the_docs_cite_exist():
    cited: dict[str, set[str]] = {}
    for path in [README, *pages()]:
        text = path.read_text(encoding="utf-8")
        for match in _CITED_PATH.finditer(text):
            cited.setdefault(match.group(1), set()).add(path.name)
        for match in _CITED_MODULE.finditer(text):
            cited.setdefault(match.group(1).replace(".", "/") + ".py", set()).add(path.name)
    assert "bench/chaos.py" in cited
    missing = {f: sorted(where) for f, where in cited.items() if not (ROOT / f).exists()}
    assert not missing, f"the docs cite files that do not exist (file: pages): {missing}"


def test_the_readme_picture_script_draws_a_small_png(tmp_path):
    out = tmp_path / "picture.png"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_picture.py"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 0 < out.stat().st_size <= PICTURE_MAX_BYTES
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > picture.height > 0
