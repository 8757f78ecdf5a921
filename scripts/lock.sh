#!/usr/bin/env bash
# Re-resolve the lock files from pyproject.toml and requirements/pins.txt. Run it after changing a
# dependency, an extra or a pin, and commit the result with that change (tests/unit/test_lock.py fails
# while the lock lags behind pyproject.toml):
#
#   bash scripts/lock.sh                 # re-lock, keeping every version that still fits
#   bash scripts/lock.sh --upgrade       # newest versions allowed (extra arguments go to uv)
#   bash scripts/lock.sh --upgrade-package pillow
#
# requirements/image.txt  what the Dockerfile installs: the sd, api and cos extras (workers, processor serve,
#                         IBM COS IAM keys), resolved ON ITS OWN (only pins.txt constrains it), so a cap that
#                         only a CI or Space package brings (gradio's pillow<13) never holds the image back
# requirements/ci.txt     every extra (sd, test, lint, space, release, ...): what .ci/run installs. Resolved with
#                         image.txt's versions as preferences, so every package the two share is pinned alike
#                         wherever a package only CI installs allows it. tests/unit/test_lock.py holds the rule for
#                         the rest: an unforced difference fails, a forced one is reported, and a forced one in
#                         a dependency the project declares must be acknowledged in requirements/ci-differs.txt.
#
# One interpreter and platform, CI's and the image's: CPython 3.11 on x86_64 Linux (glibc >= 2.28).
#
# PyTorch from another index (CUDA 12 builds for nodes whose driver predates CUDA 13):
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 LOCK_NAME=cu128 bash scripts/lock.sh
# writes requirements/image-cu128.txt only (same pins, torch and its nvidia-* libraries from that
# index); build it with --build-arg TORCH_INDEX_URL=... --build-arg LOCK_FILE=requirements/image-cu128.txt.
# CI tests the PyPI build; such an image shares every other pin with requirements/image.txt.
#
# uv does the resolving (installing stays plain pip); without uv on PATH this bootstraps it from
# PyPI into .venv-lock/.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  [ -x .venv-lock/bin/uv ] || { python3 -m venv .venv-lock && .venv-lock/bin/python -m pip install -q uv; }
  uv=.venv-lock/bin/uv
fi

target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes)

# The lock names this script as what wrote it (the compile's own arguments name temporary files).
header=(--custom-compile-command "bash scripts/lock.sh")
image_extras=(--extra sd --extra api --extra cos)

if [ -n "${TORCH_INDEX_URL:-}" ]; then
  name=${LOCK_NAME:?set LOCK_NAME too, e.g. cu128: the lock is written to requirements/image-\$LOCK_NAME.txt}
  # unsafe-best-match: torch's local build (2.14.1+cu128) from that index, the rest from PyPI.
  "$uv" pip compile -q pyproject.toml "${image_extras[@]}" "${target[@]}" "${header[@]}" \
    -c requirements/pins.txt -c requirements/image.txt \
    --extra-index-url "$TORCH_INDEX_URL" --index-strategy unsafe-best-match "$@" -o "requirements/image-$name.txt"
  exit 0
fi

# 1. The image's lock, on its own.
"$uv" pip compile -q pyproject.toml "${image_extras[@]}" "${target[@]}" "${header[@]}" \
  -c requirements/pins.txt "$@" -o requirements/image.txt

# 2. CI's lock. uv prefers the versions already in its output file, so that file starts as the
#    previous ci.txt with image.txt's pins laid over it: the image's versions win wherever they fit,
#    and CI-only packages keep theirs. (--upgrade ignores preferences: both locks then take the
#    newest that fits, which again agree unless a CI-only package forbids it.)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - requirements/ci.txt requirements/image.txt "$work/ci.txt" <<'PY'
import re, sys
from pathlib import Path

def pins(path):
    found = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
            if m:
                found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found

merged = pins(sys.argv[1]) | pins(sys.argv[2])
Path(sys.argv[3]).write_text("".join(f"{name}=={version}\n" for name, version in sorted(merged.items())))
PY
# --all-extras: an extra added to pyproject.toml is locked (and installed by CI) without editing this.
"$uv" pip compile -q pyproject.toml --all-extras "${target[@]}" "${header[@]}" \
  -c requirements/pins.txt "$@" -o "$work/ci.txt"
cp "$work/ci.txt" requirements/ci.txt
