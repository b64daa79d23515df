"""`make soak`: the short kill-everything chaos test, run after run under CPU load.

Two busy loops (child processes spinning) load the CPU from before the first
run until the end, Ctrl-C and failures included. Each run is a pytest process
of its own with the seed given to it (CHAOS_SEED) and its row written to a file
of its own (CHAOS_REPORT). A row is printed as each run finishes, the totals at
the end; the table and the totals are also written as Markdown to --report
(when stopped early too).
A run that lost, duplicated or reordered a line, or failed, has its seed and
log tail printed, and makes the exit status 1. Logs and a failed run's files
(daemon logs, output, stream) stay in --work.

    .venv/bin/python tests/chaos/soak.py --runs 30 --report soak-report.md [--seeds N ...]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from test_kills import EARLY_FIRST_KILL  # noqa: E402  the note the test leaves in its row

ROOT = HERE.parent.parent
TEST = "tests/chaos/test_kills.py::test_kill_everything_under_logrotate[short]"
COLUMNS = ("run", "seed", "lines", "lost", "duplicated", "reordered", "wall s", EARLY_FIRST_KILL, "result")
HEADER = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
COUNTS = ("lost", "duplicated", "reordered")
BUSY_LOOPS = 2
# Spins until its parent is gone, so that no busy loop outlives the soak even if it is killed.
SPIN = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    for _ in range(1_000_000): pass\n"
RUN_TIMEOUT = 600  # seconds; a short run takes about a minute under load
STOP_WAIT = 60     # seconds pytest gets to stop the daemons after SIGINT
TAIL_LINES = 60


def spin() -> List[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())], start_new_session=True)
            for _ in range(BUSY_LOOPS)]


def stop(proc: subprocess.Popen) -> None:
    """SIGINT lets pytest stop the test and its fixtures the daemons; if it does
    not end in time, its process group (pytest, daemons, nats-server) is killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def read_row(report: Path) -> Optional[Dict[str, str]]:
    """The test's row from its one-run CHAOS_REPORT table, if it got that far."""
    try:
        lines = report.read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 3:
        return None
    return dict(zip(_cells(lines[0]), _cells(lines[2])))


def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def run_once(number: int, seed: int, work: Path) -> Dict[str, object]:
    """One pytest process; its row as the soak shows it, and its log."""
    name = f"run-{number:02d}"
    log, report, basetemp = work / f"{name}.log", work / f"{name}.md", work / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")}
    env.update(CHAOS_SEED=str(seed), CHAOS_REPORT=str(report))
    started = time.monotonic()
    with open(log, "wb") as out:
        # A session of its own: Ctrl-C reaches the soak, which stops pytest once and waits.
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider",
                                 f"--basetemp={basetemp}", TEST],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop(proc)
    test = read_row(report) or {}
    row = {"run": number, "seed": seed, "wall s": round(time.monotonic() - started, 1), "log": log}
    row.update({c: test.get(c, "") for c in ("lines",) + COUNTS})
    row[EARLY_FIRST_KILL] = ("yes" if EARLY_FIRST_KILL in test["notes"] else "no") if test else ""
    if code is None:
        row["result"] = f"timed out after {RUN_TIMEOUT}s"
    elif test and any(test[c] != "0" for c in COUNTS):
        row["result"] = "unclean"
    else:
        row["result"] = "clean" if code == 0 and test else f"failed (pytest exit {code})"
    if row["result"] == "clean":
        shutil.rmtree(basetemp, ignore_errors=True)
    return row


def markdown(row: Dict[str, object]) -> str:
    return "| " + " | ".join(str(row[c]) for c in COLUMNS) + " |"


def totals(rows: List[Dict[str, object]], runs: int) -> str:
    clean = sum(r["result"] == "clean" for r in rows)
    counts = ", ".join(f"{sum(int(r[c] or 0) for r in rows)} {c}" for c in COUNTS)
    early = sum(r[EARLY_FIRST_KILL] == "yes" for r in rows)
    wall = sum(r["wall s"] for r in rows)
    ran = "" if len(rows) == runs else f" (stopped after {len(rows)} of {runs} runs)"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{clean} of {len(rows)} clean, {counts}{ran}.\n"
            f"{early} of {len(rows)} runs with the {EARLY_FIRST_KILL}; {wall // 60:.0f} min {wall % 60:.0f} s in all; "
            f"{BUSY_LOOPS} busy loops; load average (1/5/15 min) at the end {load}.")


def report_failure(row: Dict[str, object]) -> None:
    tail = Path(row["log"]).read_text(errors="replace").splitlines()[-TAIL_LINES:]
    print(f"\nrun {row['run']} {row['result']}: seed {row['seed']} (replay: CHAOS_SEED={row['seed']}, "
          f"or SOAK_SEEDS={row['seed']} under load); log {row['log']}, its last {len(tail)} lines:", flush=True)
    print("\n".join("    " + line for line in tail) + "\n", flush=True)


def soak(runs: int, seeds: List[int], report: Path, work: Path) -> bool:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows: List[Dict[str, object]] = []
    loops = spin()
    try:
        print(f"soak: {runs} runs of {TEST}, {BUSY_LOOPS} busy loops (pids "
              f"{', '.join(str(p.pid) for p in loops)}), logs in {work}\n\n{HEADER}", flush=True)
        for number in range(1, runs + 1):
            seed = seeds[number - 1] if number <= len(seeds) else random.SystemRandom().randrange(1, 2**31)
            row = run_once(number, seed, work)
            rows.append(row)
            print(markdown(row), flush=True)
            if row["result"] != "clean":
                report_failure(row)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
        summary = totals(rows, runs)
        print(f"\n{summary}", flush=True)
        report.write_text("\n".join([HEADER] + [markdown(r) for r in rows]) + f"\n\n{summary}\n")
    return len(rows) == runs and all(r["result"] == "clean" for r in rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="seeds of the first runs, in order")
    parser.add_argument("--report", type=Path, default=Path("soak-report.md"))
    parser.add_argument("--work", type=Path, default=Path(".soak"), help="each run's log; a failed run's files")
    args = parser.parse_args(argv)
    # SIGTERM stops the soak as Ctrl-C does. SIGINT is set even if it came
    # ignored (a background job), so that pytest can be stopped with it too.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        return 0 if soak(args.runs, args.seeds, args.report.resolve(), args.work.resolve()) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
