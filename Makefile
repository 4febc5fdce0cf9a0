# Two commands on a fresh machine: `make up` (the local stack) and `make test`.
# Every target creates and uses .venv itself; nothing else needs installing first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test bench lint setup-test venv clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	@scripts/ensure-prometheus.sh
	$(BIN)/vllm-canary up

# Installs the real components the tests start (Prometheus, nginx, vLLM CPU build,
# Label Studio) into system packages or cached venvs; fast when already there.
setup-test: $(STAMP)
	scripts/setup-test-deps.sh

test: setup-test
	$(BIN)/ruff check .
	$(BIN)/pytest --durations=15

bench: $(STAMP)
	scripts/setup-test-deps.sh
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint deploy/docker/*.Dockerfile
	$(BIN)/vllm-canary validate deploy/helm/vllm-canary

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
