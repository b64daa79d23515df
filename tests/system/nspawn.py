"""A booted Debian 12 container (systemd-nspawn) for the package tests.

The root file system is debootstrapped once and cached as a zstd tarball
outside the repository; each run unpacks it (about a second), boots it
with the package directory bound read-only at /mnt/pkg, and reaches inside
with nsenter.  See shared notes on systemd in tests for the measured facts
this follows (--keep-unit --register=no, no private users, one container
at a time, power off in a finally).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from harness import wait_until

CACHE = Path(os.environ.get("FSHIPPER_TEST_CACHE", "/var/cache/fshipper-test"))
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# apt's downloads (package lists, .debs) kept across runs: a run then fetches
# only what changed on the mirror.  Bound read-write into every container.
APT_CACHES = {"apt-lists": "/var/lib/apt/lists", "apt-archives": "/var/cache/apt/archives"}
INSIDE_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "HOME=/root",
    "DEBIAN_FRONTEND=noninteractive",
]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll predicate until it returns something true; TimeoutError after timeout."""
    return wait_until(predicate, timeout, what, interval, error=TimeoutError)


def host_mirror() -> str:
    """The Debian mirror the host's apt sources name."""
    sources = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        for uri in re.findall(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def ensure_rootfs_tarball(log: Callable[[str], None] = print) -> Path:
    tarball = CACHE / f"{SUITE}.tar.zst"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    mirror = host_mirror()
    log(f"building the {SUITE} container root from {mirror} (cached in {tarball})")
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        root = Path(work) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus",
             SUITE, str(root), mirror],
            check=True, stdout=subprocess.DEVNULL,
        )
        (root / "etc/machine-id").write_text("")
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--zstd", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    return tarball


def unpack_root(root: Path) -> None:
    root.mkdir(parents=True)
    subprocess.run(["tar", "--zstd", "-C", str(root), "-xf", str(ensure_rootfs_tarball())], check=True)


def apt_cache_binds() -> list[str]:
    binds = []
    for name, inside in APT_CACHES.items():
        (CACHE / name / "partial").mkdir(parents=True, exist_ok=True)
        binds.append(f"--bind={CACHE / name}:{inside}")
    return binds


def run_unbooted(root: Path, bind_ro: Path, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a shell script in the root without booting it: no systemd runs,
    as in an image build or a chroot."""
    return subprocess.run(
        ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--as-pid2",
         f"--bind-ro={bind_ro}:/mnt/pkg", *apt_cache_binds(), *(f"--setenv={var}" for var in INSIDE_ENV),
         "/bin/sh", "-exc", script],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Container:
    """One booted container; use as a context manager (powers off on exit)."""

    def __init__(self, workdir: Path, bind_ro: Path, name: str):
        self.workdir = workdir
        self.root = workdir / "root"
        self.bind_ro = bind_ro
        self.name = name
        self.console = workdir / "console.log"
        self.process: subprocess.Popen | None = None
        self.leader = 0

    def __enter__(self) -> "Container":
        unpack_root(self.root)
        try:
            self.boot()
        except BaseException:
            self.poweroff()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.poweroff()

    def boot(self) -> None:
        with open(self.console, "wb") as console:
            self.process = subprocess.Popen(
                ["systemd-nspawn", "-q", "-D", str(self.root), "-M", self.name,
                 "--register=no", "--keep-unit", f"--bind-ro={self.bind_ro}:/mnt/pkg", *apt_cache_binds(), "-b"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            )
        self.leader = wait_for(self._find_leader, 30, "the container's systemd to start")
        # The bus is not up right after boot: is-system-running fails until it is.
        wait_for(
            lambda: self.run(["systemctl", "is-system-running", "--wait"], check=False,
                             timeout=60).stdout.strip() in ("running", "degraded"),
            90, "the container to finish booting",
        )

    def _find_leader(self) -> int:
        if self.process.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {self.process.returncode}; "
                               f"console: {self.console.read_text(errors='replace')[-2000:]}")
        children = _children()
        todo = [self.process.pid]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                if _comm(child) == "systemd" and _comm(pid) == "systemd-nspawn":
                    return child
                todo.append(child)
        return 0

    def run(self, cmd: list[str], check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run cmd inside the container as root, with a clean environment."""
        # Never the caller's stdin: a question (a dpkg conffile prompt) fails
        # at once instead of hanging.
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/usr/bin/env", "-i", *INSIDE_ENV, *cmd],
            capture_output=True, text=True, timeout=timeout, **stdin,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}\n"
                f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
            )
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run(["sh", "-ec", script], check=check, timeout=timeout)

    def path(self, inside: str) -> Path:
        """The host path of a file inside the container."""
        return self.root / inside.lstrip("/")

    def poweroff(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.leader:
            subprocess.run(
                ["nsenter", "-t", str(self.leader), "-a", "/usr/bin/env", "-i", *INSIDE_ENV,
                 "systemctl", "poweroff"],
                capture_output=True, timeout=30,
            )
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
