# Elastin: `make demo` runs the example application, `make test` runs every test.
# Both set up what they need: Debian packages (when root), a virtualenv in .venv, the package.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= examples/shop.yaml

.PHONY: demo test unit integration lint bench setup clean help

help:
	@echo "make demo   run the example application (examples/shop.yaml) on this machine"
	@echo "make test   lint, type-check and run the whole test suite"
	@echo "make bench  run the benchmarks (bench/*.py), writing bench/results/latest.json"
	@echo "make lint   ruff, mypy --strict and the layer contracts (lint-imports)"

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/haproxy.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) sh scripts/setup.sh
	@touch $(STAMP)

# The demo's workloads run `python3`: with .venv/bin first on PATH that is the venv's
# interpreter, which has grpcio (the inventory service speaks gRPC).
RUNPATH := PATH="$(abspath $(BIN)):$$PATH"

demo: $(STAMP)
	$(RUNPATH) $(BIN)/elastin up $(SPEC)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy --strict src examples/shop
	$(BIN)/lint-imports --no-cache --no-logo

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(RUNPATH) $(BIN)/pytest -q -m integration tests

test: $(STAMP) lint
	$(RUNPATH) $(BIN)/pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
