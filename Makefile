# hare_py: `make demo` runs the main job, `make test` runs everything CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Types: hare_py and the examples strict, the tests with relaxed rules (pyproject.toml).
# tests/contract and tests/contract_nats each have a conftest.py that, like
# tests/conftest.py, is the module `conftest` to mypy: each is checked on its own.
MYPY := $(BIN)/mypy && $(BIN)/mypy --no-warn-unused-configs tests/contract/conftest.py \
	&& $(BIN)/mypy --no-warn-unused-configs tests/contract_nats/conftest.py

.PHONY: demo test test-fast lint docs bench soak clean

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
# private servers that the tests start (installed from Debian if missing), with
# Go and nats.go for the Go peer of the NATS interop tests.
test: $(STAMP)
	bash .ci/install-rabbitmq.sh
	bash .ci/install-nats.sh
	bash .ci/install-go-peer.sh
	bash .ci/install-proton-examples.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MYPY)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site
	$(BIN)/pytest --cov

# The unit and sandbox tests only: no broker needed.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not rabbitmq and not chaos and not nats"

# hare_py against raw aiormq, aio-pika and FastStream on a private RabbitMQ
# (or HARE_BENCH_AMQP_URL), and against nats-py on a private nats-server (or
# HARE_BENCH_NATS_URL): tables and plots into bench/results/ (docs/performance.md
# gives how long each family of contenders takes; a full run is all of them).
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	bash .ci/install-rabbitmq.sh
	bash .ci/install-nats.sh
	$(BIN)/python -m bench

# 10 minutes of mixed RPC load on the anyio backend with a fault every 30 s, on a
# private RabbitMQ: nothing lost, no memory growth; figures into bench/results/soak.*.
soak: $(BENCH_STAMP)
	bash .ci/install-rabbitmq.sh
	$(BIN)/python -m bench.soak

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MYPY)

# The documentation site, built into build/site (`$(BIN)/mkdocs serve` to browse it).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build/site site
