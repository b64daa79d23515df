"""The consumer's record of what it has written: per producer, the last byte range;
per output file, the length that is complete. Saved atomically after each batch's
writes and before its acknowledgements, so a message seen again — a redelivery
after a crash, a producer's re-publish after the duplicate window — is recognised.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional, Tuple

from .util import atomic_write
from .wire import Position

WRITE, DUPLICATE, EARLY = "write", "duplicate", "early"
FORGET_AFTER = 30 * 86400  # a producer silent this long is forgotten


class Ledger:
    def __init__(self, state_dir: str, name: str) -> None:
        self.path = os.path.join(state_dir, f"{name}.ledger")
        self.sources: Dict[str, list] = {}   # "host origin" -> [gen, end, unix time]
        self.files: Dict[str, int] = {}      # output path -> complete length
        self._pending: Dict[str, list] = {}

    def load(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return
        except ValueError as e:
            raise ValueError(f"{self.path}: unreadable ledger ({e}); move it away to start over") from None
        self.sources = {k: list(v) for k, v in data.get("sources", {}).items()}
        self.files = {k: int(v) for k, v in data.get("files", {}).items()}

    def check(self, host: str, pos: Position) -> Tuple[str, int]:
        """WRITE (with how many leading bytes were written already), DUPLICATE or EARLY.

        EARLY: a range that starts after what was written — a message before it
        is still to come (it was re-sent after this one), so this one must wait.
        """
        key = f"{host} {pos.origin}"
        last = self._pending.get(key) or self.sources.get(key)
        if last is None:
            return WRITE, 0
        gen, end = last[0], last[1]
        if pos.gen < gen or (pos.gen == gen and pos.end <= end):
            return DUPLICATE, 0
        if pos.gen == gen:
            return (WRITE, end - pos.start) if pos.start <= end else (EARLY, 0)
        if pos.start == 0 and (pos.prev_gen, pos.prev_end) == (gen, end):
            return WRITE, 0
        return EARLY, 0

    def advance(self, host: str, pos: Position) -> None:
        self._pending[f"{host} {pos.origin}"] = [pos.gen, pos.end, int(time.time())]

    def gap(self, host: str, pos: Position) -> Optional[Tuple[int, int]]:
        """(gen, end) written last for this producer, to describe a gap."""
        last = self._pending.get(f"{host} {pos.origin}") or self.sources.get(f"{host} {pos.origin}")
        return (last[0], last[1]) if last else None

    def commit(self, lengths: Dict[str, int]) -> None:
        if not self._pending and not lengths:
            return
        sources = {**self.sources, **self._pending}
        files = {**self.files, **lengths}
        self._save(sources, files)  # only then does memory move on: a failed save changes nothing
        self.sources, self.files = sources, files
        self._pending.clear()

    def rollback(self) -> None:
        self._pending.clear()

    def save(self) -> None:
        self._save(self.sources, self.files)

    def _save(self, sources: Dict[str, list], files: Dict[str, int]) -> None:
        data = {"version": 1, "sources": sources, "files": files}
        atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode())

    def prune(self, now: float, existing_file) -> None:
        """Forget producers silent for long and files that no longer exist."""
        self.sources = {k: v for k, v in self.sources.items() if now - v[2] < FORGET_AFTER}
        self.files = {p: n for p, n in self.files.items() if existing_file(p)}
