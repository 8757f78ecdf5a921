#!/usr/bin/env bash
# The test suite: unit tests, the store contract suite against a real SeaweedFS, worker and CLI tests.
# Extra arguments go to pytest (e.g. -m "not slow", -k claims).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && . .venv/bin/activate
exec python -m pytest -q "$@"
