# gpunode — every target bootstraps what it needs, idempotently, on a fresh machine.
#   make demo       the protocol's whole job cycle on an embedded local chain
#   make test       forge tests + the Python suite
#   make devnet     a local chain with the contracts deployed and funded accounts (Ctrl-C stops it)
#   make contracts  build the contracts and export their ABIs into node/chain/abi/
#   make chaos      the long chaos run: a real node under kill -9, RPC outage, reorgs, fee spikes, dropped txs
#   make fuzz       the long fuzz run: >= 10,000 bad offers (API and chain events) and malformed HTTP
#   make load       1,000 open offers on chain and 200 direct offers/s against a real node
#   make bench      every benchmark side by side, written to docs/benchmarks.md

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
NPM_DIR := contracts
FORGE := $(NPM_DIR)/node_modules/.bin/forge
TORCH_PIN := torch==2.13.0

.PHONY: all bootstrap demo test test-contracts test-python devnet contracts lint gas-snapshot clean \
	chaos fuzz load bench

all: bootstrap

bootstrap: $(VENV)/.installed $(NPM_DIR)/node_modules/.installed $(NPM_DIR)/out/.built

# torch first and pinned: the CPU wheel on disk satisfies the range in pyproject, so pip resolves no
# multi-GB CUDA build when it installs the project.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e '.[test]'
	touch $@

$(NPM_DIR)/node_modules/.installed: $(NPM_DIR)/package.json $(NPM_DIR)/package-lock.json
	cd $(NPM_DIR) && npm ci --no-audit --no-fund
	touch $@

$(NPM_DIR)/out/.built: $(NPM_DIR)/node_modules/.installed $(NPM_DIR)/foundry.toml $(wildcard $(NPM_DIR)/src/*.sol) \
		$(wildcard $(NPM_DIR)/src/lib/*.sol)
	cd $(NPM_DIR) && node_modules/.bin/forge build
	touch $@

contracts: $(VENV)/.installed $(NPM_DIR)/out/.built
	$(PY) scripts/export_abi.py

demo: bootstrap
	$(PY) -m scripts.demo

devnet: bootstrap
	$(PY) -m scripts.devnet

test: test-contracts test-python

test-contracts: $(NPM_DIR)/out/.built
	cd $(NPM_DIR) && node_modules/.bin/forge test

# Two workers, a test file each at a time: the chain tests spend most of their time waiting for blocks and
# subprocesses, so two files in parallel finish in about two thirds of the time on a 2-core machine. Each test
# has a time limit (pyproject); the whole run has one too, so nothing can stall CI without saying where.
test-python: bootstrap
	timeout -k 60 3000 $(PY) -m pytest -q -n 2 --dist loadfile

# The long forms of the short runs inside `make test` (same files, selected by an environment variable).
chaos: bootstrap
	GPUNODE_CHAOS=long $(PY) -m pytest -q -s -p no:cacheprovider -o timeout=7200 tests/chaos

fuzz: bootstrap
	GPUNODE_FUZZ=long $(PY) -m pytest -q -s -p no:cacheprovider -o timeout=7200 tests/fuzz

load: bootstrap
	$(PY) -m bench.load

bench: bootstrap
	$(PY) -m bench.report --write docs/benchmarks.md

gas-snapshot: $(NPM_DIR)/out/.built
	cd $(NPM_DIR) && node_modules/.bin/forge snapshot

lint: bootstrap
	$(VENV)/bin/ruff check node scripts tests
	cd $(NPM_DIR) && node_modules/.bin/forge fmt --check

clean:
	rm -rf $(NPM_DIR)/out $(NPM_DIR)/cache
