"""The report: machine, command, date, the five figures, and the targets."""
from __future__ import annotations

import argparse
import datetime
import statistics
from typing import Dict, List, Optional, Sequence

from .report import (Results, median, metric_rows, ratio_median, ratios, table,
                     values)
from .sut import ROLES
from .sut_fshipper import Fshipper
from .sut_rsyslog import Rsyslog
from .sut_syslogng import SyslogNg

NAMES = {"fshipper": Fshipper.role_names, "rsyslog": Rsyslog.role_names,
         "syslog-ng": SyslogNg.role_names}
ROLE_HEADS = ["producer / forwarder", "consumer / receiver", "nats-server"]


def _keys(results: Results, prefix: str) -> List[str]:
    return sorted((k for k in results if k.startswith(prefix)),
                  key=lambda k: int(k.rsplit("-", 1)[1]))


def _verdict(value: Optional[float], ok: bool, text: str) -> List[str]:
    if value is None:
        return [text, "not measured"]
    return [text, "met" if ok else "**missed**"]


PEERS = ("rsyslog", "syslog-ng")


def _ratio_rows(results: Results, scen: str, key: str, floors: Dict[str, float], what: str) -> List[List[str]]:
    """fshipper/peer (run by run, median) at least `floors[peer]`."""
    rows = []
    for peer, floor in floors.items():
        r = ratio_median(results, scen, key, peer)
        rows.append(_verdict(r, r is not None and r >= floor,
                             f"{what}: fshipper/{peer} ≥ {floor:.1f}x — "
                             + (f"median ratio {r:.2f}x" if r is not None else "not measured")))
    return rows


def _latency_rows(results: Results, rate: int, cap: Optional[float], peers: Sequence[str]) -> List[List[str]]:
    """p99 at `rate` lines/s at most `cap` ms, and at most each peer's p99 in the same run."""
    scen, rows = f"latency-{rate}", []
    p99 = median(results, scen, "fshipper", "p99_ms")
    if cap is not None:
        rows.append(_verdict(p99, p99 is not None and p99 <= cap,
                             f"p99 latency at {rate:,} lines/s ≤ {cap:g} ms — median "
                             + (f"{p99:.1f} ms" if p99 is not None else "not measured")))
    for peer in peers:
        r = ratio_median(results, scen, "p99_ms", peer)
        theirs = median(results, scen, peer, "p99_ms")
        rows.append(_verdict(r, r is not None and r <= 1.0,
                             f"p99 latency at {rate:,} lines/s ≤ {peer}'s — median ratio "
                             + (f"{r:.2f}x ({theirs:.1f} ms)" if r is not None and theirs is not None
                                else "not measured")))
    return rows


def targets(results: Results) -> str:
    """The targets of the performance work, each met or missed by this run."""
    rows = []
    for rate in (1000, 10_000):
        rows += _latency_rows(results, rate, 5.0, PEERS)
    rows += _latency_rows(results, 50_000, None, ("rsyslog",))
    rows += _ratio_rows(results, "burst-1000", "mb_per_s", {"rsyslog": 2.0, "syslog-ng": 2.0},
                        "burst of 1,000-byte lines, MB/s")
    rows += _ratio_rows(results, "burst-100", "lines_per_s", {"rsyslog": 3.0, "syslog-ng": 2.0},
                        "burst of 100-byte lines, lines/s")
    fan = [k for k in _keys(results, "fanin-") if k != "fanin-1"]
    if fan and "fanin-1" in results:
        many, one = results[fan[0]].get("fshipper", []), results["fanin-1"].get("fshipper", [])
        share = ratios(many, one, "lines_per_s")
        med = statistics.median(share) if share else None
        rows.append(_verdict(med, med is not None and med >= 0.8,
                             f"fan-in of {fan[0][6:]} hosts ≥ 80 % of one host's lines/s — "
                             + (f"{med:.0%}" if med is not None else "not measured")))
        r = ratio_median(results, fan[0], "lines_per_s", "rsyslog")
        rows.append(_verdict(r, r is not None and r >= 1.5,
                             f"fan-in of {fan[0][6:]} hosts: fshipper/rsyslog ≥ 1.5x — "
                             + (f"median ratio {r:.2f}x" if r is not None else "not measured")))
    for role, cap in (("producer", 40), ("consumer", 60)):
        peaks = [v for k in _keys(results, "backlog-")
                 for v in values(results[k].get("fshipper", []), f"rss_{role}")]
        worst = max(peaks) if peaks else None
        rows.append(_verdict(worst, worst is not None and worst <= cap,
                             f"{role} peak RSS ≤ {cap} MB whatever the backlog — "
                             + (f"worst {worst:.1f} MB" if worst is not None else "not measured")))
    return table(["target (fshipper)", "verdict"], rows)


