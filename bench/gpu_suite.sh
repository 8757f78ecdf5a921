#!/usr/bin/env bash
# The GPU check in one call (bench/gpu_suite.py has the steps). On the CUDA machine, from the
# repository root, with .whl/ (scripts/gpu_wheels.sh) and .gpu-photos/ (python -m bench.gpu_suite
# photos) carried:
#
#   bench/gpu_suite.sh                 # results under $OUT (else .gpu-suite-out/)
#   bench/gpu_suite.sh --only real-run,img2img-bf16      # a rerun of some steps
#   GPU_SUITE_TINY=1 GPU_SUITE_SIMULATE=1 bench/gpu_suite.sh   # the CPU rehearsal (see below)
#
# The wheels are installed into $GPU_SUITE_SITE (default /tmp/site) with the pip line the device
# notes prescribe. GPU_SUITE_SIMULATE=1 is the rehearsal on a machine that has every package and
# another Python: the cp312 wheels are installed as files for Python 3.12, and a sitecustomize.py
# hides this environment's copies of what the GPU machine lacks, so a missing wheel fails here.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SITE=${GPU_SUITE_SITE:-/tmp/site}
#: Seconds for everything after the wheels: the suite's own budget is 430 s, this is the backstop
#: (with the wheels' ~20 s the call stays within 8 minutes).
LIMIT_S=${GPU_SUITE_TIMEOUT_S:-450}
if [[ ${GPU_SUITE_TINY:-0} == 1 || " $* " == *" --tiny "* ]]; then
  LIMIT_S=${GPU_SUITE_TIMEOUT_S:-1600}  # the rehearsal's steps run on the CPU (budget 1500 s)
fi
export OUT=${OUT:-$PWD/.gpu-suite-out}
mkdir -p "$OUT"

paths=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
  started=$SECONDS
  if [[ ${GPU_SUITE_SIMULATE:-0} == 1 ]]; then
    rm -rf "$SITE" "$SITE-guard"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 .whl/*.whl || exit 1
    PYTHONPATH=$PWD "$PY" -m bench.gpu_suite guard --site "$SITE" --into "$SITE-guard" >/dev/null || exit 1
    paths=$SITE-guard:$SITE:$PWD
  else
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/*.whl || { echo "error: installing .whl/*.whl into $SITE failed" | tee "$OUT/steps.log"; exit 1; }
    paths=$SITE:$PWD
  fi
  echo "wheels: $(ls .whl/*.whl | wc -l) installed into $SITE in $((SECONDS - started)) s"
else
  echo "no wheels in .whl/ (scripts/gpu_wheels.sh): using this environment's packages"
fi
export PYTHONPATH=$paths${PYTHONPATH:+:$PYTHONPATH}

timeout --kill-after=15 "$LIMIT_S" "$PY" -m bench.gpu_suite run --out "$OUT" "$@"
rc=$?
if [[ -f $OUT/summary.md ]]; then cat "$OUT/summary.md"; fi
exit $rc
