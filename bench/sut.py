"""What the scenarios need of a system under test.

A system ships the lines appended to one followed file into a per-host
output directory.  Each run gets a fresh work directory and fresh daemons,
so no state (positions, queues, streams) carries over between runs.
"""
from __future__ import annotations

import abc
import os
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

from .procs import BenchError, Proc, stop_all

# Role keys shared by both systems, so figures line up in the tables.
ROLES = ("producer", "consumer", "server")
BIG = 1 << 20   # files removed as soon as a run ends; the rest at the end


class SystemUnderTest(abc.ABC):
    name = "?"
    # What each role is called in this system; a missing role has no process.
    role_names: Dict[str, str] = {}

    def __init__(self, workdir: Path) -> None:
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        self.workdir = workdir
        self.out_dir = workdir / "out"
        self.out_dir.mkdir()
        self.procs: List[Proc] = []

    # -- to be provided by each system ------------------------------------
    @abc.abstractmethod
    def start_pipeline(self, input_file: Path, host: str) -> None:
        """Start every daemon; `input_file` exists (maybe with a backlog)."""

    @abc.abstractmethod
    def start_sink(self) -> None:
        """Start only the receiving side, for simulated publishers."""

    @abc.abstractmethod
    def publisher_argv(self, hosts: int, lines_per_host: int, line_size: int,
                       lines_per_message: int) -> Sequence[str]:
        """A process that publishes numbered lines for `hosts` simulated
        hosts straight into the receiving side (see fanin_*.py)."""

    # -- common -------------------------------------------------------------
    def host_dir(self, host: str) -> Path:
        return self.out_dir / host

    def start(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        proc.start()
        return proc

    def proc(self, role: str) -> Proc:
        for p in self.procs:
            if p.role == role:
                return p
        raise BenchError(f"{self.name} has no {role} running")

    def pids(self) -> Dict[str, int]:
        return {p.role: p.pid for p in self.procs if p.role in ROLES}

    def check_alive(self) -> None:
        for p in self.procs:
            p.check_alive()

    def stop(self) -> None:
        stop_all(self.procs)

    def cleanup(self, later: List[Path]) -> None:
        """Remove the run's big files now, for the disk's sake, and leave the
        tree with its small files to `later` (removed at the end of the
        benchmark). ext4 without a journal passes over inodes freed in the
        last 30 s (vm.dirty_expire_centisecs) when it allocates: with the
        2,000 files and directories of a fan-in run removed between runs,
        whichever run came next paid several times over for creating its own."""
        for directory, _, files in os.walk(self.workdir):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    if os.lstat(path).st_size >= BIG:
                        os.unlink(path)
                except OSError:
                    pass
        later.append(self.workdir)
