"""The consumer's output files: naming, safety, bounded open files, commit and roll back.

Writes are collected per file during a batch and written by `write` (writev,
then fsync if asked). If anything fails, `rollback` cuts every file the batch
touched back to its last committed length, so a retried batch never leaves a
half-written line or a repeated one behind.
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import logging
import os
import re
import time
from typing import Dict, List, Optional

log = logging.getLogger(__name__)

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*)"
_SAFE_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
IOV_MAX = 1024
FSYNC_THREADS = 16  # files flushed at once: the filesystem commits them together


def _fsync_directories(path: str, top: Optional[str]) -> None:
    """Flush the directory entries of a new file (and of a new host directory)."""
    parent = os.path.dirname(path)
    for directory in (parent, os.path.dirname(parent)) if top and parent != top else (parent,):
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def safe_host(host: str) -> bool:
    """A plain DNS-like label sequence: nothing that could leave the directory."""
    return len(host) <= 253 and _SAFE_HOST.fullmatch(host) is not None


def _same_file(path: str, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def period_start(timestamp: float) -> float:
    """Local midnight at or before `timestamp`: output files rotate daily."""
    t = time.localtime(timestamp)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def pattern_glob(pattern: str) -> str:
    """A glob matching every name `pattern` can format to (for expiry)."""
    return re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else "*", pattern)


class Sink:
    def __init__(self, output: str, directory: Optional[str], max_open: int,
                 fsync: bool, keep_days: int) -> None:
        self.output = output
        self.directory = directory
        self.max_open = max_open
        self.fsync = fsync
        self.keep_days = keep_days
        self.lengths: Dict[str, int] = {}   # path -> length known to be complete
        self._fds: "collections.OrderedDict[str, int]" = collections.OrderedDict()
        self._pending: Dict[str, List[bytes]] = {}
        self._touched: set = set()
        self._created: set = set()
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._names: Dict[float, str] = {}

    # --- naming ----------------------------------------------------------------------

    def path_for(self, host: str, timestamp: float) -> str:
        start = period_start(timestamp)
        name = self._names.get(start)
        if name is None:
            name = time.strftime(self.output, time.localtime(start))
            if len(self._names) > 8:
                self._names.clear()
            self._names[start] = name
        if self.directory is None:
            return name
        return os.path.join(self.directory, host, name)

    # --- writing ---------------------------------------------------------------------

    def append(self, path: str, *parts) -> None:
        """Queue bytes (or memoryviews) for `path`; written in order by `write`."""
        self._pending.setdefault(path, []).extend(p for p in parts if len(p))

    def write(self) -> Dict[str, int]:
        """Write what the batch collected; returns the new length of each file written.

        The lengths count as complete only after `confirm` (once they are recorded).
        """
        written = {}
        for path, parts in self._pending.items():
            self._touched.add(path)
            fd = self._open(path)
            for i in range(0, len(parts), IOV_MAX):
                group = parts[i:i + IOV_MAX]
                done = os.writev(fd, group)
                if done != sum(map(len, group)):  # short write: finish the rest
                    rest = b"".join(group)[done:]
                    while rest:
                        rest = rest[os.write(fd, rest):]
            written[path] = os.fstat(fd).st_size
        if self.fsync and written:
            self._flush(list(written))
        self._created.difference_update(written)
        self._pending.clear()
        return written

    def _flush(self, paths: List[str]) -> None:
        """fsync the batch's files (and the directories of new ones). With many
        files, as thousands of hosts give, several at once: a blocked fsync is
        the filesystem's time, not ours, and concurrent ones share a journal
        commit. (syncfs would be one call, but it also flushes whatever else is
        dirty there — a co-located nats-server's store — and can take seconds.)"""
        if len(paths) == 1:
            self._flush_one(paths[0])
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="fsync")
        for _ in self._pool.map(self._flush_one, paths):
            pass  # re-raises the first OSError

    def _flush_one(self, path: str) -> None:
        fd = self._fds.get(path)  # the loop waits meanwhile: nothing changes the cache
        if fd is not None:
            os.fsync(fd)
        else:  # evicted by a later file of the same batch
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if path in self._created:
            _fsync_directories(path, self.directory)

    def confirm(self, lengths: Dict[str, int]) -> None:
        self.lengths.update(lengths)
        self._touched.clear()

    def rollback(self) -> None:
        """Undo a failed batch: drop what it collected, cut files back."""
        self._pending.clear()
        for path in self._touched:
            if path in self.lengths:  # else it was never opened: nothing written
                self._cut(path, self.lengths[path])
        self._touched.clear()

    def restore(self, lengths: Dict[str, int]) -> None:
        """At start: files longer than recorded hold unacknowledged data; cut it."""
        for path, length in lengths.items():
            self._cut(path, length)
            self.lengths[path] = length

    def _cut(self, path: str, length: int) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)
        try:
            size = os.stat(path).st_size
            if size > length:
                log.info("%s: cutting %d unacknowledged byte(s) (length %d, recorded %d)",
                         path, size - length, size, length)
                os.truncate(path, length)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("%s: cannot cut back to %d bytes: %s", path, length, e)

    def _open(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            if _same_file(path, fd):
                self._fds.move_to_end(path)
                return fd
            # Removed or replaced under us (e.g. the host's directory deleted):
            # writing on would go to a file nobody can see. Start a new one.
            log.warning("%s: removed or replaced while open; writing a new file", path)
            del self._fds[path]
            os.close(fd)
            self.lengths[path] = 0
        while len(self._fds) >= self.max_open:
            _, old = self._fds.popitem(last=False)
            os.close(old)  # committed data was fsynced (or left to the kernel) already
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if not os.path.exists(path):
            self._created.add(path)  # its directory entry needs a flush too
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._fds[path] = fd
        if path not in self.lengths:
            self.lengths[path] = os.fstat(fd).st_size
        return fd

    def open_count(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    # --- expiry ----------------------------------------------------------------------

    def expire(self, now: float) -> List[str]:
        """Delete output files whose period ended more than SHIPPER_KEEP_DAYS ago."""
        if self.keep_days <= 0:
            return []
        limit = period_start(now) - self.keep_days * 86400
        if self.directory is None:
            candidates = glob.glob(pattern_glob(self.output))
        else:
            candidates = glob.glob(os.path.join(glob.escape(self.directory), "*", pattern_glob(self.output)))
        removed = []
        for path in candidates:
            try:
                if os.path.getmtime(path) >= limit:
                    continue
                self._cut_from_cache(path)
                os.unlink(path)
                removed.append(path)
            except OSError as e:
                log.warning("%s: cannot remove old output: %s", path, e)
        for path in removed:
            log.info("removed %s (older than %d days)", path, self.keep_days)
        return removed

    def _cut_from_cache(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)
        self.lengths.pop(path, None)
