# The two commands: `make run` (a working gateway, offline, on a fresh machine) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Adapter directories/packages that plugins.toml enables.
ADAPTERS = $(shell $(PYTHON) -c 'import tomllib;d=tomllib.load(open("plugins.toml","rb"));print(" ".join(("-e "+s["path"]) if "path" in s else s["package"] for s in d.get("adapters",{}).values() if s.get("enabled",True)))')

.PHONY: install run test test-slow lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml plugins.toml $(wildcard adapters/*/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' $(ADAPTERS)
	touch $@

run: install
	$(PY) -m gateway.testing.demo

test: install
	./scripts/ensure-postgres
	$(PY) -m ruff check gateway adapters tests $(wildcard bench)
	$(PY) -m mypy gateway adapters/*/gateway_*.py
	$(PY) -m pytest -q -m "slow or not slow"

test-slow: install
	./scripts/ensure-postgres
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) gateway.db
