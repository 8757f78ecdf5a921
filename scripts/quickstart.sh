#!/usr/bin/env bash
# Set up a virtual environment, put sample photos into ./bucket/inputs, run the worker once on the
# embedded default store (a local directory), and show what it made under ./bucket/outputs.
# Usage: bash scripts/quickstart.sh [PHOTO_DIR]   (default: ../shared/toys if present, else synthetic toys)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/processor ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
. .venv/bin/activate

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
