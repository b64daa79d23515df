"""Chaos tests: real processes killed at random moments, numbered lines checked.

Each test runs at two scales: `short` (part of `make test`) and `long`
(marked `chaos_long`, deselected unless the marker expression names it, as
`make chaos` does). The seed comes from CHAOS_SEED or is drawn fresh; it is
printed at the start and named in every assertion. At the end of the session
a table of the runs is printed, and written as Markdown to CHAOS_REPORT if set.
"""

import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS = []
COLUMNS = ("fault", "scale", "lines", "lost", "duplicated", "reordered", "seed", "wall s", "notes")


@pytest.fixture(params=["short", pytest.param("long", marks=pytest.mark.chaos_long)])
def scale(request):
    return request.param


class Run:
    """One chaos run: its seed, its random source, its row in the table."""

    def __init__(self, name: str, scale: str) -> None:
        env = os.environ.get("CHAOS_SEED")
        self.seed = int(env) if env else random.SystemRandom().randrange(1, 2**31)
        self.rng = random.Random(self.seed)
        self.scale = scale
        self.name = name
        self.started = time.monotonic()
        print(f"\nchaos seed for {name}: {self.seed} (replay: CHAOS_SEED={self.seed})", flush=True)

    def pick(self, short, long):
        return short if self.scale == "short" else long

    def record(self, fault: str, result: dict, notes: str = "") -> None:
        row = {"fault": fault, "scale": self.scale, "lines": result["lines"], "lost": result["lost"],
               "duplicated": result["duplicated"], "reordered": result["reordered"], "seed": self.seed,
               "wall s": round(time.monotonic() - self.started, 1), "notes": notes}
        ROWS.append(row)
        print("chaos result:", json.dumps(row), flush=True)

    def note(self, text: str) -> None:
        """Add to the notes of this run's row."""
        row = ROWS[-1]
        row["notes"] = f"{row['notes']}; {text}" if row["notes"] else text

    def why(self, result: dict, logs: str = "") -> str:
        return f"seed {self.seed} (replay: CHAOS_SEED={self.seed}): {result}\n{logs}"


@pytest.fixture
def chaos(request, scale):
    return Run(request.node.name, scale)


def table(rows) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    terminalreporter.section("chaos runs")
    terminalreporter.write_line(table(ROWS))
    report = os.environ.get("CHAOS_REPORT")
    if report:
        Path(report).write_text(table(ROWS) + "\n")
