# Benchmarks of fshipper against rsyslog (see bench/README.md).
# Included by the top-level Makefile; `make bench BENCH_ARGS="--runs 5"`.
PYTHON ?= python3
VENV ?= .venv
BENCH_ARGS ?=
RSYSLOGD := $(firstword $(wildcard /usr/sbin/rsyslogd) $(shell command -v rsyslogd))

.PHONY: bench bench-rsyslog
bench: $(STAMP) bench-rsyslog
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

# Debian's package; the benchmark runs its own rsyslogd processes in the
# foreground and never the system service.
bench-rsyslog:
ifeq ($(RSYSLOGD),)
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y --no-install-recommends rsyslog; \
	else \
	  echo "bench: rsyslogd is missing: sudo apt-get install --no-install-recommends rsyslog" >&2; \
	  exit 1; \
	fi
endif
