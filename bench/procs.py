"""Processes under measurement: start, stop, and what /proc says of them.

Everything is read from /proc so that both systems are measured the same
way and the runner needs nothing beyond the standard library.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A run could not be measured (a process died, a deadline passed)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], bool], timeout: float,
             interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def peak_rss_mb(pid: int) -> float:
    return status_kb(pid, "VmHWM") / 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Proc:
    """One daemon of a system under test, run in the foreground."""
    role: str
    argv: Sequence[str]
    log: Path
    env: Optional[Dict[str, str]] = None
    cwd: Optional[Path] = None
    popen: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                list(self.argv), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise BenchError(f"{self.role} exited with {self.popen.returncode}; "
                             f"last lines of {self.log}:\n{tail(self.log)}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_all(procs: List[Proc]) -> None:
    """Stop in reverse start order: senders first, then what they send to."""
    for proc in reversed(procs):
        proc.stop()


class FdSampler:
    """Largest count of open fds seen per process, sampled while waiting."""

    def __init__(self, procs: List[Proc]) -> None:
        self.procs = procs
        self.peak: Dict[str, int] = {p.role: 0 for p in procs}

    def sample(self) -> None:
        for p in self.procs:
            try:
                self.peak[p.role] = max(self.peak[p.role], open_fds(p.pid))
            except OSError:
                pass
