# `make chaos`: the long fault-injection runs (tests/chaos, marker chaos_long) and the
# long profile of the consumer's model-based test (tests/model: 3,000 examples),
# repeated takeovers with 30 s freezes of the owner (tests/integration/test_failover.py),
# resharding 1 -> 4 partitions at 2,000 lines/s (tests/integration/test_reshard.py),
# then the table of runs (fault, lines, lost, duplicated, reordered, seed, wall time),
# also written as Markdown to $(CHAOS_REPORT).
# CHAOS_SEED=<n> replays a run's kill schedule. The short versions run in `make test`.
# Needs root (a tmpfs is mounted) and Debian's logrotate (tests/chaos/ci-deps.txt).
CHAOS_REPORT ?= chaos-report.md

chaos: $(STAMP)
	CHAOS_REPORT=$(abspath $(CHAOS_REPORT)) $(PY) -m pytest -s -m chaos_long $(PYTEST_ARGS) tests/chaos tests/model \
		tests/integration/test_failover.py tests/integration/test_reshard.py
