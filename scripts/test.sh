#!/usr/bin/env bash
# The test suite, in tiers (one folder each under tests/):
#   unit         in-process: pure functions, the local store, fakes (no server, browser or weights)
#   contract     the store contract suite over every adapter (local, and S3 / COS on a real SeaweedFS)
#   integration  a real SeaweedFS, real `processor` subprocesses (CLI, run, serve), the worker end to end
#   models       tiny random-weight diffusion / caption / segmenter models (needs the sd extra)
#   chaos        the fault-injection harness (its full run is marked slow)
#   web          the pages of `processor serve` in Chromium
#
#   bash scripts/test.sh                      # every tier (what .ci/run runs)
#   bash scripts/test.sh unit contract        # some tiers, by name (tests/unit works too)
#   bash scripts/test.sh unit -k claims       # other arguments go to pytest
#   bash scripts/test.sh -m slow              # the slow tests only (RUN_SLOW=1 adds them to a run)
#
# PYTEST_WORKERS=N runs it in N processes (pytest-xdist, --dist loadfile: a test module stays on
# one process, so module fixtures are built once; each process starts its own SeaweedFS on free
# ports, and the tiny models are built once for all of them). The default, 0, is one process;
# .ci/run uses 3 (on 2 cores: the third fills them while the others wait on servers).
# pytest's exit code passes through (5: no test collected, which .ci/run fails on).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && . .venv/bin/activate
tiers=()
while [ $# -gt 0 ] && [[ $1 != -* && $1 != */* && -d tests/$1 ]]; do
  tiers+=("tests/$1")  # leading tier names; the first other argument and the rest go to pytest as given
  shift
done
workers="${PYTEST_WORKERS:-0}"
if [ "$workers" != 0 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
exec python -m pytest -q ${tiers[@]+"${tiers[@]}"} "$@"
