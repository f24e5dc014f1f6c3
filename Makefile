# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test deps venv lint unit integration bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## Start a node with the embedded defaults (127.0.0.1:7878).
run: venv
	$(VENV)/bin/pacswarm serve $(ARGS)

## Install what the tests need (Debian or Arch), then run every test.
test: deps venv
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
	rm -rf $(VENV) build *.egg-info
