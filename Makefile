# Two entry points, each doing its own set-up on a fresh machine:
#   make dev    - the pipeline on this machine (local Kafka, ingress, printed curl)
#   make test   - the test suite against real servers started by fixtures (installs the
#                 system packages they need when run as root, see .ci/install-deps)
# and, once set up:
#   make report - what the analytics store holds (also while `make dev` runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test report bench kafka-jars system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/python -m passpost.localkafka fetch

dev: $(STAMP) kafka-jars
	$(BIN)/passpost dev

system-deps:
	.ci/install-deps

# system-deps first: Java and Maven are what kafka-jars needs.
test: system-deps $(STAMP) kafka-jars
	$(BIN)/python -m pytest $(PYTEST_ARGS)

report: $(STAMP)
	$(BIN)/passpost report

bench: $(STAMP) kafka-jars
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
