# syntax=docker/dockerfile:1
#
# Production image of the Triton-compatible inference server.
#
#   docker build -t triton-compatible-server:0.1.0 .
#   docker build --build-arg VARIANT=cpu -t triton-compatible-server:0.1.0-cpu .
#
# CUDA and cuDNN are pinned to the build of onnxruntime-gpu that the image installs.
# onnxruntime-gpu 1.31 on PyPI is a CUDA 13.0 build: its CUDA provider links
# libcudart.so.13, libcublas.so.13 and libcublasLt.so.13 (capi/build_and_package_info.py
# says cuda_version = '13.0') and it loads cuDNN 9 at run time (its "cudnn" extra asks for
# nvidia-cudnn-cu13~=9.0). ONNX Runtime documents that a build against one CUDA major works
# with any minor of that major, and that cuDNN 8 and 9 builds are not interchangeable. A
# CUDA 12 or cuDNN 8 base would make the CUDA execution provider fail to load, and sessions
# would quietly run on the CPU. So the base is CUDA 13.0 with cuDNN 9 (13.0.1 ships cuDNN
# 9.13), and ONNXRUNTIME_GPU_VERSION is held to 1.31.x: move both together or neither.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=python:3.11-slim-bookworm
ARG ONNXRUNTIME_GPU_VERSION=1.31.1

# The GPU base: Ubuntu 24.04 with the CUDA 13.0 runtime libraries and cuDNN 9.
FROM ${CUDA_IMAGE} AS base-gpu
# Distribution packages float with the base image's security updates; the base tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The NVIDIA container runtime mounts only the driver libraries these capabilities name:
# compute for CUDA, utility for NVML (nvidia-smi, GPU metrics and MIG discovery).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The CPU base: the same wheel runs ONNX Runtime's CPU provider, no CUDA libraries needed.
FROM ${CPU_IMAGE} AS base-cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# Install into a virtual environment in a throwaway stage, so the runtime image carries the
# installed package but neither the source tree nor pip's build leftovers. The environment is
# built on the same base as the runtime so its interpreter path and ABI match.
# The stage name is computed from VARIANT, which hadolint cannot resolve to a stage.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG ONNXRUNTIME_GPU_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY . .
# A constraint, not a requirement: it pins onnxruntime-gpu where the platform selects it
# (Linux x86_64) and leaves other platforms to the package's own onnxruntime dependency.
RUN echo "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" > /tmp/constraints.txt \
    && /opt/venv/bin/pip install --constraint /tmp/constraints.txt .

# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
# A numeric user, so the kubelet can verify runAsNonRoot without resolving a name.
RUN groupadd --system --gid 10001 triton \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin triton \
    && mkdir -p /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000 8001 8002
# For plain Docker runs; Kubernetes ignores it and uses the Deployment's probes instead.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
# tini is PID 1: it forwards SIGTERM to the server and reaps orphans. It signals only the
# server, not the whole process group (-g): the server stops its own child processes after
# draining, and they must not die before the requests they serve have finished.
ENTRYPOINT ["/usr/bin/tini", "--", "triton-compatible-server"]
CMD ["--model-repository=/models"]
