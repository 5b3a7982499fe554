# Two entry points, each doing its own set-up on a fresh machine:
#   make dev   - the pipeline on this machine (local Kafka, ingress, printed curl)
#   make test  - the test suite against real servers started by fixtures
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test bench kafka-jars clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/python -m passpost.localkafka fetch

dev: $(STAMP) kafka-jars
	$(BIN)/passpost dev

test: $(STAMP) kafka-jars
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) kafka-jars
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
