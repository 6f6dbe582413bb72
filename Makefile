# hare_py: `make demo` runs the main job, `make test` runs everything CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A supervised RPC client and server on the in-memory broker, a channel killed
# midway; set HARE_URL=amqp://... to run it against RabbitMQ instead.
demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Everything CI runs: lint, types, and the whole suite against the sandbox and
# a private RabbitMQ that the tests start (installed from Debian if missing).
test: $(STAMP)
	bash .ci/install-rabbitmq.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# The unit and sandbox tests only: no broker needed.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not rabbitmq and not chaos"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
