"""Follows one log file through rotations; owns its descriptors and inotify watches.

The follower hands out chunks of whole lines with their byte range. It never
re-opens by path while the old file may still grow: on a rename (IN_MOVE_SELF)
or delete it keeps reading the old descriptor until the file is done — the
successor has data, or the old file has been quiet for `rotate_wait` — and only
then takes up the successor. Rotated files are recognised by identity (device,
inode and a hash of the first bytes, since inodes are reused), so a restart
after several rotations finishes each file it had not finished, oldest first.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

from . import wire
from .util import Wake

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 256
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip")
POLL_SECONDS = 1.0
SEEN_MAX = 256  # files remembered as followed (far more than any rotation keeps)


@dataclass
class FileRef:
    """One followed file: its place in the sequence (`gen`) and its identity."""

    gen: int
    dev: int
    ino: int
    fp_len: int
    fp_hash: str
    prev_gen: Optional[int] = None  # the position sent before this file, if any
    prev_end: Optional[int] = None
    name: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FileRef":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Chunk:
    ref: FileRef
    start: int
    end: int
    payload: memoryview  # the lines without their final newline
    more: bool
    lines: int = 0       # lines it ends (a part of a long line ends none; its last part ends it)

    def position(self, origin: str, first: Optional[Tuple[int, int]] = None) -> wire.Position:
        ref = self.ref
        return wire.Position(origin, ref.gen, self.start, self.end, ref.prev_gen, ref.prev_end, first)


def _fingerprint(fd: int, length: int) -> str:
    return hashlib.sha1(os.pread(fd, length, 0)).hexdigest()


def _matches(fd: int, st: os.stat_result, ref: FileRef) -> bool:
    if (st.st_dev, st.st_ino) != (ref.dev, ref.ino) or st.st_size < ref.fp_len:
        return False
    return _fingerprint(fd, ref.fp_len) == ref.fp_hash


def _suffix_rank(base: str, name: str) -> float:
    """Orders files of equal mtime: the live file newest, app.log.2 older than .1."""
    if name == base:
        return float("inf")
    match = re.fullmatch(re.escape(base) + r"\.(\d+)", name)
    return -int(match.group(1)) if match else 0.0


class Follower:
    def __init__(self, path: str, rotate_wait: float, resume: Optional[Tuple[FileRef, int]] = None) -> None:
        self.path = path
        self.directory, self.base = os.path.split(path)
        self.rotate_wait = rotate_wait
        self._resume = resume
        self.fd: Optional[int] = None
        self.ref: Optional[FileRef] = None
        self.offset = 0
        # (gen, end) of the last chunk handed out: the `prev` of the next file.
        self.last: Tuple[Optional[int], Optional[int]] = (None, None)
        self.next_gen = 0
        self._seen: Dict[Tuple[int, int], Tuple[int, str]] = {}  # files already followed
        self._rotated_at: Optional[float] = None
        self._quiet_since = time.monotonic()
        self._finishing = False
        self._waiting_logged = False
        self.problem: Optional[str] = None  # why the file cannot be read now (for status)
        self._tail = b""  # the last bytes read: to recognise a copytruncate copy
        self._truncated: Optional[int] = None  # while reading a copy: the truncated file
        self._changed = False   # inotify reported a change since the last take_change()
        self.listener: Optional[Callable[[], None]] = None   # called at each change
        self._notifier = None
        self._wm = None
        self._file_wd: Optional[int] = None

    # --- life cycle ------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        import pyinotify  # imported late: on 3.12+ it needs pyasyncore

        logging.getLogger("pyinotify").setLevel(logging.CRITICAL)
        follower = self

        class Handler(pyinotify.ProcessEvent):
            def process_default(self, event) -> None:
                if event.wd == follower._file_wd or (event.name or "").startswith(follower.base):
                    if event.mask & pyinotify.IN_MOVE_SELF and event.wd == follower._file_wd:
                        log.info("%s: moved away (IN_MOVE_SELF); reading it to its end", follower._label())
                    follower._notice()

        self._pyinotify = pyinotify
        self._wm = pyinotify.WatchManager()
        self._notifier = pyinotify.AsyncioNotifier(self._wm, loop, default_proc_fun=Handler())
        self._watch_directory()
        self._begin()

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        for fd in (self.fd, self._truncated):
            if fd is not None:
                os.close(fd)
        self.fd = self._truncated = None

    def _notice(self) -> None:
        self._changed = True
        if self.listener is not None:
            self.listener()

    def changed(self) -> bool:
        """Has inotify reported a change since the last take_change()?"""
        return self._changed

    def take_change(self) -> None:
        self._changed = False

    async def wait(self, timeout: float = POLL_SECONDS) -> None:
        """Until inotify reports a change (or `timeout`, as a safety net)."""
        if not self._changed:
            wake = Wake()
            self.listener = wake.set
            try:
                await wake.wait(timeout)
            finally:
                self.listener = None
        self._changed = False

    def _label(self) -> str:
        return f"{self.path} (file {self.ref.gen}, inode {self.ref.ino})" if self.ref else self.path

    def _watch_directory(self) -> None:
        pyinotify = self._pyinotify
        # Names only: writes come through the file's own watch, and in a busy
        # directory (/var/log) IN_MODIFY would wake us for every other log too.
        mask = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM | pyinotify.IN_DELETE
        result = self._wm.add_watch(self.directory, mask, quiet=True)
        self._dir_wd = result.get(self.directory, -1)
        if self._dir_wd < 0:
            log.warning("%s: cannot watch the directory yet; checking every %.0fs", self.directory, POLL_SECONDS)

    def _watch_file(self, path: str) -> None:
        pyinotify = self._pyinotify
        if self._file_wd is not None and self._file_wd >= 0:
            self._wm.rm_watch(self._file_wd, quiet=True)
        mask = pyinotify.IN_MODIFY | pyinotify.IN_MOVE_SELF | pyinotify.IN_DELETE_SELF | pyinotify.IN_ATTRIB
        # By path, so it can name another inode if the file was replaced this
        # instant; the directory watch and the periodic check cover that case.
        self._file_wd = self._wm.add_watch(path, mask, quiet=True).get(path, -1)

    # --- where to begin --------------------------------------------------------

    def _begin(self) -> None:
        if self._resume is None:
            # A first start ships the live file from its beginning; files
            # rotated before fshipper ever ran are history.
            for _, st, fd in self._candidates():
                self._mark_seen(st, fd)
                os.close(fd)
            self._open_path()
            return
        ref, offset = self._resume
        self.next_gen = ref.gen + 1
        self.last = (ref.gen, offset) if offset > 0 else (ref.prev_gen, ref.prev_end)
        candidates = self._candidates()
        for index, (name, st, fd) in enumerate(candidates):
            if _matches(fd, st, ref):
                for _, older, older_fd in candidates[:index]:
                    self._mark_seen(older, older_fd)
                self._adopt(fd, os.path.join(self.directory, name), ref, offset)
                for _, _, other in candidates:
                    if other != fd:
                        os.close(other)
                if name != self.base:
                    log.info("%s was rotated to %s while stopped: finishing it from byte %d first",
                             self.path, name, offset)
                return
        for name, st, fd in candidates:
            if name != self.base:
                self._mark_seen(st, fd)
            os.close(fd)
        if ref.fp_len and self._resume_from_copy(ref, offset):
            return
        log.warning("%s: the file last read (inode %d, byte %d) is gone (compressed or deleted?); "
                    "starting the current file from its beginning", self.path, ref.ino, offset)
        self._open_path()

    def _resume_from_copy(self, ref: FileRef, offset: int) -> bool:
        """Truncated while stopped (copytruncate): finish its copy, then the file."""
        self.ref, self.offset = ref, offset
        copy = self._copy()
        if copy is None:
            self.ref, self.offset = None, 0
            return False
        name, fd = copy
        self._adopt(fd, os.path.join(self.directory, name), ref, offset)
        self._finishing = True
        try:
            live = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            live = None
        if live is not None:
            st = os.fstat(live)
            if (st.st_dev, st.st_ino) == (ref.dev, ref.ino):
                self._truncated = live  # taken up from its start once the copy is done
            else:
                os.close(live)
        log.info("%s was truncated while stopped (copytruncate?): finishing its copy %s from byte %d first",
                 self.path, name, offset)
        return True

    def _mark_seen(self, st: os.stat_result, fd: int) -> None:
        fp_len = min(st.st_size, FINGERPRINT_BYTES)
        self._remember((st.st_dev, st.st_ino), fp_len, _fingerprint(fd, fp_len))

    def _remember(self, key: Tuple[int, int], fp_len: int, fp_hash: str) -> None:
        self._seen.pop(key, None)
        self._seen[key] = (fp_len, fp_hash)
        while len(self._seen) > SEEN_MAX:
            del self._seen[next(iter(self._seen))]  # the oldest

    def _candidates(self) -> List[Tuple[str, os.stat_result, int]]:
        """The live file and its rotated siblings, oldest first, each opened."""
        try:
            names = os.listdir(self.directory or ".")
        except OSError:
            return []
        found = []
        for name in names:
            if not (name == self.base or (name.startswith(self.base) and name[len(self.base):][:1] in ".-_")):
                continue
            if name.lower().endswith(COMPRESSED):
                continue
            try:
                fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            if not os.path.stat.S_ISREG(st.st_mode):
                os.close(fd)
                continue
            found.append((name, st, fd))
        found.sort(key=lambda c: (c[1].st_mtime_ns, _suffix_rank(self.base, c[0])))
        return found

    def _adopt(self, fd: int, path: str, ref: FileRef, offset: int) -> None:
        self.fd, self.ref, self.offset = fd, ref, offset
        self._remember((ref.dev, ref.ino), ref.fp_len, ref.fp_hash)
        self._rotated_at = None
        self._finishing = False
        self._tail = b""
        self._quiet_since = time.monotonic()
        self._watch_file(path)
        st = os.fstat(fd)
        if st.st_size < offset:
            self._restart_truncated(st.st_size)

    def _take(self, fd: int, name: str) -> None:
        st = os.fstat(fd)
        fp_len = min(st.st_size, FINGERPRINT_BYTES)
        ref = FileRef(self.next_gen, st.st_dev, st.st_ino, fp_len, _fingerprint(fd, fp_len),
                      self.last[0], self.last[1], name)
        self.next_gen += 1
        log.info("%s: following file %d (inode %d, %d bytes)", os.path.join(self.directory, name),
                 ref.gen, ref.ino, st.st_size)
        self._adopt(fd, os.path.join(self.directory, name), ref, 0)

    def _open_path(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EACCES):
                raise
            reason = "does not exist yet" if e.errno == errno.ENOENT else "is not readable"
            self.problem = f"{self.path} {reason}"
            if not self._waiting_logged:
                log.warning("%s %s; waiting for it", self.path, reason)
                self._waiting_logged = True
            if self._dir_wd < 0:
                self._watch_directory()
            return False
        self._waiting_logged = False
        self.problem = None
        self._take(fd, self.base)
        return True

    # --- reading -----------------------------------------------------------------

    def read(self, max_bytes: int) -> Optional[Chunk]:
        """The next chunk of whole lines, or None if nothing complete is there now."""
        for _ in range(64):  # each pass either returns or moves to another file
            if self.fd is None and not self._open_path():
                return None
            chunk = self._read_fd(max_bytes)
            if chunk is not None:
                return chunk
            if not self._advance(max_bytes):
                return None
        return None

    def _read_fd(self, max_bytes: int) -> Optional[Chunk]:
        data = os.pread(self.fd, max_bytes, self.offset)
        if not data:
            return None
        ref = self.ref
        if self.offset and ref.fp_len and _fingerprint(self.fd, ref.fp_len) != ref.fp_hash:
            # Truncated and written again past our position since we last looked:
            # these bytes belong to a new file, read from its start.
            self._restart_truncated(os.fstat(self.fd).st_size)
            return self._read_fd(max_bytes)
        if ref.fp_len < FINGERPRINT_BYTES and self.offset + len(data) > ref.fp_len:
            ref.fp_len = min(self.offset + len(data), FINGERPRINT_BYTES)
            ref.fp_hash = _fingerprint(self.fd, ref.fp_len)
            self._remember((ref.dev, ref.ino), ref.fp_len, ref.fp_hash)
        newline = data.rfind(b"\n")
        view = memoryview(data)  # payloads are slices of the read: no copy
        if newline >= 0:  # whole lines; the final newline is implied by the format
            length, payload, more = newline + 1, view[:newline], False
            lines = data.count(b"\n", 0, length)
        elif self._finishing and self.offset + len(data) >= os.fstat(self.fd).st_size:
            length, payload, more = len(data), view, False  # the last line of a finished file
            lines = 1
        elif len(data) == max_bytes:
            # Part of a line longer than a message. One byte stays behind, so the
            # line's last part is never sent before its end is known: a file that
            # is rotated away ends its last line with a newline, part or not.
            length, payload, more = len(data) - 1, view[:-1], True
            lines = 0
        else:
            return None  # an incomplete line: held until its newline comes
        chunk = Chunk(ref, self.offset, self.offset + length, payload, more, lines)
        self.offset = chunk.end
        self._tail = data[max(0, length - 64):length]
        self.last = (ref.gen, chunk.end)
        self._quiet_since = time.monotonic()
        return chunk

    def _advance(self, max_bytes: int) -> bool:
        """Nothing complete to read: check for truncation and rotation. True if moved."""
        if self._truncated is not None:  # the copy is read to its end: on with the file
            log.info("%s: copy read to byte %d; reading the truncated file from its start",
                     self._label(), self.offset)
            os.close(self.fd)
            fd, self.fd, self._truncated = self._truncated, None, None
            self._take(fd, self.ref.name or self.base)
            return True
        st = os.fstat(self.fd)
        if st.st_size < self.offset or (
            self.ref.fp_len and st.st_size >= self.ref.fp_len
            and _fingerprint(self.fd, self.ref.fp_len) != self.ref.fp_hash
        ):
            self._restart_truncated(st.st_size)
            return True
        successor = self._successor()
        if successor is None:
            self._rotated_at = None
            return False
        name, succ_st, succ_fd = successor
        now = time.monotonic()
        if self._rotated_at is None:
            self._rotated_at = now
            why = "deleted" if st.st_nlink == 0 else "renamed"
            log.info("%s: rotation detected (%s; %s is inode %d); draining the old file",
                     self._label(), why, name, succ_st.st_ino)
        if succ_st.st_size == 0 and now - self._quiet_since < self.rotate_wait:
            os.close(succ_fd)
            return False  # the writer may not have reopened yet: keep reading the old file
        if not self._finishing and os.pread(self.fd, 1, self.offset):
            self._finishing = True  # send the held incomplete line, then switch
            os.close(succ_fd)
            return True
        log.info("%s: done at byte %d; taking up %s", self._label(), self.offset, name)
        os.close(self.fd)
        self.fd = None
        self._take(succ_fd, name)
        return True

    def _restart_truncated(self, size: int) -> None:
        copy = self._copy() if self._truncated is None and self.offset else None
        if copy is not None:
            # copytruncate: what was written before the copy and not read yet is
            # in the copy. Read it from there; only the lines written between the
            # copy and the truncation are in neither file.
            name, fd = copy
            log.warning("%s: truncated (copytruncate?) at byte %d; reading the rest from its copy %s first",
                        self._label(), self.offset, name)
            self._truncated, self.fd = self.fd, fd
            self._finishing = True
            return
        log.warning("%s: size %d is below position %d or its first bytes changed: truncated "
                    "(copytruncate?); reading it again from the start", self._label(), size, self.offset)
        fd = self.fd
        self.fd = None
        self._take(fd, self.ref.name or self.base)

    def _copy(self) -> Optional[Tuple[str, int]]:
        """A sibling that copytruncate made of the current file, opened: same first
        bytes, the bytes just before our position, and more after it."""
        ref, tail, chosen = self.ref, self._tail, None
        for name, st, fd in reversed(self._candidates()):  # the newest first
            if chosen is None and (st.st_dev, st.st_ino) != (ref.dev, ref.ino) and st.st_size > self.offset \
                    and _fingerprint(fd, ref.fp_len) == ref.fp_hash \
                    and os.pread(fd, len(tail), self.offset - len(tail)) == tail:
                chosen = (name, fd)
            else:
                os.close(fd)
        return chosen

    def _successor(self) -> Optional[Tuple[str, os.stat_result, int]]:
        """The next file to follow once the current one is done, opened; or None."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == (self.ref.dev, self.ref.ino):
                return None  # still the live file
        except FileNotFoundError:
            pass
        chosen = None
        for name, cst, fd in self._candidates():
            key = (cst.st_dev, cst.st_ino)
            if chosen is None and key != (self.ref.dev, self.ref.ino) and not self._was_seen(key, cst, fd):
                chosen = (name, cst, fd)
            else:
                os.close(fd)
        return chosen

    def _was_seen(self, key: Tuple[int, int], st: os.stat_result, fd: int) -> bool:
        """Followed already? Same inode *and* same first bytes: a deleted file's
        inode is reused by new files, and a listing can miss a file mid-rename,
        so entries are never dropped for being absent once, only by age."""
        seen = self._seen.get(key)
        if seen is None:
            return False
        fp_len, fp_hash = seen
        if fp_len == 0:
            return st.st_size == 0  # seen empty: a file with data under that inode is new
        return st.st_size >= fp_len and _fingerprint(fd, fp_len) == fp_hash

