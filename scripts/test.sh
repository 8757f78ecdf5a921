#!/usr/bin/env bash
# The test suite: unit tests, the store contract suite against a real SeaweedFS, worker and CLI tests.
# Extra arguments go to pytest (e.g. -m "not slow", -k claims).
# PYTEST_WORKERS=N runs it in N processes (pytest-xdist, --dist loadfile: a test module stays on
# one process, so module fixtures are built once; each process starts its own SeaweedFS on free
# ports). The default, 0, is one process: on the 2-core CI machine two processes were not faster
# (each builds the session's tiny models again, and torch already uses both cores), see the
# commit that set this. pytest's exit code passes through (5: no test collected, which .ci/run
# fails on).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && . .venv/bin/activate
workers="${PYTEST_WORKERS:-0}"
if [ "$workers" != 0 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
exec python -m pytest -q "$@"
