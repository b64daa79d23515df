# fshipper: `make demo` ships a log through a local NATS server; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv test unit demo chaos clean

all: test

$(STAMP): setup.py requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e . -r requirements-test.txt
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) tests

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

demo: $(STAMP)
	$(PY) tests/demo.py

clean:
	rm -rf $(VENV) build dist *.egg-info .demo .soak

-include packaging.mk
-include bench.mk
-include chaos.mk
-include soak.mk
