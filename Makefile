# fshipper: `make demo` ships a log through a local NATS server; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv test test-deps unit demo chaos clean

all: test

# Debian's python3 makes venvs only with python3-venv: as root it is
# installed here, otherwise the one apt command is printed.
$(STAMP): setup.py requirements-test.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "venv: installing python3-venv"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends python3-venv >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends python3-venv >/dev/null; }; \
	    $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "venv: $(PYTHON) -m venv failed: sudo apt-get install --no-install-recommends python3-venv" >&2; \
	    exit 1; \
	  fi; }
	$(PY) -m pip install --quiet --disable-pip-version-check -e . -r requirements-test.txt
	touch $@

venv: $(STAMP)

test: $(STAMP) test-deps
	$(PY) -m pytest $(PYTEST_ARGS) tests

# The Debian packages the tests use (the ci-deps.txt lists): as root, the
# missing ones are installed; otherwise the one apt command is printed and
# the tests that need them are skipped with that command as the reason.
CI_DEPS := $(wildcard packaging/ci-deps.txt tests/ci-deps.txt tests/*/ci-deps.txt)
test-deps:
	@missing=$$(sed 's/#.*//' $(CI_DEPS) | tr -s ' \t' '\n\n' | sort -u | while read -r p; do \
	    [ -z "$$p" ] || dpkg-query -W -f '$${db:Status-Status}\n' "$$p" 2>/dev/null | grep -qx installed || echo "$$p"; \
	  done | tr '\n' ' ' | sed 's/ $$//'); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test: installing Debian packages the tests use: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $$missing >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
	else \
	  echo "test: the tests that need them are skipped: sudo apt-get install --no-install-recommends $$missing" >&2; \
	fi

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
