"""Classic Unix daemon plumbing: fork and wait for readiness, pidfile, logging, signals.

The process that was started forks a child and waits on a pipe. The child
detaches with python-daemon (double fork, asked for explicitly: python-daemon
skips it when the parent is PID 1, as under systemd, and a Type=forking unit
needs it) and reports "ready" or the reason it failed through the pipe. So the
started process exits 0 only once the daemon runs, and otherwise non-zero with
the reason on stderr.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import logging.handlers
import os
import signal
import sys
from typing import Optional

READY_TIMEOUT = 120.0


class DaemonError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PidFile:
    """Holds the daemon's pid; refuses a second daemon, replaces a stale file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.owned = False

    def acquire(self) -> None:
        other = self._read()
        if other and other != os.getpid() and _alive(other):
            raise DaemonError(f"{self.path}: already running as pid {other}")
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.path)
        except OSError as e:
            raise DaemonError(f"{self.path}: cannot write the pidfile: {e.strerror}") from None
        self.owned = True

    def release(self) -> None:
        if self.owned and self._read() == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.owned = False

    def _read(self) -> Optional[int]:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None


class StateLock:
    """Holds `<state_dir>/<name>.lock` while a daemon works on that state (its
    position, or its ledger and journal): two daemons on one state would each
    take the other's writes for their own. A pidfile does not stop that (another
    --pidfile, another unit); a lock on the state does. flock: the kernel
    releases it when the process ends, however it ends."""

    def __init__(self, settings) -> None:
        self.path = self.path_for(settings)
        self.fd: Optional[int] = None

    @staticmethod
    def path_for(settings) -> str:
        return os.path.join(settings.shipper_state_dir, f"{settings.name}.lock")

    def __enter__(self) -> "StateLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise DaemonError(f"{self.path}: this state is in use by another fshipper daemon (pid {holder}); "
                              "each daemon needs its own (--instance or SHIPPER_STATE_DIR)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class Readiness:
    """The daemon's side of the pipe to the process that started it."""

    def __init__(self, fd: Optional[int]) -> None:
        self.fd = fd

    def ok(self) -> None:
        self._send(b"ok\n")

    def fail(self, message: str, exit_code: int) -> None:
        self._send(f"fail {exit_code} {message}\n".encode("utf-8", "replace"))

    def _send(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, data)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _wait_ready(fd: int, program: str) -> int:
    import select

    chunks = []
    ready, _, _ = select.select([fd], [], [], READY_TIMEOUT)
    while ready:
        data = os.read(fd, 4096)
        if not data:
            break
        chunks.append(data)
        ready, _, _ = select.select([fd], [], [], READY_TIMEOUT)
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    if text == "ok":
        return 0
    if text.startswith("fail "):
        _, code, message = text.split(" ", 2)
        sys.stderr.write(f"{program}: {message}\n")
        return int(code)
    sys.stderr.write(f"{program}: the daemon exited before it was ready (see syslog)\n"
                     if not chunks else f"{program}: unexpected word from the daemon: {text!r}\n")
    return 1


def _current_umask() -> int:
    """The umask this process was started with (reading it means setting it)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def daemonize(program: str) -> Readiness:
    """Returns in the daemon; the calling process exits with the daemon's verdict."""
    import daemon as python_daemon  # python-daemon

    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        code = _wait_ready(read_fd, program)
        os.waitpid(pid, 0)
        os._exit(code)
    os.close(read_fd)
    context = python_daemon.DaemonContext(
        detach_process=True,
        working_directory="/",
        umask=_current_umask(),  # the unit's UMask= (0027) or the admin's, never a looser one of ours
        files_preserve=[write_fd],
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
    context.open()
    return Readiness(write_fd)


def setup_logging(program: str, level: str, foreground: bool, log_file: Optional[str]) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_file:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(log_file)
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {program}[%(process)d]: %(levelname)s %(message)s"))
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {program}: %(levelname)s %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                 facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{program}[%(process)d]: %(levelname)s %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("nats").setLevel(logging.CRITICAL)  # its errors reach us via callbacks
