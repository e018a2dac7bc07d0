# One entry for people and CI alike. `make demo` sets everything up and runs the main job;
# `make test` runs the test suite (what .ci/run runs).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo up down test test-all test-fast lint typecheck gen-protos check-protos bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)            ## create .venv/ and install DomainOS with its test and dev tools

demo: $(STAMP)             ## start a local federation, run a sample job through it, show results, stop
	$(VENV)/bin/domainctl demo

up: $(STAMP)               ## start the local federation in the background
	$(VENV)/bin/domainctl up --detach

down: $(STAMP)
	$(VENV)/bin/domainctl down

test: $(STAMP)             ## the default test selection (unit, in-process, store on SQLite + etcd, end-to-end)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)         ## every tier, slow ones included
	$(PY) -m pytest -q

test-fast: $(STAMP)        ## pure and in-process tests only
	$(PY) -m pytest -m "not slow and not e2e and not store" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy domainos master_domain sub_domain node_agent dsdk domainctl

gen-protos: $(STAMP)       ## regenerate domainos/api/v1 from proto/ (commit the result)
	$(PY) scripts/gen_protos.py

bench: $(STAMP)            ## every benchmark at full size, by hand (~1 h; results in bench/results/)
	$(PY) -m bench

bench-smoke: $(STAMP)      ## every benchmark at smoke size (what CI runs; *-smoke.json)
	$(PY) -m bench --smoke

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
