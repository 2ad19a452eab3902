# ers-worker: `make run` runs it end to end on this machine, `make test` tests it.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3
SANDBOX_PORT ?= 8765

.PHONY: install tools run test lint format typecheck pytest schemas sandbox worker bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the worker, the sandbox and the dev tools

# Idempotent and quiet when both are on PATH; otherwise installs Debian's package (as root).
tools: ## promtool and prometheus (Debian's `prometheus` package) for tests/integration/test_observability.py
	bash .ci/install-prometheus

run: $(STAMP) ## sandbox + worker + the sample requests, printing each outcome
	$(BIN)/ers-worker demo

test: lint typecheck pytest ## everything CI runs

# Branch coverage of worker, schemas and sandbox, subprocesses included ([tool.coverage.*]
# in pyproject.toml); the report closes the run.
pytest: $(STAMP) tools
	$(BIN)/pytest --cov --cov-report=term

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schemas: $(STAMP) ## regenerate schemas/*.schema.json from the models
	$(BIN)/ers-worker schemas --write

sandbox: $(STAMP) ## the e-RS sandbox alone, on SANDBOX_PORT
	$(BIN)/ers-sandbox --host 127.0.0.1 --port $(SANDBOX_PORT)

worker: $(STAMP) ## the production entry point, configured from the environment
	$(BIN)/ers-worker run

bench: $(STAMP) ## the benchmarks, in one go against one sandbox: CPU against a bare pipeline, latency hiding, the shared budget (about 15 minutes)
	$(BIN)/python -m bench.suite
	@echo "--- one patient (its sagas run one at a time): a figure of its own"
	$(BIN)/python -m bench.throughput --requests 50 --concurrency 50 --same-patient

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache build/coverage letters
