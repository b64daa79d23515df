"""The consumer's output files: naming, safety, bounded open files, commit and roll back.

Writes are collected per file during a batch and written by `write` (writev,
then fsync if asked). If anything fails, `rollback` cuts every file the batch
touched back to its last committed length, so a retried batch never leaves a
half-written line or a repeated one behind.

Nothing outside the output directory (SHIPPER_DIRECTORY, or the fixed part of
SHIPPER_OUTPUT's directory) is ever created, written, cut or deleted: files and
host directories are opened relative to it (openat) without following symbolic
links, a path is accepted from the ledger only if it is one this sink could
have made, and expiry deletes regular files found without following links.
Modes: files 0640, directories 0750 (the umask may take more away).
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import fnmatch
import logging
import os
import re
import resource
import stat
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from .util import fsync_directory
from .wire import safe_host

log = logging.getLogger(__name__)

IOV_MAX = 1024
WORKER_THREADS = 16  # files flushed at once (a commit's fsyncs)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under the output directory must not hang the open.
FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafePathError(OSError):
    """A path that is not ours to write: a symbolic link, not a regular file or
    directory, or outside the output directory."""


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
        self.top = directory if directory is not None else _fixed_directory(output)
        self.hosts: Set[str] = set()           # host directories under SHIPPER_DIRECTORY

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
        try:
            for path in self._pending:
                if path not in self.lengths:
                    self._open(path)
                    fresh[path] = self.lengths[path]
        except OSError:
            self.unrecord(fresh)
            raise
        return fresh

    def unrecord(self, paths) -> None:
        """Their lengths could not be recorded: forget them, so the retry
        records them again before it writes (else a crash leaves lines uncut)."""
        for path in paths:
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)
            self.lengths.pop(path, None)

    def write(self) -> None:
        """Write what was collected (visible at once; durable after `sync`).

        Files are opened here and written on the loop's thread: a write only
        copies into the page cache (microseconds), and on the thread pool the
        hand-offs cost more than the writes — with 1,000 hosts the loop spent
        40 % of its time waiting for the pool's threads to take turns at the
        GIL. The fsyncs in `sync` do block on the disk, so they stay on the pool.
        """
        for path, parts in self._pending.items():
            if self.fence:
                # Right before each file's writes: a process frozen in between and
                # woken after it lost the partition writes nothing more than the
                # file it was in the middle of.
                self.fence()
            fd = self._open(path)
            self._touched.add(path)
            self._write_parts(fd, parts)
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
    def _write_parts(fd: int, parts: List[bytes]) -> None:
        for i in range(0, len(parts), IOV_MAX):
            group = parts[i:i + IOV_MAX]
            done = os.writev(fd, group)
            if done != sum(map(len, group)):  # short write: finish the rest
                rest = b"".join(group)[done:]
                while rest:
                    rest = rest[os.write(fd, rest):]

    def _sync_some(self, paths: List[str]) -> Dict[str, int]:
        lengths = {}
        for path in paths:
            fd = self._fds.get(path)  # the loop waits meanwhile: nothing changes the cache
            own = fd is None          # evicted since it was written: by name
            if own:
                fd = self.open_beneath(path, create=False)
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
        """At start: files longer than recorded hold unacknowledged data; cut it.
        A path this sink cannot have made (settings changed, or a ledger written
        by someone else) is never opened."""
        self.load_hosts()
        for path, length in lengths.items():
            if not self.owns(path):
                log.warning("%s: recorded in the ledger but not under the output directory; left alone", path)
                continue
            self._cut(path, length)
            self.lengths[path] = length

    def _cut(self, path: str, length: int) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)
        try:
            fd = self.open_beneath(path, create=False)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("%s: cannot cut back to %d bytes: %s", path, length, e)
            return
        try:
            size = os.fstat(fd).st_size
            if size > length:
                log.info("%s: cutting %d unacknowledged byte(s) (length %d, recorded %d)",
                         path, size - length, size, length)
                os.ftruncate(fd, length)
        except OSError as e:
            log.warning("%s: cannot cut back to %d bytes: %s", path, length, e)
        finally:
            os.close(fd)

    # --- where files may be ----------------------------------------------------------

    def owns(self, path: str) -> bool:
        """Could this sink have made `path`? (Checked for every path the ledger names.)"""
        rel = self._relative(path)
        if rel is None:
            return False
        if self.directory is not None:
            host, _, name = rel.partition("/")
            return safe_host(host) and fnmatch.fnmatchcase(name, pattern_glob(self.output))
        return fnmatch.fnmatchcase(path, pattern_glob(self.output))

    def _relative(self, path: str) -> Optional[str]:
        """`path` below the output directory, with no empty, '.' or '..' part; else None."""
        prefix = "" if self.top in ("", ".") else self.top.rstrip("/") + "/"
        if not path.startswith(prefix) or "\0" in path:
            return None
        rel = path[len(prefix):]
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts):
            return None
        return rel

    def open_beneath(self, path: str, create: bool) -> int:
        """Open `path` for appending, each part relative to the output directory and
        none followed if it is a symbolic link; with `create`, make what is missing
        (directories 0750, the file 0640). Raises UnsafePathError for anything that
        is not ours: a link, a FIFO, a path this sink cannot have made."""
        rel = self._relative(path)
        if rel is None or not self.owns(path):
            raise UnsafePathError(errno.EPERM, "not a path under the output directory", path)
        parts = rel.split("/")
        try:   # the output directory itself is the operator's choice: a link there is followed
            dir_fd = os.open(self.top or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
            os.makedirs(self.top, 0o750, exist_ok=True)
            dir_fd = os.open(self.top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, part in enumerate(parts[:-1]):
                next_fd = self._open_directory(dir_fd, part, create, path)
                if depth == 0 and self.directory is not None:
                    self.hosts.add(part)
                os.close(dir_fd)
                dir_fd = next_fd
            try:
                fd = os.open(parts[-1], FILE_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                if not create:
                    raise
                fd = os.open(parts[-1], FILE_FLAGS | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=dir_fd)
                self._created.add(path)  # its directory entry needs a flush too
        except OSError as e:
            if e.errno == errno.ENXIO:   # a FIFO or a device: not an output file
                raise UnsafePathError(e.errno, "not a regular file", path) from None
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST) and not isinstance(e, UnsafePathError):
                raise UnsafePathError(e.errno, "a symbolic link or not a directory on the way", path) from None
            raise
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePathError(errno.EPERM, "not a regular file", path)
        return fd

    @staticmethod
    def _open_directory(dir_fd: int, name: str, create: bool, path: str) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                raise
        try:
            os.mkdir(name, 0o750, dir_fd=dir_fd)
        except FileExistsError:
            pass  # made meanwhile: opened (and checked) below
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)

    def unsafe(self, path: str) -> Optional[str]:
        """Why `path` must not be written (None if it may). Only looked at: it is
        opened for writing by `unrecorded` or `write`, which record its length."""
        if path in self._fds:
            return None
        try:
            os.close(self.open_beneath(path, create=False))
        except FileNotFoundError:
            return None   # made at the write, without following links either
        except UnsafePathError as e:
            return f"{path}: {e.strerror}"
        except OSError:
            return None   # a fault (permission, disk): the write reports it and retries
        return None

    def load_hosts(self) -> None:
        """The host directories already there (each counts against SHIPPER_MAX_HOSTS)."""
        if self.directory is None:
            return
        try:
            with os.scandir(self.directory) as entries:
                # Only host names: not <SHIPPER_DIRECTORY>/.fshipper (ledgers, ownership.py)
                self.hosts = {e.name for e in entries if e.is_dir(follow_symlinks=False) and safe_host(e.name)}
        except FileNotFoundError:
            self.hosts = set()

    def _open(self, path: str, create: bool = True) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        while len(self._fds) >= self.max_open:
            _, old = self._fds.popitem(last=False)
            os.close(old)  # committed data was fsynced (or left to the kernel) already
        fd = self.open_beneath(path, create)
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
        """Delete output files whose period ended more than SHIPPER_KEEP_DAYS ago,
        and host directories left empty. Directories are walked level by level as
        the pattern names them, opened without following links; only regular
        files are deleted. Returns the paths removed."""
        if self.keep_days <= 0:
            return []
        limit = period_start(now) - self.keep_days * 86400
        removed: List[str] = []
        pattern = pattern_glob(self.output)
        if self.directory is None:
            fixed = len(self.top) + 1 if self.top not in ("", "/") else len(self.top)
            pattern = pattern[fixed:]
        else:
            pattern = "*/" + pattern   # the host directories
        try:
            top = os.open(self.top or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            log.warning("%s: cannot look for old output: %s", self.top, e)
            return removed
        try:
            self._expire_in(self.top, top, pattern.split("/"), limit, removed)
        finally:
            os.close(top)
        for path in removed:
            log.info("removed %s (older than %d days)", path, self.keep_days)
        return removed

    def _expire_in(self, directory: str, dir_fd: int, levels: List[str], limit: float,
                   removed: List[str]) -> None:
        """Below one directory, what matches the first level of the pattern: old
        regular files at the last level, directories (not links) to walk before."""
        prefix = "" if directory in ("", ".") else directory.rstrip("/") + "/"
        for name in sorted(os.listdir(dir_fd)):
            path = prefix + name
            if not fnmatch.fnmatchcase(name, levels[0]):
                continue
            try:
                if len(levels) > 1:
                    self._expire_below(path, dir_fd, name, levels[1:], limit, removed)
                    continue
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_mtime >= limit or not self.owns(path):
                    continue
                self._cut_from_cache(path)
                os.unlink(name, dir_fd=dir_fd)
                removed.append(path)
            except OSError as e:
                log.warning("%s: cannot remove old output: %s", path, e)

    def _expire_below(self, path: str, parent_fd: int, name: str, levels: List[str], limit: float,
                      removed: List[str]) -> None:
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except OSError:
            return   # a link or a file: nothing of ours below it
        try:
            self._expire_in(path, fd, levels, limit, removed)
            empty = not os.listdir(fd)
        finally:
            os.close(fd)
        if empty and self.directory is not None and os.path.dirname(path) == self.directory.rstrip("/"):
            os.rmdir(name, dir_fd=parent_fd)   # a host directory left empty no longer counts
            self.hosts.discard(name)

    def _cut_from_cache(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)
        self.lengths.pop(path, None)


def _fixed_directory(output: str) -> str:
    """Without SHIPPER_DIRECTORY, the output directory is the part of
    SHIPPER_OUTPUT's directory before any strftime field: nothing above it is
    touched."""
    directory = os.path.dirname(output)
    if not directory:
        return ""
    fixed = []
    for part in directory.split("/"):
        if "%" in part:
            break
        fixed.append(part)
    return "/".join(fixed) if fixed != [""] else "/"
