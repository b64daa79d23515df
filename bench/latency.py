"""Pieces of the latency measurement: the timestamped lines, the reader of
the output, and percentiles."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import BinaryIO, List, Optional

from .data import ALPHABET, output_files


def writer_line(seq: int, size: int) -> bytes:
    """A numbered line carrying its wall-clock write time (ns), as a log
    line would; the measurement itself uses the writer's monotonic clock."""
    head = b"%09d %019d " % (seq, time.time_ns())
    return head + (ALPHABET * 20)[:size - 1 - len(head)] + b"\n"


class Tail:
    """Reads a host's output as it grows, file after file, and yields the
    numbers of the complete lines that appeared since the last call."""

    def __init__(self, host_dir: Path, skip: int = 0) -> None:
        self.host_dir = host_dir
        self.skip = skip          # bytes already accounted for (warm-up)
        self.files: List[Path] = []
        self.current: Optional[BinaryIO] = None
        self.rest = b""

    def _next_file(self) -> bool:
        names = output_files(self.host_dir)
        if len(names) <= len(self.files):
            return False
        if self.current:
            self.current.close()
        path = names[len(self.files)]
        self.files.append(path)
        self.current = open(path, "rb")
        if self.skip:
            self.current.seek(self.skip)
            self.skip = 0
        return True

    def read_seqs(self) -> List[int]:
        if self.current is None and not self._next_file():
            return []
        data = self.current.read()
        if not data and self._next_file():
            data = self.current.read()
        if not data:
            return []
        parts = (self.rest + data).split(b"\n")
        self.rest = parts.pop()
        return [int(p[:9]) for p in parts]

    def close(self) -> None:
        if self.current:
            self.current.close()


def percentile(ordered: List[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
