# The two commands: `make run` (a working gateway, offline, on a fresh machine) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Adapter directories/packages that plugins.toml enables.
ADAPTERS = $(shell $(PYTHON) scripts/plugin-specs)
# The adapters' modules or packages, for mypy.
ADAPTER_CODE = $(filter-out %.egg-info,$(wildcard adapters/*/gateway_*))

.PHONY: install run test test-slow lint bench clean dist

install: $(VENV)/.installed

# Also Debian's chromium and its chromedriver, for the dashboard's browser tests.
$(VENV)/.installed: pyproject.toml plugins.toml $(wildcard adapters/*/pyproject.toml)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' $(ADAPTERS)
	touch $@

run: install
	$(PY) -m gateway.testing.demo

test: install
	./scripts/ensure-postgres
	$(PY) -m ruff check gateway adapters tests $(wildcard bench)
	$(PY) -m mypy gateway $(ADAPTER_CODE)
	$(PY) -m pytest -q -m "slow or not slow"

test-slow: install
	./scripts/ensure-postgres
	$(PY) -m pytest -q -m slow

# `make bench BENCH_ARGS="--quick"`; see `python -m bench.run --help`.
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run $(BENCH_ARGS)

# Wheels of the core and of every adapter, into dist/ (each built in its own isolated env;
# build/ goes first: setuptools would package files left there by an earlier build).
dist: install
	rm -rf dist build adapters/*/build
	$(PY) -m build --wheel --outdir dist .
	for adapter in adapters/*/; do $(PY) -m build --wheel --outdir dist $$adapter || exit 1; done

clean:
	rm -rf $(VENV) gateway.db dist
