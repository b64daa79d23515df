# Benchmarks of fshipper against rsyslog and syslog-ng (see bench/README.md).
# Included by the top-level Makefile; `make bench BENCH_ARGS="--runs 5"`.
PYTHON ?= python3
VENV ?= .venv
BENCH_ARGS ?=
RSYSLOGD := $(firstword $(wildcard /usr/sbin/rsyslogd) $(shell command -v rsyslogd))
SYSLOG_NG := $(firstword $(wildcard /usr/sbin/syslog-ng) $(shell command -v syslog-ng))
# Debian's rsyslog and syslog-ng-core conflict (each is the system log
# daemon): without a syslog-ng of its own, the machine gets syslog-ng-core's
# files unpacked here and its libraries installed, but not the package.
SYSLOG_NG_DIR := $(VENV)/syslog-ng
SYSLOG_NG_LIBS := libcap2 libglib2.0-0 libivykis0 libjson-c5 libnet1 libpcre3 libssl3 libwrap0

.PHONY: bench bench-rsyslog bench-syslog-ng
bench: $(STAMP) bench-rsyslog bench-syslog-ng
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

# The benchmark runs its own rsyslogd and syslog-ng processes in the
# foreground and never the system services.
bench-rsyslog:
ifeq ($(RSYSLOGD),)
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y --no-install-recommends rsyslog; \
	else \
	  echo "bench: rsyslogd is missing: sudo apt-get install --no-install-recommends rsyslog" >&2; \
	  exit 1; \
	fi
endif

ifeq ($(SYSLOG_NG),)
bench-syslog-ng: $(SYSLOG_NG_DIR)/usr/sbin/syslog-ng
else
bench-syslog-ng:
endif

$(SYSLOG_NG_DIR)/usr/sbin/syslog-ng:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "bench: syslog-ng is missing: sudo make bench-syslog-ng" >&2; \
	  exit 1; \
	fi
	apt-get install -y --no-install-recommends $(SYSLOG_NG_LIBS)
	rm -rf $(SYSLOG_NG_DIR) && mkdir -p $(SYSLOG_NG_DIR)/deb
	cd $(SYSLOG_NG_DIR)/deb && chmod a+rwx . && apt-get download syslog-ng-core
	dpkg-deb -x $(SYSLOG_NG_DIR)/deb/syslog-ng-core_*.deb $(SYSLOG_NG_DIR)
	rm -rf $(SYSLOG_NG_DIR)/deb
