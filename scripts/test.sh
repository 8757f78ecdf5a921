#!/usr/bin/env bash
# The test suite: unit tests, the store contract suite against a real SeaweedFS, worker and CLI tests.
# Extra arguments go to pytest (e.g. -m "not slow", -k claims).
# Runs in PYTEST_WORKERS processes (pytest-xdist; default 2, the CI machine's cores; 0: one
# process, e.g. to debug). --dist loadfile keeps a test module on one process, so module fixtures
# are built once; each process starts its own SeaweedFS on free ports. pytest's exit code passes
# through (5: no test collected, which .ci/run fails on).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && . .venv/bin/activate
workers="${PYTEST_WORKERS:-2}"
if [ "$workers" != 0 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
exec python -m pytest -q "$@"
