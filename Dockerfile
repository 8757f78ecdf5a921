# syntax=docker/dockerfile:1
#
# The toy cartoonizer's GPU worker image.
#
#   bash scripts/release.sh                  # the release build: wheel, sdist, SBOM, and this image, labelled
#   docker build -t toy-cartoonizer:0.1.0 .
#   docker build --build-arg BAKE_MODELS=true -t toy-cartoonizer:0.1.0-models .
#   docker run --gpus all -e PROCESSOR_STORE__KIND=s3 -e PROCESSOR_STORE__BUCKET=my-toys \
#       -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -v models:/models toy-cartoonizer:0.1.0
#
# Base: python slim + the PyTorch CUDA wheel, not nvidia/cuda:*-runtime. The CUDA build of torch
# on PyPI brings its own CUDA runtime, cuBLAS and cuDNN as nvidia-* wheels; only the driver comes
# from the node (the NVIDIA container toolkit mounts it). An nvidia/cuda runtime base would carry a
# second copy of the same libraries (about 3 GB) that torch never loads, and it pins Python to the
# distribution's. The one thing the cuda images do that we must do ourselves is set
# NVIDIA_DRIVER_CAPABILITIES, so the toolkit mounts libcuda (see the runtime stage).
#
# The node's driver must support the CUDA version of the torch wheel. The lock's torch (2.14.1 from
# PyPI, see requirements/pins.txt) is built for CUDA 13 (nvidia-cuda-runtime 13.x), which needs an
# NVIDIA driver >= 580. For nodes with an older driver, lock a CUDA 12 build from the PyTorch index
# and build from that lock (scripts/lock.sh explains):
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 LOCK_NAME=cu128 bash scripts/lock.sh
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#       --build-arg LOCK_FILE=requirements/image-cu128.txt .
#
# Dependencies come from a lock file with hashes (requirements/image.txt: the sd, api and cos extras,
# resolved by scripts/lock.sh for CPython 3.11, hence the 3.11 base; its pins equal CI's wherever a
# CI-only package allows, tests/test_lock.py) and are installed before the source is copied, so a
# code change rebuilds only the small last layer.
#
# Pin the base by digest for reproducible builds: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- build stage
# Everything pip needs stays here; the runtime stage copies only the finished virtualenv.
FROM ${PYTHON_IMAGE} AS build

# The index torch and its nvidia-* libraries come from (PyPI by default; the lock names the build).
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG LOCK_FILE=requirements/image.txt
ARG PIP_VERSION=25.3

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The dependency layer: only the lock files, so it is rebuilt only when they change. pip's cache
# is a BuildKit cache mount: kept between builds on this builder, never part of a layer.
# --require-hashes: every file pip installs must match the lock's hash; --no-deps: the lock is the
# whole set, so nothing unlocked can slip in as a dependency.
COPY requirements/ ./requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "pip==${PIP_VERSION}" \
 && pip install --require-hashes --no-deps --extra-index-url "${TORCH_INDEX_URL}" -r "${LOCK_FILE}"

# The project itself, without dependencies (the layer above has them all). Only what the package
# build reads: pyproject names README.md as the long description and LICENSE as its licence file.
COPY pyproject.toml README.md LICENSE ./
COPY processor ./processor
# DL3013 (pin versions in pip) cannot apply to ".": it is this source tree, not a registry name.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && processor --version

# --------------------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

# Set to true to run `processor models pull` at build time: the image then carries the weights of
# the styles named in the config below and needs no model cache volume (do not mount one over
# /models then: a mounted volume hides what the image holds there).
ARG BAKE_MODELS=false
ARG TINI_VERSION=0.19.0-1+b3
ARG APP_UID=10001

# tini as PID 1: it forwards SIGTERM to the worker (whose first SIGTERM finishes the current item
# and exits: 0 when nothing is left, 9 when `run --once` left inputs) and reaps zombies (torch and the tokenizers may start helper processes). Python as
# PID 1 would get handled signals too, but would leave orphans unreaped.
RUN apt-get update \
 && apt-get install -y --no-install-recommends "tini=${TINI_VERSION}" \
 && rm -rf /var/lib/apt/lists/*

# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it from the image alone.
RUN groupadd --gid "${APP_UID}" app \
 && useradd --uid "${APP_UID}" --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
 && mkdir -p /models /etc/processor \
 && chown "${APP_UID}:${APP_UID}" /models

COPY --from=build /opt/venv /opt/venv
# The default configuration; Kubernetes mounts its ConfigMap over /etc/processor.
COPY config.yaml /etc/processor/config.yaml

# HF_HOME: the Hugging Face cache (model weights) lives on a mounted volume so pods share one
# download. Caches that are not worth keeping go to /tmp, the one writable place when the root
# filesystem is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROCESSOR_CONFIG=/etc/processor/config.yaml \
    HF_HOME=/models \
    TORCH_HOME=/models/torch \
    XDG_CACHE_HOME=/tmp/.cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER ${APP_UID}:${APP_UID}
WORKDIR /home/app

# Before VOLUME: what a build step writes under a path after it is declared a volume is discarded.
RUN if [ "${BAKE_MODELS}" = "true" ]; then processor models pull; fi

VOLUME ["/models"]

# OCI image labels (the annotation keys of the OCI image spec). scripts/release.sh passes the
# values; a plain `docker build` gets these placeholders. Declared last: a build argument that
# changes every build (revision, created) would otherwise invalidate the cache of every later step.
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE_URL=unknown
ARG LICENSES=Apache-2.0
LABEL org.opencontainers.image.title="toy-cartoonizer" \
      org.opencontainers.image.description="GPU batch processor: toy photos in an object-storage bucket become Pixar/Disney-like cartoons" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="${LICENSES}"

# Prometheus /metrics and the probes /healthz, /readyz (metrics.port in the config; 0 turns it off).
EXPOSE 9108

ENTRYPOINT ["/usr/bin/tini", "--", "processor"]
# The Job's drain; the daemon Deployment runs `run` without --once.
CMD ["run", "--once"]
