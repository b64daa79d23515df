"""What the consumer believes of a message before it writes or records anything.

Anyone allowed to publish on a host's subject can put any header on a message,
so a header is only believed once it is well formed (wire.Position.decode) and
consistent with the message that carries it:

- the byte range is as long as the payload says: a part (`Fshipper-Part: more`)
  covers exactly its bytes; a whole message covers its bytes and the newline
  after them, or just its bytes for the last line of a finished file that had
  no newline (see follower.read);
- the chain fields agree with each other: the file before this one comes before
  it, and the chain's first message is not after this one.

Refusals are counted by reason and logged with the subject, at most a few lines
a minute however many come, so a flood cannot fill the disk through the log.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Iterable, Optional, Set

from .wire import Position

log = logging.getLogger(__name__)

MAX_ORIGINS_PER_HOST = 32   # producers of one host the ledger keeps (one per state directory lost)
LOG_BURST = 20              # refusal lines logged at once ...
LOG_PER_MINUTE = 10         # ... and then this many a minute


def inconsistency(pos: Position, more: bool, size: int) -> Optional[str]:
    """Why `pos` cannot describe a message of `size` payload bytes (None if it can)."""
    length = pos.end - pos.start
    if more:
        if length != size:
            return f"a part of {size} byte(s) claims {length} (range {pos.start}-{pos.end})"
    elif length != size + 1 and not (length == size and size > 0):
        return f"a message of {size} byte(s) and its newline claims {length} (range {pos.start}-{pos.end})"
    if (pos.prev_gen is None) != (pos.prev_end is None):
        return "half a previous position"
    if pos.prev_gen is not None and pos.prev_gen >= pos.gen:
        return f"file {pos.gen} claims to follow file {pos.prev_gen}"
    if pos.first is not None and pos.first > (pos.gen, pos.start):
        return f"the chain claims to begin at file {pos.first[0]} byte {pos.first[1]}, after this message"
    return None


class Refusals:
    """Counts refused messages by reason; logs them with their subject, rate-limited."""

    def __init__(self) -> None:
        self.total = 0
        self.by_reason: Dict[str, int] = {}
        self._tokens = float(LOG_BURST)
        self._refilled = time.monotonic()
        self._unlogged = 0

    def note(self, subject: str, reason: str, kind: str, level: int = logging.WARNING) -> None:
        """Count one refusal of kind `kind` (a short fixed name: the counter's key)."""
        self.total += 1
        self.by_reason[kind] = self.by_reason.get(kind, 0) + 1
        now = time.monotonic()
        self._tokens = min(LOG_BURST, self._tokens + (now - self._refilled) * LOG_PER_MINUTE / 60)
        self._refilled = now
        if self._tokens < 1:
            self._unlogged += 1
            return
        self._tokens -= 1
        unlogged = f"; {self._unlogged} more refused since, not logged" if self._unlogged else ""
        self._unlogged = 0
        log.log(level, "refused a message on %r: %s (refused so far: %d%s)",
                subject[:300], reason, self.total, unlogged)

    def summary(self) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(self.by_reason.items())) or "none"


class Bounds:
    """The hosts, and producers (origins) per host, the consumer keeps state for:
    what anyone may publish must not grow the output directory, the ledger or
    memory without bound. A message beyond them is refused."""

    def __init__(self, max_hosts: int, refusals: Refusals) -> None:
        self.max_hosts = max_hosts
        self.refusals = refusals
        self.hosts: Set[str] = set()              # with a directory, a record, or waiting
        self.waiting: Dict[str, Set[str]] = {}    # host -> origins unknown to the ledger, held early
        self._limit_logged = False

    def recount(self, *known: Iterable[str]) -> None:
        """Start again from the hosts that have a directory or a ledger record."""
        self.hosts = set(self.waiting).union(*known)

    def admit(self, subject: str, host: str, origin: Optional[str], recorded: Set[str]) -> bool:
        """May a message of `host` (by producer `origin`, None if it has no position)
        be considered? `recorded`: the host's origins in the ledger."""
        if host not in self.hosts:
            if len(self.hosts) >= self.max_hosts:
                if not self._limit_logged:
                    self._limit_logged = True
                    log.error("SHIPPER_MAX_HOSTS=%d reached: messages of new hosts are refused (the first "
                              "on %r); raise it if they are real hosts", self.max_hosts, subject[:300])
                self.refusals.note(subject, f"a new host beyond SHIPPER_MAX_HOSTS={self.max_hosts}", "host limit")
                return False
            self.hosts.add(host)
        if origin is not None and origin not in recorded:
            waiting = self.waiting.get(host, set())
            if origin not in waiting and len(recorded) + len(waiting) >= MAX_ORIGINS_PER_HOST:
                self.refusals.note(subject, f"a producer (origin {origin}) beyond the "
                                   f"{MAX_ORIGINS_PER_HOST} kept for one host", "origin limit")
                return False
        return True

    def wait(self, host: str, origin: str) -> None:
        """A message of an origin the ledger does not know is held (early)."""
        self.waiting.setdefault(host, set()).add(origin)

    def written(self, host: str, origin: str) -> None:
        waiting = self.waiting.get(host)
        if waiting is not None:
            waiting.discard(origin)
            if not waiting:
                del self.waiting[host]
