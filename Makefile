# `make run` serves the default model and the demo; `make test` runs the whole suite.
# Both set up .venv first, with scripts/install: the same install the Dockerfile runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup run test bench lint settings-table

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install
	EDITABLE=1 PYTHON=$(PYTHON) scripts/install $(VENV) demo,train,dev
	touch $(STAMP)

run: setup
	$(BIN)/alpaca-serve

test: setup
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m benchmarks.http_overhead

lint: setup
	$(BIN)/ruff check .

settings-table: setup
	$(BIN)/python -m server.settings_table --write
