# `make dev` runs the local gateway; `make test` runs every check. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv dev test lint unit integration template-tests bench bench-local build deploy-dev clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

dev: venv
	$(BIN)/onysoft dev $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/cfn-lint template.yaml

test: lint
	$(BIN)/pytest -q

unit: venv
	$(BIN)/pytest -q tests/unit

integration: venv
	$(BIN)/pytest -q tests/integration

template-tests: venv
	$(BIN)/pytest -q tests/template

# Not part of `make test`: overhead, cold starts, DynamoDB work and cost per request -> docs/BENCHMARKS.md
# (about 20 minutes on 2 cores; loopback only). The bench group holds its extra dependencies, if any.
bench: venv
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m tools.bench

# Only the local gateway's curve and start times (part of `make bench`; ~15 minutes): its BENCHMARKS.md section.
bench-local: venv
	$(BIN)/python -m tools.bench.local_gateway

# Needs the SAM CLI (install it apart from this venv: `pipx install aws-sam-cli`) and python3.13 on PATH.
build:
	sam validate --lint
	sam build

deploy-dev: build
	sam deploy --config-env dev

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .ruff_cache
