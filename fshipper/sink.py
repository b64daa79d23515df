"""The consumer's output files: naming, safety, bounded open files, commit and roll back.

Writes are collected per file during a batch and written by `write` (writev,
then fsync if asked). If anything fails, `rollback` cuts every file the batch
touched back to its last committed length, so a retried batch never leaves a
half-written line or a repeated one behind.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import glob
import logging
import os
import re
import resource
import time
from typing import Callable, Dict, List, Optional, Tuple

from .util import fsync_directory

log = logging.getLogger(__name__)

IOV_MAX = 1024
WORKER_THREADS = 16  # files written or flushed at once


def period_start(timestamp: float) -> float:
    """Local midnight at or before `timestamp`: output files rotate daily."""
    t = time.localtime(timestamp)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def pattern_glob(pattern: str) -> str:
    """A glob matching every name `pattern` can format to (for expiry)."""
    return re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else "*", pattern)


class Sink:
    def __init__(self, output: str, directory: Optional[str], max_open: int,
                 fsync: bool, keep_days: int, fence: Optional[Callable[[], None]] = None) -> None:
        self.output = output
        self.fence = fence  # raises when this process may not write now (ownership.py)
        self.directory = directory
        self.max_open = max_open
        self.fsync = fsync
        self.keep_days = keep_days
        self.lengths: Dict[str, int] = {}   # path -> length known to be complete
        self._fds: "collections.OrderedDict[str, int]" = collections.OrderedDict()
        self._pending: Dict[str, List[bytes]] = {}
        self._touched: set = set()             # paths written since the last confirm
        self._created: set = set()
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._names: Dict[Tuple[float, float], str] = {}

    # --- naming ----------------------------------------------------------------------

    def path_for(self, host: str, timestamp: float) -> str:
        name = self._name_for(timestamp)
        if self.directory is None:
            return name
        return f"{self.directory}/{host}/{name}"

    def _name_for(self, timestamp: float) -> str:
        """The output name for the local day holding `timestamp` (days cached)."""
        for (start, end), name in self._names.items():
            if start <= timestamp < end:
                return name
        start = period_start(timestamp)
        end = period_start(start + 36 * 3600)  # the next local midnight, DST or not
        name = time.strftime(self.output, time.localtime(start))
        if len(self._names) >= 4:
            self._names.clear()
        self._names[(start, end)] = name
        return name

    # --- writing ---------------------------------------------------------------------

    def append(self, path: str, *parts) -> None:
        """Queue bytes (or memoryviews) for `path`; written in order by `write`."""
        self._pending.setdefault(path, []).extend(p for p in parts if len(p))

    def unrecorded(self) -> Dict[str, int]:
        """Open the files that what was collected goes to for the first time, and
        return their lengths now: recorded before anything is written to them,
        so a restart can cut what a crash leaves there."""
        fresh = {}
        for path in self._pending:
            if path not in self.lengths:
                self._open(path)
                fresh[path] = self.lengths[path]
        return fresh

    def write(self) -> None:
        """Write what was collected (visible at once; durable after `sync`).

        Files are opened here; the writes, like the fsyncs in `sync`, run on a
        small thread pool, a share of the files per thread: a blocked write or
        fsync is the filesystem's time, not ours, and concurrent fsyncs share a
        journal commit — with thousands of hosts a batch touches hundreds of
        files. (syncfs would be one call, but it also flushes whatever else is
        dirty there, such as a co-located nats-server's store: seconds.)
        """
        items = list(self._pending.items())
        step = max(1, self.max_open // 2)  # all of a group's files stay open together
        write = self._write_some if self.fence is None else self._write_fenced
        for i in range(0, len(items), step):
            if self.fence:
                self.fence()
            jobs = [(path, self._open(path), parts) for path, parts in items[i:i + step]]
            self._touched.update(path for path, _, _ in jobs)
            self._parallel(write, jobs)
        self._pending.clear()

    def sync(self) -> Dict[str, int]:
        """Make what was written since the last `confirm` durable (SHIPPER_FSYNC);
        returns the length of each file written, to record before acknowledging."""
        lengths: Dict[str, int] = {}
        for share in self._parallel(self._sync_some, list(self._touched)):
            lengths.update(share)
        created = self._created & self._touched
        if self.fsync and created:
            # New files' directory entries, and new host directories' entries in
            # the top directory: each directory once, however many files are new.
            directories = {os.path.dirname(path) for path in created}
            if self.directory:
                directories |= {os.path.dirname(d) for d in directories if d != self.directory}
            self._parallel(lambda share: [fsync_directory(d) for d in share], sorted(directories))
        self._created -= self._touched
        return lengths

    def _parallel(self, work, jobs: list):
        """work(share) over shares of `jobs`, on the pool when there are several."""
        if len(jobs) <= 1:
            return [work(jobs)] if jobs else []
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="sink")
        shares = [jobs[k::WORKER_THREADS] for k in range(min(WORKER_THREADS, len(jobs)))]
        return list(self._pool.map(work, shares))  # re-raises the first OSError

    @staticmethod
    def _write_some(jobs: List[Tuple[str, int, List[bytes]]]) -> None:
        for _, fd, parts in jobs:
            for i in range(0, len(parts), IOV_MAX):
                group = parts[i:i + IOV_MAX]
                done = os.writev(fd, group)
                if done != sum(map(len, group)):  # short write: finish the rest
                    rest = b"".join(group)[done:]
                    while rest:
                        rest = rest[os.write(fd, rest):]

    def _write_fenced(self, jobs: List[Tuple[str, int, List[bytes]]]) -> None:
        """The fence checked right before each file's writes, in the thread doing them:
        a process frozen in between and woken after it lost the partition writes
        nothing more than the file it was in the middle of."""
        for job in jobs:
            self.fence()
            self._write_some([job])

    def _sync_some(self, paths: List[str]) -> Dict[str, int]:
        lengths = {}
        for path in paths:
            fd = self._fds.get(path)  # the loop waits meanwhile: nothing changes the cache
            own = fd is None          # evicted since it was written: by name
            if own:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                if self.fsync:
                    os.fsync(fd)
                status = os.fstat(fd)
                if status.st_nlink == 0:
                    # Deleted while open (e.g. the host's directory removed): what
                    # was written went nowhere. Fail; the retry writes a new file.
                    raise FileNotFoundError(errno.ENOENT, "removed while open", path)
                lengths[path] = status.st_size
            finally:
                if own:
                    os.close(fd)
        return lengths

    def confirm(self, lengths: Dict[str, int]) -> None:
        self.lengths.update(lengths)
        self._touched.clear()

    def rollback(self) -> None:
        """Undo everything since the last `confirm`: drop it, cut files back."""
        self._pending.clear()
        for path in self._touched:
            if path in self.lengths:  # else it was never opened: nothing written
                self._cut(path, self.lengths[path])
        self._touched.clear()

    def forget(self) -> None:
        """Close everything and forget every length, touching no file (another
        process may be writing these files now)."""
        while self._fds:
            os.close(self._fds.popitem()[1])
        self.lengths.clear()
        self._pending.clear()
        self._touched.clear()
        self._created.clear()

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
            self._fds.move_to_end(path)
            return fd
        while len(self._fds) >= self.max_open:
            _, old = self._fds.popitem(last=False)
            os.close(old)  # committed data was fsynced (or left to the kernel) already
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, 0o750, exist_ok=True)  # 0750 and 0640 whatever the umask
            fd = os.open(path, flags | os.O_CREAT, 0o640)
            self._created.add(path)  # its directory entry needs a flush too
        self._fds[path] = fd
        if path not in self.lengths:
            self.lengths[path] = os.fstat(fd).st_size
        return fd

    def reserve_descriptors(self, spare: int = 128) -> None:
        """Raise the soft limit on open files to hold `max_open` outputs (and
        `spare` more for sockets and state); if the hard limit is lower, keep
        fewer outputs open rather than fail with EMFILE."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = self.max_open + spare
        if soft != resource.RLIM_INFINITY and soft < need:
            target = need if hard == resource.RLIM_INFINITY else min(need, hard)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
            if soft < need:
                self.max_open = max(16, soft - spare)
                log.warning("open files limited to %d: keeping at most %d output files open "
                            "(raise LimitNOFILE to keep more)", soft, self.max_open)

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
