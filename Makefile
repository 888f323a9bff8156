# The two commands of the README, and a few more for developers.
# Everything installs into .venv from PyPI; nothing else is needed on the machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint compat checkov bench profile soak install clean

run: $(STAMP)  ## Run the pipeline on its embedded local servers, in the foreground
	$(BIN)/clickstream run

test: $(STAMP)  ## Run the whole test suite on its own servers (free ports)
	$(BIN)/pytest

bench: $(STAMP)  ## The pipeline (clickstream run) and the baseline under wrk, then the worker (BENCH_SECONDS, default 15)
	$(BIN)/python -m tests.perf.bench

profile: $(STAMP)  ## CPU by process and py-spy profiles of one bench cell: make profile CELL="single 32" (or e2e, stream, release, broker)
	$(BIN)/python -m tests.perf.profile $(or $(CELL),single 32)

soak: $(STAMP)  ## Half capacity for SOAK_SECONDS (1800) with worker kills and broker restarts
	$(BIN)/python -m tests.perf.soak

lint: $(STAMP)  ## ruff, mypy and the layer contract (import-linter, [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy clickstream batches producers schemas stream_app consumers deploy
	$(BIN)/lint-imports

compat:  ## Import every module and run the unit tests under the newest Python here (.venv-compat)
	scripts/compat.sh

checkov:  ## checkov (pinned, .venv-checkov) over deploy/: the rendered overlays, the Dockerfile, secrets
	scripts/checkov.sh

install: $(STAMP)

# Re-installs only when pyproject.toml changes, so a second `make run` starts in seconds.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[local,test,dev]"
	@touch $@

clean:  ## Remove the virtual environment and the local servers' data
	rm -rf $(VENV) .venv-compat .venv-checkov .clickstream
