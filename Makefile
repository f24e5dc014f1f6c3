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
	@if command -v apt-get >/dev/null 2>&1; then \
	  need=""; \
	  for p in pacman-package-manager makepkg archlinux-keyring gnupg zstd libarchive-tools fakeroot nginx; do \
	    dpkg -s $$p >/dev/null 2>&1 || need="$$need $$p"; \
	  done; \
	  if [ -n "$$need" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need; \
	  fi; \
	elif command -v pacman >/dev/null 2>&1 && [ -f /etc/arch-release ]; then \
	  pacman -S --needed --noconfirm python gnupg zstd libarchive fakeroot nginx; \
	else \
	  echo "make deps: need apt-get (Debian) or pacman (Arch); install pacman, makepkg, gpg, zstd, nginx by hand" >&2; exit 1; \
	fi

unit: venv
	$(PY) -m pytest tests/unit

bench: deps venv
	$(PY) bench/bench_proxy.py

clean:
	rm -rf $(VENV) build *.egg-info
