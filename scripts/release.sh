#!/usr/bin/env bash
# Build a release of the version in processor/__init__.py (CHANGELOG.md, "Versions"):
#
#   dist/toy_cartoonizer-<version>-py3-none-any.whl   the wheel
#   dist/toy_cartoonizer-<version>.tar.gz             the sdist
#   dist/toy-cartoonizer-<version>-image.cdx.json     CycloneDX SBOM (JSON) of the image's locked
#                                                     dependency set (requirements/image.txt), with hashes
#   dist/SHA256SUMS                                   sha256 of the three
#   image <IMAGE>:<version>                           docker build, with OCI labels (Dockerfile, end of the
#                                                     runtime stage): version, revision, created, source, licences
#
#   bash scripts/release.sh                       # all of it (needs Docker with BuildKit)
#   bash scripts/release.sh --no-image            # dist/ only
#   bash scripts/release.sh -- --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
#                                                 # arguments after -- go to docker build
#
# Environment:
#   IMAGE              image name without tag (default toy-cartoonizer), e.g. icr.io/<namespace>/toy-cartoonizer
#   SOURCE_URL         the repository URL for org.opencontainers.image.source (default: git remote "origin";
#                      the image build stops if neither gives one)
#   LOCK_FILE          the lock the image installs and the SBOM describes (default requirements/image.txt;
#                      requirements/image-cu128.txt for a CUDA 12 image, see scripts/lock.sh)
#   DIST               output folder (default dist/; emptied first)
#   SOURCE_DATE_EPOCH  the release time (default: the commit's time), so the SBOM and labels are reproducible
#
# Needs the release extra (build, cyclonedx-bom): pip install -e '.[release]' (CI's lock has it).
# The wheel is built without build isolation, with the setuptools of this environment (locked in
# requirements/ci.txt), so a release downloads nothing. Run it from a clean checkout of the tag: the
# revision label gets "-dirty" when the tree has uncommitted changes.
set -euo pipefail
cd "$(dirname "$0")/.."

image=true
docker_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-image) image=false ;;
    --) shift; docker_args=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    *) echo "release.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

python=${PYTHON:-python}
dist=${DIST:-dist}
lock=${LOCK_FILE:-requirements/image.txt}
name=${IMAGE:-toy-cartoonizer}

for module in build cyclonedx_py; do
  "$python" -c "import $module" 2>/dev/null || {
    echo "release.sh: the Python module $module is missing: pip install -e '.[release]'" >&2; exit 1; }
done
[ -f "$lock" ] || { echo "release.sh: LOCK_FILE $lock does not exist" >&2; exit 1; }

version=$("$python" -c 'import processor; print(processor.__version__)')
if ! [[ "$version" =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$ ]]; then
  echo "release.sh: processor.__version__ is '$version', not a SemVer version (X.Y.Z)" >&2; exit 1
fi
revision=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "release.sh: the working tree has uncommitted changes: revision label $revision-dirty" >&2
  revision="$revision-dirty"
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
licence=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["license"])')

if [ "$image" = true ]; then  # checked before building anything
  # From the remote: an scp-like git@host:path becomes https://host/path, and user:token@ is
  # dropped, so no credential of the remote ends up in a label of a published image.
  source_url=${SOURCE_URL:-$(git remote get-url origin 2>/dev/null \
    | sed -E 's#^[A-Za-z0-9._-]+@([^:/]+):#https://\1/#; s#^([a-z+]+://)[^@/]*@#\1#' || true)}
  if [ -z "$source_url" ]; then
    echo "release.sh: no source URL for the image label: set SOURCE_URL=https://... (there is no git remote 'origin')" >&2
    exit 1
  fi
  command -v docker >/dev/null || { echo "release.sh: docker is not installed (or use --no-image)" >&2; exit 1; }
fi

rm -rf "$dist"
mkdir -p "$dist"

# 1. Wheel and sdist (the wheel is built from the sdist, so the sdist is known to be complete).
"$python" -m build --no-isolation --outdir "$dist" . >&2

# 2. The SBOM of what the image installs: every pinned package with its version, purl and hashes.
sbom="$dist/toy-cartoonizer-$version-image.cdx.json"
"$python" -W "ignore::UserWarning" -m cyclonedx_py requirements --pyproject pyproject.toml --mc-type application \
  --of JSON --output-reproducible -o "$sbom" "$lock"
# cyclonedx-py cannot read a dynamic version from pyproject.toml: name the root component's here.
"$python" - "$sbom" "$version" <<'PY'
import json, sys
path, version = sys.argv[1], sys.argv[2]
bom = json.load(open(path))
root = bom["metadata"]["component"]
root["version"] = version
root["purl"] = f"pkg:pypi/{root['name']}@{version}"
json.dump(bom, open(path, "w"), indent=2)
PY

(cd "$dist" && sha256sum -- *.whl *.tar.gz *.cdx.json > SHA256SUMS)
echo "release.sh: $version ($revision) in $dist/:" >&2
ls -l "$dist" >&2

[ "$image" = true ] || exit 0

# 3. The image, labelled (OCI image spec annotations, as labels on the image config).
DOCKER_BUILDKIT=1 docker build \
  --build-arg "VERSION=$version" \
  --build-arg "REVISION=$revision" \
  --build-arg "CREATED=$created" \
  --build-arg "SOURCE_URL=$source_url" \
  --build-arg "LICENSES=$licence" \
  --build-arg "LOCK_FILE=$lock" \
  ${docker_args[@]+"${docker_args[@]}"} \
  -t "$name:$version" .
echo "release.sh: built $name:$version" >&2
