VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-unit test-integration coverage test-lowest test-faults test-cluster test-compose check-compose lint docs bench bench-full plots demo topology clean

install: $(STAMP)

# The library with every extra and the dev tools, and the reference service (reference/,
# a distribution of its own: the postdate wheel never installs a package named orders).
$(STAMP): pyproject.toml reference/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' -e ./reference
	touch $(STAMP)

# The whole suite in stages: the unit tests first (no broker; a failure there stops it),
# then everything that talks to the broker and the databases.
test: test-unit test-integration

# No broker, no database server: pure functions, in-memory channels, SQLite files.
test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# Against the real RabbitMQ (RABBITMQ_URL) and PostgreSQL (DATABASE_URL), and the docs'
# code blocks.
test-integration: $(STAMP)
	$(PY) -m pytest -q --ignore=tests/unit --ignore=tests/faults --ignore=tests/cluster

# The unit and integration suites with line coverage of postdate and the reference service.
coverage: $(STAMP)
	$(PY) -m pytest -q --ignore=tests/faults --ignore=tests/cluster \
		--cov=postdate --cov=orders --cov-report=term:skip-covered

# The declared floors: the unit tests and `postdate --help/--version` in .venv-lowest, with
# every direct dependency at the lowest version pyproject.toml allows (.ci/lowest; no broker).
test-lowest:
	.ci/lowest

# Broker restarts, connection cuts, a memory alarm, kill -9 of a publisher, against a
# RabbitMQ node of the tests' own (rabbit/node.sh; needs root and rabbitmq-server).
test-faults: $(STAMP)
	$(PY) -m pytest -q -s --no-cov tests/faults

# kill -9 of a queue leader's node in a three-node cluster of the tests' own
# (rabbit/cluster.sh, ports 5691-5693; needs root and rabbitmq-server): nothing lost, the
# failover pause measured into bench/results/cluster.json. About 3 minutes; not in CI.
test-cluster: $(STAMP)
	$(PY) -m pytest -q -s --no-cov tests/cluster

# The integration suite against the compose stack (RabbitMQ with the delayed-message plugin,
# PostgreSQL, the app), brought up under a project of its own and always torn down
# (.ci/test-compose; needs a Docker engine and Compose v2).
test-compose: $(STAMP)
	.ci/test-compose

# Without a Docker engine: the files docker-compose.yml and its Dockerfiles reference exist,
# and `docker-compose config -q` accepts the file (when docker-compose is installed).
check-compose: $(STAMP)
	$(PY) .ci/check-compose

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check src reference tests bench consumers
	$(VENV)/bin/mypy src reference tests bench consumers

# The documentation site into site/ (mkdocs.yml, docs/), with the docs extra installed on
# first use. --strict: a broken link or a missing API reference fails the build.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict

# bench.publish adds Celery's native delayed delivery as series when the bench extra is
# installed ($(PY) -m pip install -e '.[bench]'), and says it skips them when it is not.
bench: $(STAMP)
	$(PY) -m bench.publish
	$(PY) -m bench.consume
	$(PY) -m bench.outbox
	$(PY) -m bench.timing

# The long runs (tens of minutes): broker memory and disk per pending command at 100k and
# 1M pending, stock WAL against rabbit/rabbitmq.conf's, on a node of its own (rabbit/node.sh;
# needs root and rabbitmq-server). BENCH_MEMORY_COUNTS=20000 makes a quick one. Then the
# cluster's failover figures (make test-cluster, about 3 minutes more).
bench-full: $(STAMP)
	$(PY) -m bench.memory $(if $(BENCH_MEMORY_COUNTS),--counts $(BENCH_MEMORY_COUNTS))
	$(MAKE) test-cluster

# PNGs into docs/img/ and the tables of docs/benchmarks.md, from bench/results/*.json
# (needs matplotlib: the bench extra).
plots: $(STAMP)
	$(PY) -m bench.plots

# The demo installs what it needs (the library's sql extra and the reference service), not
# the dev tools; a venv made by `make install` already has it all.
DEMO_STAMP := $(VENV)/.demo-installed

$(DEMO_STAMP): pyproject.toml reference/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[demo]' -e ./reference
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m orders.demo

topology: $(STAMP)
	$(VENV)/bin/postdate topology declare

clean:
	rm -rf $(VENV) .venv-lowest .pytest_cache .mypy_cache .ruff_cache
