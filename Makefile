# Lablink: the two set-up commands are `make up` and `make test`.
# Everything they need is installed by the targets below, idempotently.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CHP_DIR := $(VENV)/proxy
CHP := $(CHP_DIR)/node_modules/.bin/configurable-http-proxy
CHP_VERSION ?= 5
# the OpenID Connect provider the tests log in through (npm oidc-provider, run by Node)
OIDC_DIR := $(VENV)/oidc
OIDC := $(OIDC_DIR)/node_modules/oidc-provider/package.json
OIDC_VERSION ?= 9
ARGS ?=
LINTED := spawner backend tunnel userlab_manager devsite tests benchmarks docs

export LABLINK_PROXY_COMMAND ?= $(abspath $(CHP))

.PHONY: up test lint docs screenshots bench-spawn bench-hpc bench-tunnel bench-workshop bench-replicas bench-metrics venv proxy oidc test-deps peers-start peers-stop slurm-up slurm-down clean

## up: install what the stack needs and run it on one machine (hub at http://127.0.0.1:8000)
up: venv proxy
	$(VENV)/bin/lablink up

## test: install test dependencies, start the peers, run pytest (ARGS go to pytest), stop the peers
test: venv proxy test-deps
	@$(VENV)/bin/ruff check --quiet $(LINTED) && $(VENV)/bin/ruff format --check --quiet $(LINTED)
	@$(VENV)/bin/mypy
	@bash .ci/peers.sh start
	@set -o pipefail; status=0; \
	  $(VENV)/bin/python -m pytest $(ARGS) || status=$$?; \
	  bash .ci/peers.sh stop; \
	  exit $$status

lint: test-deps
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(PY) docs/generate_reference.py --check
	$(PY) docs/generate_chart_schema.py --check

## docs: regenerate docs/config-reference.md and helm/lablink/values.schema.json from the code
docs: venv
	$(PY) docs/generate_reference.py
	$(PY) docs/generate_chart_schema.py

## screenshots: redo docs/images/*.png (login, hub-home, spawn-form, spawn-pending, jupyterlab, vo, workshop-*, admin-page) with the browser tests
screenshots: venv proxy test-deps
	@bash .ci/peers.sh chromium
	LABLINK_SCREENSHOTS=$(abspath docs/images) $(PY) -m pytest tests/test_browser_flows.py tests/test_browser_workshops.py tests/test_browser_admin.py $(ARGS)

## bench-spawn: time a spawn through Lablink against JupyterHub's stock LocalProcessSpawner
bench-spawn: venv proxy
	$(VENV)/bin/python benchmarks/spawn.py $(ARGS)

## bench-hpc: time spawns of a local lab, a Slurm batch job and a login-node job through the hub
bench-hpc: venv proxy test-deps
	@bash .ci/peers.sh slurm-start
	$(VENV)/bin/python benchmarks/hpc_spawn.py $(ARGS)

## bench-tunnel: throughput and new-connection latency to a lab: direct, through OpenSSH `ssh -L`
bench-tunnel: venv test-deps
	$(VENV)/bin/python benchmarks/tunnel.py $(ARGS)

## bench-workshop: a workshop's first minute: N people log in and press Start at once (ARGS="--participants 100")
bench-workshop: venv proxy test-deps
	$(VENV)/bin/python benchmarks/workshop.py $(ARGS)

## bench-replicas: start throughput with 1, 2, 3 backend replicas behind HAProxy on PostgreSQL, and what following 1000 running labs costs one backend (ARGS="--parts follow --labs 1000")
bench-replicas: venv test-deps
	@bash .ci/peers.sh postgres && bash .ci/peers.sh haproxy
	$(VENV)/bin/python benchmarks/replicas.py $(ARGS)

## bench-metrics: what a Prometheus scrape of the backend costs with 1000 active labs, against the admin's list of active labs (ARGS="--labs 1000 --scrapes 30")
bench-metrics: venv test-deps
	@bash .ci/peers.sh postgres
	$(VENV)/bin/python benchmarks/metrics.py $(ARGS)

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install --quiet --disable-pip-version-check --upgrade pip
	@$(PIP) install --quiet --disable-pip-version-check -e .
	@touch $@

test-deps: $(VENV)/.stamp-test $(OIDC)

$(VENV)/.stamp-test: $(VENV)/.stamp pyproject.toml
	@$(PIP) install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

proxy: $(CHP)

$(CHP):
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
	@mkdir -p $(CHP_DIR)
	@npm install --silent --no-audit --no-fund --prefix $(CHP_DIR) configurable-http-proxy@$(CHP_VERSION) >/dev/null
	@test -x $@

oidc: $(OIDC)

$(OIDC):
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
	@mkdir -p $(OIDC_DIR)
	@npm install --silent --no-audit --no-fund --prefix $(OIDC_DIR) oidc-provider@$(OIDC_VERSION) >/dev/null
	@test -f $@

## slurm-up: start only the one-node Slurm cluster the tests use (SLURM_CONF=/tmp/lablink-slurm/slurm.conf)
slurm-up:
	@bash .ci/peers.sh slurm-start

## slurm-down: stop it (its jobs too); logs stay in /tmp/lablink-slurm/log
slurm-down:
	@bash .ci/peers.sh slurm-stop

clean:
	rm -rf $(VENV) .lablink .pytest_cache .ruff_cache .mypy_cache
