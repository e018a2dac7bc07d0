# One entry for people and CI alike. `make demo` sets everything up and runs the main job;
# `make test` runs the test suite (what .ci/run runs).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo up down ops-tools test test-all test-fast lint typecheck gen-protos check-protos bench bench-smoke clean \
        deploy-up deploy-down test-deploy

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

ops-tools:                 ## Debian tools of the ops tests (dockerd, promtool, chromium): installed when missing (root)
	-@$(PYTHON) scripts/docker_engine.py install || echo "ops-tools: not installed; tests that need them skip, saying why"

test: $(STAMP) ops-tools   ## the default test selection (unit, in-process, store on SQLite + etcd, end-to-end, ops)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)         ## every tier, slow ones included
	$(PY) -m pytest -q

test-fast: $(STAMP)        ## pure and in-process tests only
	$(PY) -m pytest -m "not slow and not e2e and not store" -q

deploy-up: $(STAMP)        ## the docker-compose deployment (deploy/): base image if missing, wheels, image, pki, compose up
	$(PY) scripts/build_images.py up

deploy-down: $(STAMP)      ## stop and remove its containers (data volumes kept; add ARGS=--volumes to drop them)
	$(PY) scripts/build_images.py down $(ARGS)

test-deploy: $(STAMP)      ## the deployment tier: a private engine, the images, compose up, failover (root; slow)
	$(PY) -m pytest -m deploy tests/deploy -q -s

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
