# `make soak`: the short kill-everything chaos test (test_kill_everything_under_logrotate[short],
# about 40 s a run) run $(SOAK_RUNS) times while two busy loops load the CPU; a row per run as it
# finishes (run, seed, lines, lost, duplicated, reordered, wall time, whether the first consumer
# kill fell before its first commit), then the totals; the table is also written as Markdown to
# $(SOAK_REPORT). Exits non-zero if any run lost, duplicated or reordered a line or failed; such a
# run's seed and log tail are printed. SOAK_SEEDS="<n> ..." gives the seeds of the first runs
# (a replay under load). Each run's log, and a failed run's files, are kept in .soak/.
# Needs Debian's logrotate (tests/chaos/ci-deps.txt).
SOAK_RUNS ?= 30
SOAK_REPORT ?= soak-report.md
SOAK_SEEDS ?=

.PHONY: soak
soak: $(STAMP)
	$(PY) tests/chaos/soak.py --runs $(SOAK_RUNS) --report $(SOAK_REPORT) $(if $(strip $(SOAK_SEEDS)),--seeds $(SOAK_SEEDS))
