# syntax=docker/dockerfile:1
# convserve images.
#
#   docker build --target serve -t convserve:serve .   # the service: ONNX Runtime on CUDA, no torch
#   docker build --target train -t convserve:train .   # training and export, with torch
#
# onnxruntime-gpu==1.31.1 (pyproject.toml) is built against CUDA 13.0 and cuDNN 9 (its
# build_and_package_info.py says cuda_version 13.0; its `cudnn` extra asks for
# nvidia-cudnn-cu13~=9.0; libonnxruntime_providers_cuda.so needs libcublas.so.13 and
# libcudart.so.13), so every stage starts from NVIDIA's CUDA 13.0 runtime image with cuDNN 9.
# torch==2.14.1 is a CUDA 13.0 build (+cu130) too, so the training image shares the base.
# The host needs an NVIDIA driver for CUDA 13 (>= 580) and the NVIDIA Container Toolkit.
#
# The project requires Python 3.11 and Ubuntu 24.04 ships 3.12, so uv installs a standalone
# CPython 3.11 into /opt/python; the virtual environment lives in /opt/venv.

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.7

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
# python: CPython 3.11 and an empty virtual environment with pip
FROM ${CUDA_IMAGE} AS python
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install 3.11 \
    && uv venv --seed --python 3.11 /opt/venv \
    && rm /usr/local/bin/uv

# ---------------------------------------------------------------------------------------------
# build: install the package with the `serve` extra (no torch) into /opt/venv
FROM python AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN /opt/venv/bin/pip install --no-cache-dir ".[serve]"

# ---------------------------------------------------------------------------------------------
# serve: the service, as a non-root user, with the models baked in
FROM ${CUDA_IMAGE} AS serve
LABEL org.opencontainers.image.title="convserve" \
      org.opencontainers.image.description="CNN image classification served by ONNX Runtime"
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 convserve \
    && useradd --system --uid 10001 --gid convserve --home-dir /app --shell /usr/sbin/nologin \
       convserve
WORKDIR /app
COPY --chown=convserve:convserve models ./models
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVSERVE_HOST=0.0.0.0 \
    CONVSERVE_PORT=8000 \
    CONVSERVE_MODELS_DIR=/app/models \
    CONVSERVE_PROVIDERS=CUDA,CPU
USER 10001:10001
EXPOSE 8000
# /readyz answers 200 once every model loaded and answered a warm-up run (503 before).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVSERVE_PORT', '8000') + '/readyz', timeout=4)"]
CMD ["convserve", "serve"]

# ---------------------------------------------------------------------------------------------
# train: training, evaluation and export (torch, CUDA 13.0 build); writes into /app/models
FROM python AS train
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN /opt/venv/bin/pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" ".[train]" \
    && groupadd --system --gid 10001 convserve \
    && useradd --system --uid 10001 --gid convserve --home-dir /app --shell /usr/sbin/nologin \
       convserve \
    && mkdir -p /app/models /app/runs /cache \
    && chown convserve:convserve /app/models /app/runs /cache
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    CONVSERVE_CACHE=/cache
USER 10001:10001
ENTRYPOINT ["convserve-train"]
CMD ["--help"]
