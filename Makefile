VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo topology clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check src tests bench consumers
	$(VENV)/bin/mypy src tests bench consumers

bench: $(STAMP)
	$(PY) -m bench.publish
	$(PY) -m bench.consume
	$(PY) -m bench.outbox

demo: $(STAMP)
	$(PY) -m orders.demo

topology: $(STAMP)
	$(VENV)/bin/postdate topology declare

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
