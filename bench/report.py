"""Figures as markdown: min/median/max over runs, ratios pair by pair."""
from __future__ import annotations

import statistics
from typing import Callable, Dict, List, Optional, Sequence

Metrics = Dict[str, float]
# results[scenario][system] = one entry per run, None where the run failed
Results = Dict[str, Dict[str, List[Optional[Metrics]]]]
# The systems fshipper is compared with, each in a ratio row of its own.
PEERS = ("rsyslog", "syslog-ng")


def values(runs: Sequence[Optional[Metrics]], key: str) -> List[float]:
    return [r[key] for r in runs if r is not None and key in r]


def ratios(a: Sequence[Optional[Metrics]], b: Sequence[Optional[Metrics]],
           key: str) -> List[float]:
    """a/b for run i of a against run i of b, where both runs succeeded."""
    return [x[key] / y[key] for x, y in zip(a, b)
            if x is not None and y is not None and key in x and y.get(key)]


def fmt(value: float, unit: str = "") -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if value == int(value):
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(xs: List[float], unit: str = "") -> str:
    """'median (min–max)', or '—' when nothing was measured."""
    if not xs:
        return "—"
    med = fmt(statistics.median(xs), unit)
    if len(xs) == 1:
        return med
    return f"{med} ({fmt(min(xs), unit)}–{fmt(max(xs), unit)})"


def table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metric_rows(results: Results, scenarios: Sequence[str], systems: Sequence[str],
                label: Callable[[str], str], columns: Sequence[str],
                ratio_of: Sequence[str] = ()) -> List[List[str]]:
    """One row per scenario and system, then a row of fshipper/peer ratios
    for the `ratio_of` columns for each peer measured."""
    rows: List[List[str]] = []
    for scen in scenarios:
        if scen not in results:
            continue
        per_system = results[scen]
        for system in systems:
            runs = per_system.get(system, [])
            failed = sum(1 for r in runs if r is None)
            note = f" ({failed} failed)" if failed else ""
            rows.append([label(scen), system + note] +
                        [spread(values(runs, c)) for c in columns])
        for peer in PEERS:
            if "fshipper" in per_system and peer in per_system and ratio_of:
                rows.append([label(scen), f"**fshipper / {peer}**"] + [
                    spread(ratios(per_system["fshipper"], per_system[peer], c), "x")
                    if c in ratio_of else "" for c in columns])
    return rows


def median(results: Results, scen: str, system: str, key: str) -> Optional[float]:
    xs = values(results.get(scen, {}).get(system, []), key)
    return statistics.median(xs) if xs else None


def ratio_median(results: Results, scen: str, key: str,
                 peer: str = "rsyslog") -> Optional[float]:
    per = results.get(scen, {})
    xs = ratios(per.get("fshipper", []), per.get(peer, []), key)
    return statistics.median(xs) if xs else None
