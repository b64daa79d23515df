"""fshipper against rsyslog and syslog-ng, measured the same way in one run.

    python -m bench.run [--runs N] [--systems fshipper,rsyslog,syslog-ng]
                        [--scenarios burst,latency,memory,fanin]

Runs are interleaved (run i of every system, then run i+1, alternating which
system goes first) so that the machine's noise hits all; fshipper/rsyslog
and fshipper/syslog-ng ratios pair run i with run i.  Prints a markdown
report and writes it to bench/results/<date>.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from . import scenarios
from .machine import describe
from .procs import BenchError
from .report import Results
from .results import render
from .sut import SystemUnderTest
from .sut_fshipper import Fshipper
from .sut_rsyslog import Rsyslog
from .sut_syslogng import SyslogNg

SYSTEMS = {"fshipper": Fshipper, "rsyslog": Rsyslog, "syslog-ng": SyslogNg}
GROUPS = ("burst", "latency", "memory", "fanin")
Measure = Callable[[SystemUnderTest], Dict[str, float]]


def plan(args: argparse.Namespace, cache: Path) -> Dict[str, List[tuple]]:
    """group -> [(scenario key, measurement, runs)] in the order they run."""
    t = args.timeout
    out: Dict[str, List[tuple]] = {
        "burst": [
            (f"burst-{size}", (lambda s, n=n, size=size:
                               scenarios.burst(s, cache, n, size, t)), args.runs)
            for n, size in ((args.burst_lines, 100), (args.burst_lines // 5, 1000))],
        "latency": [
            (f"latency-{rate}", (lambda s, rate=rate:
                                 scenarios.latency(s, rate, args.latency_seconds)), args.runs)
            for rate in args.latency_rates],
        "memory": [
            (f"backlog-{mb}", (lambda s, mb=mb:
                               scenarios.backlog(s, cache, mb * 10_000, 100, t)),
             args.backlog_runs)
            for mb in args.backlog_mb],
        "fanin": [
            (f"fanin-{hosts}", (lambda s, hosts=hosts:
                                scenarios.fanin(s, hosts, args.fanin_lines // hosts, 100,
                                                args.fanin_batch, t)), args.runs)
            for hosts in (args.fanin_hosts, 1)],
    }
    return {g: out[g] for g in args.scenarios}


def measure_once(system: str, key: str, run: int, measure: Measure, base: Path,
                 keep: bool, later: List[Path]) -> Dict[str, float]:
    # A directory per run: the same name again would remove the earlier run's
    # tree just before this run creates its own (see SystemUnderTest.cleanup).
    sut = SYSTEMS[system](base / f"{system}-{key}-{run}")
    ok = False
    try:
        metrics = measure(sut)
        ok = True
        return metrics
    finally:
        sut.stop()
        if ok and not keep:
            sut.cleanup(later)


def run_all(args: argparse.Namespace, base: Path) -> Results:
    results: Results = {}
    groups = plan(args, base / "cache")
    rounds = max(runs for steps in groups.values() for _, _, runs in steps)
    later: List[Path] = []   # run directories to remove at the end (see SystemUnderTest.cleanup)
    try:
        for i in range(rounds):
            order = args.systems if i % 2 == 0 else list(reversed(args.systems))
            for steps in groups.values():
                for key, measure, runs in steps:
                    if i >= runs:
                        continue
                    for system in order:
                        started = time.monotonic()
                        try:
                            metrics = measure_once(system, key, i + 1, measure, base, args.keep, later)
                        except BenchError as e:
                            metrics = None
                            print(f"[{i + 1}/{runs}] {key} {system}: FAILED: {e}",
                                  file=sys.stderr, flush=True)
                        else:
                            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                            print(f"[{i + 1}/{runs}] {key} {system} "
                                  f"({time.monotonic() - started:.0f}s): {shown}",
                                  file=sys.stderr, flush=True)
                        results.setdefault(key, {}).setdefault(system, []).append(metrics)
    finally:
        for path in later:
            shutil.rmtree(path, ignore_errors=True)
    return results


def parse_args(argv: List[str]) -> argparse.Namespace:
    def listed(kind):
        return lambda text: [kind(x) for x in text.split(",") if x]
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    ap.add_argument("--systems", type=listed(str), default=list(SYSTEMS))
    ap.add_argument("--scenarios", type=listed(str), default=list(GROUPS),
                    help="any of " + ",".join(GROUPS))
    ap.add_argument("--burst-lines", type=int, default=1_000_000,
                    help="100-byte lines of the burst; a fifth as many 1000-byte lines")
    ap.add_argument("--latency-rates", type=listed(int), default=[1000, 10_000, 50_000])
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--backlog-mb", type=listed(int), default=[100, 1000])
    ap.add_argument("--backlog-runs", type=int, default=1)
    ap.add_argument("--fanin-hosts", type=int, default=1000)
    ap.add_argument("--fanin-lines", type=int, default=1_000_000, help="in all hosts")
    ap.add_argument("--fanin-batch", type=int, default=100,
                    help="lines per message (per turn of a host)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="deadline of one drain, in seconds")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "fshipper-bench")
    ap.add_argument("--fshipper-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for every fshipper daemon instead of its default "
                         "(repeatable), e.g. SHIPPER_BATCH_BYTES=64K")
    ap.add_argument("--keep", action="store_true", help="keep every run's work directory")
    args = ap.parse_args(argv)
    for name in args.systems:
        if name not in SYSTEMS:
            ap.error(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    for setting in args.fshipper_setting:
        key, eq, value = setting.partition("=")
        if not eq or not key.startswith(("SHIPPER_", "NATS_")):
            ap.error(f"--fshipper-setting {setting!r}: expected KEY=VALUE with a SHIPPER_ or NATS_ key")
        Fshipper.overrides[key] = value
    for name in args.scenarios:
        if name not in GROUPS:
            ap.error(f"unknown scenario {name!r}; known: {', '.join(GROUPS)}")
    return args


def main(argv: List[str] = sys.argv[1:]) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    results = run_all(args, args.workdir)
    machine = describe()
    machine["load average (1/5/15 min)"] = "before {}, after {}".format(
        *(" ".join(f"{x:.1f}" for x in load) for load in (load_before, os.getloadavg())))
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in argv)
    text = render(results, args, machine, command, started)
    print(text)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{started:%Y-%m-%dT%H%M%SZ}.md"
    path.write_text(text)
    # Every run's figures, for a later look or a report rendered again.
    path.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine,
                                                     "results": results}, indent=1) + "\n")
    print(f"written to {path} (figures: {path.with_suffix('.json').name})", file=sys.stderr)
    failed = sum(1 for per in results.values() for runs in per.values()
                 for r in runs if r is None)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
