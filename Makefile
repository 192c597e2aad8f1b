VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-faults test-cluster test-compose check-compose lint bench bench-full plots demo topology clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --ignore=tests/faults --ignore=tests/cluster

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
	$(VENV)/bin/ruff format --check src tests bench consumers
	$(VENV)/bin/mypy src tests bench consumers

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

demo: $(STAMP)
	$(PY) -m orders.demo

topology: $(STAMP)
	$(VENV)/bin/postdate topology declare

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
