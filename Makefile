# ers-worker: `make run` runs it end to end on this machine, `make test` tests it.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3
SANDBOX_PORT ?= 8765

.PHONY: install lock audit tools run test lint format typecheck pytest schemas sandbox worker bench clean

# The locked versions, each checked against its hash, then the project itself (no deps: the
# lock has them all). A new dependency in pyproject.toml needs `make lock` first.
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv with the worker, the sandbox and the dev tools

# Resolved against PyPI alone (LOCK_INDEX), whatever mirrors this machine's pip is set up
# with, so the hashes are PyPI's and the lock installs anywhere. requirements.lock is what the
# image ships (deploy/Dockerfile); requirements-dev.lock adds the dev extra (make install).
LOCK_INDEX ?= https://pypi.org/simple
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= \
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links --index-url $(LOCK_INDEX)
# Keeps the pinned versions that still fit pyproject.toml; `make lock UPGRADE=1` takes the newest.
LOCK_UPGRADE = $(if $(UPGRADE),--upgrade,)

lock: $(STAMP) ## rewrite requirements.lock and requirements-dev.lock from pyproject.toml
	$(PIP_COMPILE) $(LOCK_UPGRADE) --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) $(LOCK_UPGRADE) --extra dev --output-file requirements-dev.lock pyproject.toml

# Known vulnerabilities in the locked versions, from PyPI's advisory data (AUDIT_SERVICE=osv
# for OSV's). Exits 1 if any is found, and (--strict) if any package could not be looked up:
# an audit that skipped packages is not a pass.
AUDIT_SERVICE ?= pypi
audit: $(STAMP) ## pip-audit the locked versions (requirements.lock, requirements-dev.lock)
	$(BIN)/pip-audit --strict --require-hashes --disable-pip \
		--vulnerability-service $(AUDIT_SERVICE) -r requirements.lock -r requirements-dev.lock

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
