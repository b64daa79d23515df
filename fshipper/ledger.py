"""The consumer's record of what it has written: per producer, the last byte range;
per output file, the length that is complete. Saved after each batch's writes and
before its acknowledgements, so a message seen again — a redelivery after a crash,
a producer's re-publish after the duplicate window — is recognised.

A file the ledger does not know yet is recorded (with its length then) before
the first write to it, so a restart can cut whatever a crash left there
unrecorded; a producer it has no record of is written from the start of its
chain only (the message says where that is), so a message that overtook the
first ones — theirs held for a dead consumer until ack_wait — waits for them.

Two files in SHIPPER_STATE_DIR: `<name>.ledger`, a snapshot replaced atomically,
and `<name>.journal`, one JSON line per batch (what changed), fsynced. A batch
costs what it changed, not the number of hosts ever seen; the journal is folded
into the snapshot once it grows. Every line holds absolute values, so replaying
the whole journal over a snapshot that already has it changes nothing.

A producer's record is [gen, end, time], with a fourth element 1 while the last
thing written of it is a part of a line (`Fshipper-Part: more`): only the rest
of that line may follow it in the host's file. Both files are bounded: origins
per host are capped by the consumer, output files are forgotten when expiry
removes them, producers silent for FORGET_AFTER are forgotten.

Loading starts a new journal file (a new inode, not the old one emptied): a
previous owner of the ledger that still has the old journal open (a frozen
process, see ownership.py) can only append to a file nobody reads any more.
With a `fence`, nothing is written to the ledger unless it passes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Dict, Iterable, Optional, Set, Tuple

from .util import atomic_write
from .wire import Position

log = logging.getLogger(__name__)

WRITE, DUPLICATE, EARLY = "write", "duplicate", "early"
FORGET_AFTER = 30 * 86400   # a producer silent this long is forgotten
JOURNAL_MAX = 4 << 20       # bytes of journal before it is folded into the snapshot


class LedgerError(Exception):
    pass


class Ledger:
    def __init__(self, state_dir: str, name: str, fence: Optional[Callable[[], None]] = None) -> None:
        self.path = os.path.join(state_dir, f"{name}.ledger")
        self.fence = fence  # raises when this process may not write the ledger now
        self.journal_path = os.path.join(state_dir, f"{name}.journal")
        self.sources: Dict[str, list] = {}   # "host origin" -> [gen, end, unix time(, 1 if mid-line)]
        self.files: Dict[str, int] = {}      # output path -> complete length
        self._pending: Dict[str, list] = {}
        self._journal: Optional[int] = None
        self._journal_size = 0
        self._origins: Dict[str, Set[str]] = {}   # host -> origins recorded or pending

    # --- loading ---------------------------------------------------------------------

    def load(self, existing_file: Callable[[str], bool] = os.path.exists) -> None:
        """Read snapshot and journal; forget stale entries and files that are gone
        (or that `existing_file` refuses: outside the output directory); start a
        fresh journal."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.read()
        now = time.time()
        self.sources = {k: v for k, v in self.sources.items() if now - v[2] < FORGET_AFTER}
        self.files = {p: n for p, n in self.files.items() if existing_file(p)}
        self._index()
        self._fold(new_journal=True)

    def read(self) -> None:
        """Read snapshot and journal, changing nothing on disk (also another
        partition's ledger, to learn where a host's producer was when it moved)."""
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
            self.sources = {k: list(v) for k, v in data.get("sources", {}).items()}
            self.files = {k: int(v) for k, v in data.get("files", {}).items()}
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError, TypeError) as e:
            raise LedgerError(f"{self.path}: unreadable ledger ({e}); move it away to start over "
                              "(unacknowledged lines may then be written twice; see the README)") from None
        self._replay()

    def _replay(self) -> None:
        try:
            with open(self.journal_path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                entry = json.loads(line)
                self.sources.update(entry["s"])
                self.files.update(entry["f"])
                for path in entry.get("x", ()):   # forgotten (expired) files
                    self.files.pop(path, None)
            except (ValueError, KeyError, TypeError):
                if number == len(lines):
                    break  # torn by a crash mid-write: that batch was never acknowledged
                raise LedgerError(f"{self.journal_path}:{number}: unreadable; move the ledger and "
                                  "its journal away to start over (unacknowledged lines may then be "
                                  "written twice; see the README)") from None

    # --- deciding --------------------------------------------------------------------

    def check(self, host: str, pos: Position) -> Tuple[str, int]:
        """WRITE (with how many leading bytes were written already), DUPLICATE or EARLY.

        EARLY: a range that starts after what was written — a message before it
        is still to come (it was re-sent after this one), so this one must wait.
        """
        last = self.last(host, pos.origin)
        if last is None:
            return (WRITE, 0) if pos.begins_chain() else (EARLY, 0)
        gen, end = last[0], last[1]
        if pos.gen < gen or (pos.gen == gen and pos.end <= end):
            return DUPLICATE, 0
        if pos.gen == gen:
            return (WRITE, end - pos.start) if pos.start <= end else (EARLY, 0)
        if pos.start == 0 and (pos.prev_gen, pos.prev_end) == (gen, end):
            return WRITE, 0
        return EARLY, 0

    def last(self, host: str, origin: str) -> Optional[list]:
        """[gen, end, time] of what was last written of `origin`, None if unknown."""
        key = f"{host} {origin}"
        return self._pending.get(key) or self.sources.get(key)

    def adopt(self, host: str, origin: str, last: list) -> None:
        """Take over what another ledger recorded of a producer (recorded at the next commit)."""
        self._pending[f"{host} {origin}"] = list(last)
        self._origins.setdefault(host, set()).add(origin)

    def advance(self, host: str, pos: Position, more: bool = False) -> None:
        record = [pos.gen, pos.end, int(time.time())]
        self._pending[f"{host} {pos.origin}"] = record + [1] if more else record
        self._origins.setdefault(host, set()).add(pos.origin)

    def origins(self, host: str) -> Set[str]:
        """The producers of `host` recorded (or recorded by the open batch)."""
        return self._origins.get(host, set())

    def hosts(self) -> Iterable[str]:
        return self._origins.keys()

    def open_line(self, host: str) -> Optional[Tuple[str, list]]:
        """(origin, record) of the producer of `host` whose line was left open by
        a part, if any: only the rest of that line may be written next."""
        for origin in self._origins.get(host, ()):
            record = self.last(host, origin)
            if record is not None and len(record) > 3 and record[3]:
                return origin, record
        return None

    def close_line(self, host: str, origin: str) -> None:
        """The open line of `origin` was ended (with a newline) by the consumer."""
        record = self.last(host, origin)
        self._pending[f"{host} {origin}"] = list(record[:3])

    def _index(self) -> None:
        self._origins = {}
        for key in self.sources:
            host, _, origin = key.rpartition(" ")
            self._origins.setdefault(host, set()).add(origin)

    # --- recording -------------------------------------------------------------------

    def commit(self, lengths: Dict[str, int]) -> None:
        """Record the batch durably; on failure nothing changes (and it raises)."""
        if not self._pending and not lengths:
            return
        self._append({"s": self._pending, "f": lengths})
        self.sources.update(self._pending)
        self.files.update(lengths)
        self._pending.clear()
        self._fold_if_large()

    def note_files(self, lengths: Dict[str, int]) -> None:
        """Record new output files' lengths before anything is written to them,
        so what a crash leaves there unrecorded is cut at the next start."""
        self._append({"s": {}, "f": lengths})
        self.files.update(lengths)
        self._fold_if_large()

    def _append(self, entry: dict) -> None:
        """One journal line, synced; on failure the journal is as before (and it raises)."""
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        if self.fence:
            self.fence()
        self._open_journal()
        try:
            written = os.write(self._journal, line)
            if written != len(line):
                raise OSError(f"short write to {self.journal_path}")
            os.fdatasync(self._journal)
        except OSError:
            try:
                os.ftruncate(self._journal, self._journal_size)  # no torn line before the next one
            except OSError:
                pass
            raise
        self._journal_size += len(line)

    def _fold_if_large(self) -> None:
        if self._journal_size > JOURNAL_MAX:
            try:
                self._fold()
            except OSError as e:  # the journal still holds everything: retried next time
                log.warning("%s: cannot fold the journal into the snapshot yet: %s", self.path, e)

    def rollback(self) -> None:
        if self._pending:
            self._pending.clear()
            self._index()

    def forget_files(self, paths: Iterable[str]) -> None:
        """Output files removed (expired): their lengths are no longer needed."""
        gone = [p for p in paths if p in self.files]
        if not gone:
            return
        self._append({"s": {}, "f": {}, "x": gone})
        for path in gone:
            del self.files[path]
        self._fold_if_large()

    def _snapshot(self) -> bytes:
        data = {"version": 1, "sources": self.sources, "files": self.files}
        return json.dumps(data, separators=(",", ":")).encode()

    def carry_over(self, sources: Dict[str, list], files: Dict[str, int]) -> None:
        """Start this ledger with what another one held (a migration): its snapshot,
        written atomically, and no journal."""
        self.sources, self.files = sources, files
        atomic_write(self.path, self._snapshot())

    def _fold(self, new_journal: bool = False) -> None:
        """Write the snapshot, then empty the journal (a crash between is harmless)."""
        if self.fence:
            self.fence()
        atomic_write(self.path, self._snapshot())
        if new_journal:
            self.close()
            atomic_write(self.journal_path, b"")
        self._open_journal()
        os.ftruncate(self._journal, 0)
        os.fsync(self._journal)
        self._journal_size = 0

    def _open_journal(self) -> None:
        if self._journal is None:
            self._journal = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.fchmod(self._journal, 0o600)   # state is 0600, also a journal made by an older version
            self._journal_size = os.fstat(self._journal).st_size

    def close(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