def render(results: Results, args: argparse.Namespace, machine: Dict[str, str],
           command: str, started: datetime.datetime) -> str:
    systems = args.systems
    peers = " and ".join(s for s in systems if s != "fshipper") or "nothing"
    out = [f"# fshipper vs {peers} — {started:%Y-%m-%d %H:%M} UTC", "",
           table(["machine", ""], [[k, v] for k, v in machine.items()]), "",
           f"Command: `{command}` ({args.runs} runs of each scenario, "
           f"{args.backlog_runs} of each backlog); cells are median (min–max) over runs, "
           "ratios are taken run by run.", "", "## Targets", "", targets(results)]

    burst = _keys(results, "burst-")
    lat = _keys(results, "latency-")
    mem = _keys(results, "backlog-")
    fan = _keys(results, "fanin-")
    roles = [f"cpu_{r}" for r in ROLES]
    sections = [
        (burst, "1. Burst drain",
         "Lines appended at once to a followed file, until the last byte is in "
         "the per-host output (verified byte for byte).",
         ["line size", "system", "lines/s", "MB/s", "seconds"],
         metric_rows(results, burst, systems, lambda k: f"{k[6:]} B",
                     ["lines_per_s", "mb_per_s", "seconds"],
                     ratio_of=["lines_per_s", "mb_per_s"])),
        (lat, "2. Latency",
         "From the write() of a line to its appearance in the output file, in ms.",
         ["lines/s", "system", "p50", "p99", "max"],
         metric_rows(results, lat, systems, lambda k: k[8:],
                     ["p50_ms", "p99_ms", "max_ms"], ratio_of=["p99_ms"])),
        (mem, "3. Memory",
         "Peak RSS (VmHWM, MB) while draining a backlog that is in the file "
         "before the daemons start; drain rate includes start-up.",
         ["backlog", "system"] + ROLE_HEADS + ["lines/s"],
         metric_rows(results, mem, systems, lambda k: f"{k[8:]} MB",
                     [f"rss_{r}" for r in ROLES] + ["lines_per_s"],
                     ratio_of=["rss_producer", "rss_consumer"])),
        (burst, "4. CPU",
         "CPU seconds (user + system) per million lines, during the burst drains.",
         ["line size", "system"] + ROLE_HEADS,
         metric_rows(results, burst, systems, lambda k: f"{k[6:]} B", roles,
                     ratio_of=roles[:2])),
        (fan, "5. Fan-in",
         f"{args.fanin_lines:,} lines of 100 B from simulated publishers, hosts "
         f"taking turns with {args.fanin_batch} lines each, into one "
         "consumer; open fds = most seen in the consumer. Publish lines/s: how "
         "fast the publisher got its lines confirmed by JetStream (fshipper) or "
         "taken by the socket (rsyslog, syslog-ng); close to lines/s, the publisher, not "
         "the consumer, set the pace.",
         ["hosts", "system", "lines/s", "publish lines/s", "consumer open fds",
          "consumer CPU s / M lines"],
         metric_rows(results, fan, systems, lambda k: k[6:],
                     ["lines_per_s", "publish_lines_per_s", "fds_consumer", "cpu_consumer"],
                     ratio_of=["lines_per_s"])),
    ]
    for keys, title, intro, header, rows in sections:
        if keys:
            out += ["", f"## {title}", "", intro, "", table(header, rows)]

    out += ["", "Roles: " + "; ".join(
        f"{s}: " + ", ".join(f"{r} = {NAMES[s].get(r, 'none')}" for r in ROLES)
        for s in systems), ""]
    failed = [f"- {k} {s}: run {i + 1}" for k, per in results.items()
              for s, runs in per.items() for i, r in enumerate(runs) if r is None]
    if failed:
        out += ["## Failed runs (no figures; see the log on stderr)", ""] + failed + [""]
    return "\n".join(out)
