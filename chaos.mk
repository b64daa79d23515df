# `make chaos`: the long fault-injection runs (tests/chaos, marker chaos_long),
# then the table of runs (fault, lines, lost, duplicated, reordered, seed, wall time),
# also written as Markdown to $(CHAOS_REPORT).
# CHAOS_SEED=<n> replays a run's kill schedule. The short versions run in `make test`.
# Needs root (a tmpfs is mounted) and Debian's logrotate (tests/chaos/ci-deps.txt).
CHAOS_REPORT ?= chaos-report.md

chaos: $(STAMP)
	CHAOS_REPORT=$(abspath $(CHAOS_REPORT)) $(PY) -m pytest -s -m chaos_long $(PYTEST_ARGS) tests/chaos
