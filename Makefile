# `make run` serves the default model and the demo; `make test` runs the whole suite,
# `make test-fast` its quick layer, `make lint` the linters, the import contracts and the type
# checker, `make docs` the documentation site.
# Each sets up .venv first, with scripts/install: the same install the Dockerfile runs.
# The tests also get what they drive outside Python (Chromium, Prometheus, PostgreSQL) from
# scripts/test-deps, which installs what is missing (root needed then) and prints the PostgreSQL
# URL; when something cannot be had it says so in one line and the tests do not run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup run alpaca-model eval-alpaca test test-fast bench lint format docs settings-table compose-up compose-down test-stack loop

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install
	EDITABLE=1 PYTHON=$(PYTHON) scripts/install $(VENV) demo,train,dev
	touch $(STAMP)

run: setup
	$(BIN)/alpaca-serve

# Every test, on TEST_PROCESSES processes (pytest-xdist; each file on one process, the costliest
# first: tests/conftest.py orders them). Most real-engine tests keep one core busy, so two
# processes on 2 cores take about two thirds of the time one does.
TEST_PROCESSES ?= 2
test: setup
	url="$$(scripts/test-deps)" && ALPACA_TEST_DATABASE_URL="$$url" $(BIN)/pytest \
		-n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder --durations=25

# The quick loop while editing: everything but the tests that load vLLM or start real servers
# (the HTTP behaviour runs on the scripted engine instead); under a minute.
test-fast: setup
	url="$$(scripts/test-deps --fast)" && ALPACA_TEST_DATABASE_URL="$$url" $(BIN)/pytest -m "not slow"

# The Alpaca cycle unattended (scripts/loop): starts a server of its own on the default model,
# runs `alpaca-loop run --auto` (sft, publish, compare, prefer, report) in loop-run/, stops the
# server. A rerun resumes what did not finish; `rm -r loop-run` starts over.
loop: setup
	scripts/loop $(BIN) loop-run -- $(LOOP_ARGS)

# The project's Alpaca model: `alpaca-train --recipe alpaca` on the default model (a LoRA on the
# shipped Alpaca data; about 15 minutes on 2 cores), copied to alpaca_serve/models/alpaca, which
# the server serves as `alpaca`. `rm -r alpaca-model-run` before training again.
alpaca-model: setup
	scripts/alpaca-model $(BIN) alpaca-model-run

# The Alpaca result: the `alpaca` adapter against its base, blind, on the 252 evaluation
# instructions, judged by reference (scripts/eval-alpaca; about 20 minutes on 2 cores).
eval-alpaca: setup
	scripts/eval-alpaca $(BIN) eval-alpaca-run

bench: setup
	$(BIN)/python -m benchmarks.http_overhead

# The habits (ruff), the layers (import-linter's contracts in pyproject.toml: no import from a
# lower layer to a higher one, no cycle) and the types (mypy, configured in pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The documentation site (docs/, mkdocs.yml) into site/; a broken link or a missing page fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

settings-table: setup
	$(BIN)/python -m tools.settings_table --write

# The Docker Compose stack (scripts/compose): build the CPU image, start the default stack
# detached and return once the server is healthy; then stop and remove it.
compose-up:
	scripts/compose up

compose-down:
	scripts/compose down

# The stack test: builds and starts the stack itself (make compose-up), checks it from outside,
# and stops it (make compose-down); needs a Docker engine (.ci/docker-up installs and starts one).
test-stack: setup
	$(BIN)/pytest -m stack tests/deploy/test_stack.py
