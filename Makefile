# `make dev` runs the local gateway; `make test` runs every check. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

CHROMIUM := /usr/bin/chromium

.PHONY: venv dev test test-stress lint unit integration template-tests bench bench-cost bench-invariant bench-local bench-memory bench-profile bench-scale bench-scale-record sam build deploy-dev clean chromium

# pip is tried three times: a download cut short by the network (IncompleteRead) once failed a clean CI run.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	for try in 1 2 3; do $(BIN)/pip install --quiet --upgrade pip && break; [ $$try -lt 3 ] || exit 1; sleep 5; done
	for try in 1 2 3; do $(BIN)/pip install --quiet -e '.[test]' && break; [ $$try -lt 3 ] || exit 1; sleep 5; done
	touch $(STAMP)

venv: $(STAMP)

dev: venv
	$(BIN)/onysoft dev $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/cfn-lint template.yaml

# Every test but the IAM check on two workers (a file's tests stay on one worker: they share its gateway), then the
# IAM check alone over what they all recorded (it must run after every other test; tests/conftest.py).
# --durations: the slowest tests, in CI's log (make test's time is watched).
IAM_RECORD := $(CURDIR)/.pytest-iam
WORKERS ?= 2
test: lint chromium
	rm -rf $(IAM_RECORD) && mkdir -p $(IAM_RECORD)
	ONYSOFT_IAM_RECORD=$(IAM_RECORD) $(BIN)/pytest -q -n $(WORKERS) --dist loadfile --durations=20 \
		--ignore=tests/test_iam_conformance.py
	ONYSOFT_IAM_RECORD=$(IAM_RECORD) ONYSOFT_IAM_WHOLE_SUITE=1 $(BIN)/pytest -q tests/test_iam_conformance.py

# The dashboard's browser tests drive Debian's chromium through Playwright (never `playwright install`: its
# download host is not reachable on CI). Installed when missing; CI runs as root. Without it the tests fail.
chromium:
	@test -x $(CHROMIUM) || for try in 1 2 3; do apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q chromium && break; [ $$try -lt 3 ] || exit 1; sleep 5; done

unit: venv
	$(BIN)/pytest -q tests/unit

integration: venv chromium
	$(BIN)/pytest -q tests/integration

template-tests: venv
	$(BIN)/pytest -q tests/template

# The integration suites RUNS times with BUSY cores kept busy by another process (tools/stress.py): a test that
# passes alone and fails under load has a race or a timing assumption in it. `make test-stress RUNS=5`.
RUNS ?= 5
BUSY ?= 1
test-stress: venv chromium
	$(BIN)/python -m tools.stress --runs $(RUNS) --busy $(BUSY)

# Not part of `make test`: overhead, cold starts, DynamoDB work and cost per request -> docs/BENCHMARKS.md
# (about 20 minutes on 2 cores; loopback only). The bench group holds its extra dependencies, if any.
bench: venv
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m tools.bench
	$(BIN)/python -m tools.bench.memory
	$(BIN)/python -m tools.bench.cost
	$(BIN)/python -m tools.bench.scale_sim --write-doc
	$(MAKE) bench-invariant

# The money invariant's state machine (tests/integration/test_money_invariant.py) run long: INVARIANT_RUNS runs of
# INVARIANT_STEPS requests each against the provider that bills; prints how many requests it tried.
INVARIANT_RUNS ?= 60
INVARIANT_STEPS ?= 20
bench-invariant: venv
	ONYSOFT_INVARIANT_RUNS=$(INVARIANT_RUNS) ONYSOFT_INVARIANT_STEPS=$(INVARIANT_STEPS) \
		$(BIN)/pytest -q -s --timeout 0 tests/integration/test_money_invariant.py

# The proxy's CPU per billed request, its profile (yappi, every thread) and memory per concurrent stream: section 6 of
# docs/BENCHMARKS.md (~3 minutes; not part of `make bench`, run it after a change on the request path).
bench-profile: venv
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m tools.bench.profile

# docs/SCALE.md's simulation (seconds): DynamoDB's partition limits against the recorded write patterns.
bench-scale: venv
	$(BIN)/python -m tools.bench.scale_sim --write-doc

# Re-record a write pattern (tools/bench/fixtures/write_pattern_$(PATTERN).json; ~10 s) from this checkout's code.
PATTERN ?= before
bench-scale-record: venv
	$(BIN)/python -m tools.bench.write_pattern --name $(PATTERN)

# Only the local gateway's curve and start times (part of `make bench`; ~15 minutes): its BENCHMARKS.md section.
bench-local: venv
	$(BIN)/python -m tools.bench.local_gateway

# Only section 4 of docs/BENCHMARKS.md and docs/cost_per_million.png (seconds): the cost per million requests from
# template.yaml and the figures the bench last wrote (part of `make bench`, after the sections it reads).
bench-cost: venv
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m tools.bench.cost

# Only the right-sizing section of docs/BENCHMARKS.md (memory and CPU per request, cost per MemorySize).
bench-memory: venv
	$(BIN)/python -m tools.bench.memory

# `make build` on a fresh machine: the SAM CLI in its own venv (.tools/sam-venv, never .venv: its pins
# clash with the project's), Python 3.13 found or installed (tools/find_python313.sh), every function
# and the layer built for arm64, then a check that every compiled file is aarch64 / CPython 3.13.
SAM_VENV := .tools/sam-venv
SAM := $(SAM_VENV)/bin/sam
SAM_STAMP := $(SAM_VENV)/.installed-stamp
SAM_CLI ?= aws-sam-cli>=1.140

$(SAM_STAMP):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/pip install --quiet '$(SAM_CLI)'
	touch $(SAM_STAMP)

sam: $(SAM_STAMP)

# PROXY_COMPUTE=managed-instances builds template.managed.json instead (the proxy on Lambda Managed Instances;
# generated from template.yaml by tools/onysoft_tools/proxy_compute.py; README "Deploy"). Deploy it with the
# subnets and security group: `make deploy-dev PROXY_COMPUTE=managed-instances` after setting them in samconfig.toml.
PROXY_COMPUTE ?= lambda
SAM_TEMPLATE := $(if $(filter managed-instances,$(PROXY_COMPUTE)),template.managed.json,template.yaml)
build: $(SAM_STAMP)
	$(if $(filter managed-instances,$(PROXY_COMPUTE)),PYTHONPATH=tools $(SAM_VENV)/bin/python -m onysoft_tools.proxy_compute managed-instances,\
	  @test "$(PROXY_COMPUTE)" = lambda || { echo "PROXY_COMPUTE is lambda or managed-instances"; exit 2; })
	PY313="$$(tools/find_python313.sh)" && export PATH="$$PY313:$$PATH" SAM_CLI_TELEMETRY=0 && \
	  python3.13 --version && \
	  $(SAM) validate --lint --template-file $(SAM_TEMPLATE) && \
	  $(SAM) build --template-file $(SAM_TEMPLATE)
	$(PYTHON) tools/onysoft_tools/arm64_check.py .aws-sam/build --require pydantic_core --require cryptography/hazmat/bindings

deploy-dev: build
	$(SAM) deploy --config-env dev

clean:
	rm -rf $(VENV) .tools .aws-sam .pytest_cache .ruff_cache .pytest-iam .stress
