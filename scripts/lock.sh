#!/usr/bin/env bash
# Re-resolve the lock files from pyproject.toml and requirements/pins.txt. Run it after changing a
# dependency, an extra or a pin, and commit the result with that change (tests/test_lock.py fails
# while the lock lags behind pyproject.toml):
#
#   bash scripts/lock.sh                 # re-lock, keeping every version that still fits
#   bash scripts/lock.sh --upgrade       # newest versions allowed (extra arguments go to uv)
#   bash scripts/lock.sh --upgrade-package pillow
#
# requirements/ci.txt     every extra (sd, test, lint, ...): what .ci/run installs (pip --require-hashes)
# requirements/image.txt  sd and api extras (the workers and processor serve): what the Dockerfile installs; every pin equals ci.txt's, so the
#                         image runs exactly the versions CI tested
#
# One interpreter and platform, CI's and the image's: CPython 3.11 on x86_64 Linux (glibc >= 2.28).
#
# PyTorch from another index (CUDA 12 builds for nodes whose driver predates CUDA 13):
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 LOCK_NAME=cu128 bash scripts/lock.sh
# writes requirements/image-cu128.txt only (same pins, torch and its nvidia-* libraries from that
# index); build it with --build-arg TORCH_INDEX_URL=... --build-arg LOCK_FILE=requirements/image-cu128.txt.
# CI tests the PyPI build; such an image shares every other pin with CI.
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

if [ -n "${TORCH_INDEX_URL:-}" ]; then
  name=${LOCK_NAME:?set LOCK_NAME too, e.g. cu128: the lock is written to requirements/image-\$LOCK_NAME.txt}
  # unsafe-best-match: torch's local build (2.14.1+cu128) from that index, the rest from PyPI.
  "$uv" pip compile -q pyproject.toml --extra sd --extra api "${target[@]}" -c requirements/pins.txt -c requirements/ci.txt \
    --extra-index-url "$TORCH_INDEX_URL" --index-strategy unsafe-best-match "$@" -o "requirements/image-$name.txt"
  exit 0
fi

# --all-extras: an extra added to pyproject.toml is locked (and installed by CI) without editing this.
"$uv" pip compile -q pyproject.toml --all-extras "${target[@]}" \
  -c requirements/pins.txt "$@" -o requirements/ci.txt
# Constrained by ci.txt: the image's pins are CI's, not a second resolution that could differ.
"$uv" pip compile -q pyproject.toml --extra sd --extra api "${target[@]}" \
  -c requirements/pins.txt -c requirements/ci.txt -o requirements/image.txt
