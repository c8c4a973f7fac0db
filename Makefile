# Herald: the two commands of the README are `make demo` and `make test`.
# Everything else is set up on the way: a venv, the Java parts from Maven Central, redis-server.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test test-unit stack-up stack-down cluster-up status bench clean-stack

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed
	$(PY) -m herald_stack install

## Start Kafka, Redis, the provider mocks, the delivery and expansion jobs, the HTTP API and the
## audit consumer; send notifications (one through the API) and a campaign; report.
demo: setup
	$(PY) -m herald_stack.demo

## Install what is missing, start the stack, run every test (unit and integration).
test: setup
	$(PY) -m pytest tests

test-unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

stack-up: setup
	$(PY) -m herald_stack up

cluster-up: setup
	$(PY) -m herald_stack up --flink-cluster

stack-down:
	$(PY) -m herald_stack down

status:
	$(PY) -m herald_stack status
