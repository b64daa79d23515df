"""The moving parts of the chaos tests: a steady writer, real logrotate, a NATS
cluster, a WAN link to cut, kill schedules, memory probes and the table of results.

Every random choice comes from one `random.Random(seed)`; the seed is printed
and named in each assertion, and CHAOS_SEED=<seed> replays the same schedule
(the same kill moments and down times; process timing still varies a little).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import nats
import nats.errors

from fshipper import wire

from harness import NatsServer, free_port, need_program, numbered_line, verdict, wait_until

LINE_WIDTH = 64  # bytes per numbered line, newline included


# --- the log writer -----------------------------------------------------------------


class Writer(threading.Thread):
    """Appends numbered lines at a steady rate, as a program's logger would.

    It reopens the file when the path names another inode, as Python's
    WatchedFileHandler does, checking before each batch (every 10 ms); until
    the new file exists it goes on writing to the old one. So after a rotation
    in `create` mode a few lines still land in the renamed file, which is what
    real loggers do and what the producer must cope with. Under copytruncate
    the inode stays and the descriptor is O_APPEND, so writes follow the
    truncation.
    """

    TICK = 0.01

    def __init__(self, path: Path, total: int, rate: float, first: int = 1, width: int = LINE_WIDTH) -> None:
        super().__init__(daemon=True, name="writer")
        self.path = Path(path)
        self.first = first
        self.total = total
        self.rate = rate
        self.width = width
        self.written = 0
        self.reopens = 0
        self.batches: List[Tuple[float, int, int]] = []  # (time, first number, last number)
        self.error: Optional[BaseException] = None
        self._halt = threading.Event()

    @property
    def next_number(self) -> int:
        return self.first + self.written

    def numbers(self) -> range:
        return range(self.first, self.first + self.written)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by check()
            self.error = e

    def _run(self) -> None:
        f = open(self.path, "ab", buffering=0)
        ino = os.fstat(f.fileno()).st_ino
        start = time.monotonic()
        try:
            while self.written < self.total and not self._halt.is_set():
                due = min(self.total, int((time.monotonic() - start) * self.rate) + 1)
                if due > self.written:
                    try:
                        current = os.stat(self.path).st_ino
                    except FileNotFoundError:
                        current = ino  # renamed, not yet re-created: keep the old file
                    if current != ino:
                        f.close()
                        f = open(self.path, "ab", buffering=0)
                        ino = os.fstat(f.fileno()).st_ino
                        self.reopens += 1
                    lo, hi = self.first + self.written, self.first + due
                    f.write(b"".join(numbered_line(n, self.width) for n in range(lo, hi)))
                    self.batches.append((time.monotonic(), lo, hi - 1))
                    self.written = due
                self._halt.wait(self.TICK)
        finally:
            f.close()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def time_of(self, number: int) -> Optional[float]:
        for t, lo, hi in self.batches:
            if lo <= number <= hi:
                return t
        return None


# --- logrotate ------------------------------------------------------------------------


def logrotate_path() -> str:
    return need_program("logrotate", "logrotate")


class Rotator(threading.Thread):
    """Runs Debian's logrotate with its own config and state file every `interval` seconds."""

    def __init__(self, log: Path, interval: float, mode: str = "create", keep: int = 1000) -> None:
        super().__init__(daemon=True, name="logrotate")
        assert mode in ("create", "copytruncate")
        self.log = Path(log)
        self.interval = interval
        self.conf = self.log.parent.parent / f"logrotate-{mode}.conf"
        self.state = self.log.parent.parent / "logrotate.state"
        directive = "create 0644" if mode == "create" else "copytruncate"
        self.conf.write_text(
            f"{self.log} {{\n    {directive}\n    rotate {keep}\n    missingok\n    notifempty\n"
            f"    nocompress\n    nomail\n}}\n")
        self.runs: List[Tuple[float, float, int, str]] = []  # (start, end, exit status, stderr)
        self._halt = threading.Event()
        self.binary = logrotate_path()

    def rotate(self) -> None:
        start = time.monotonic()
        done = subprocess.run([self.binary, "-s", str(self.state), "-f", str(self.conf)],
                              capture_output=True, text=True)
        self.runs.append((start, time.monotonic(), done.returncode, done.stderr))

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.rotate()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def check(self) -> None:
        failed = [r for r in self.runs if r[2] != 0]
        assert not failed, f"logrotate failed {len(failed)} time(s): {failed[0][3]}"
        assert self.runs, "logrotate never ran"


# --- NATS cluster ---------------------------------------------------------------------


class NatsCluster:
    """Three (or more) nats-server processes on loopback, routes between them, JetStream."""

    def __init__(self, root: Path, size: int = 3, name: str = "c1") -> None:
        root = Path(root)
        ports = [free_port() for _ in range(size)]
        routes = [free_port() for _ in range(size)]
        self.nodes: List[NatsServer] = []
        for i in range(size):
            node_dir = root / f"n{i + 1}"
            node_dir.mkdir(parents=True, exist_ok=True)
            others = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(routes) if j != i)
            conf = node_dir / "nats.conf"
            conf.write_text(
                f"server_name: n{i + 1}\n"  # JetStream and its store come from -js -sd
                f"cluster {{\n  name: {name}\n  listen: 127.0.0.1:{routes[i]}\n  routes: [{others}]\n}}\n")
            self.nodes.append(NatsServer(node_dir / "store", ports[i], config=str(conf)))

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> "NatsCluster":
        for node in self.nodes:
            node.start()
        wait_for_jetstream(self.url)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)


def wait_for_jetstream(url: str, timeout: float = 60) -> None:
    """Until JetStream answers an account request: in a cluster, a meta leader is elected."""

    async def ask() -> bool:
        try:
            nc = await nats.connect(url.split(","), connect_timeout=2, allow_reconnect=False)
        except Exception:
            return False
        try:
            await nc.jetstream(timeout=2).account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    wait_until(lambda: asyncio.run(ask()), timeout, f"a JetStream meta leader at {url}", interval=0.5)


def stored_twice(url: str, subject: str = "shipper.>") -> int:
    """Bytes of file ranges that the stream holds more than once (re-published
    after the duplicate window): what the consumer had to recognise itself."""

    async def scan() -> int:
        nc = await nats.connect(url.split(","), connect_timeout=2, allow_reconnect=False)
        try:
            sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
            covered: Dict[Tuple[str, int], int] = {}
            twice = 0
            while True:
                try:
                    msg = await sub.next_msg(timeout=5)
                except nats.errors.TimeoutError:
                    return twice
                pos, _ = wire.read_headers(msg.headers)
                if pos is not None:
                    reached = covered.get((pos.origin, pos.gen), 0)
                    twice += max(0, min(pos.end, reached) - pos.start)
                    covered[(pos.origin, pos.gen)] = max(reached, pos.end)
                if msg.metadata.num_pending == 0:
                    return twice
        finally:
            await nc.close()

    return asyncio.run(scan())


# --- the link between a far site and the hub -----------------------------------------


class Relay:
    """A TCP relay on a loopback port to `target_port`: the WAN link from a
    site's leaf node to the hub's leafnode port, behind the site's firewall.

    `cut()` drops every connection through it and closes its port, so new ones
    are refused, as a firewall that rejects; `cut(silent=True)` lets nothing
    through without a word, as a firewall that drops or a dead WAN line: the
    connections stay open and carry nothing, new ones are never served.
    `restore()` lets everything through again (after a refusing cut, on the
    same port). `connections` counts the connections it carried.
    """

    def __init__(self, target_port: int, port: Optional[int] = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = port or free_port()
        self.connections = 0
        self._listener: Optional[socket.socket] = None
        self._open: List[socket.socket] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._flowing = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Relay":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener, self._halt = listener, threading.Event()
        self._flowing.set()
        self._thread = threading.Thread(target=self._accept, args=(listener, self._halt), daemon=True,
                                        name="relay")
        self._thread.start()
        return self

    def cut(self, silent: bool = False) -> None:
        if silent:
            self._flowing.clear()
            return
        self._halt.set()
        self._thread.join(5)
        self._listener.close()
        self._listener = None
        with self._lock:
            dropped, self._open = self._open, []
        for sock in dropped:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        if self._listener is None:
            self.start()
        self._flowing.set()

    def stop(self) -> None:
        if self._listener is not None:
            self.cut()
        self._flowing.set()   # pumps held by a silent cut find their sockets closed and end

    def _accept(self, listener: socket.socket, halt: threading.Event) -> None:
        while not halt.is_set():
            if not self._flowing.wait(0.1):
                continue   # not served: the connection attempt waits in the backlog, unanswered
            try:
                near, _ = listener.accept()
            except socket.timeout:
                continue
            try:
                far = socket.create_connection(self.target, timeout=2)
            except OSError:
                near.close()
                continue
            far.settimeout(None)
            with self._lock:
                self._open += [near, far]
                self.connections += 1
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True, name="relay-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()   # held (and no more read) while silently cut
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# --- schedules and probes ------------------------------------------------------------


@dataclass(order=True)
class Fault:
    at: float                    # seconds after the start of writing
    target: str = field(compare=False)
    down: float = field(compare=False)  # seconds before the restart


def schedule(rng, duration: float, counts: Dict[str, int], down: Dict[str, Tuple[float, float]]) -> List[Fault]:
    """Kill moments spread over the run: each target's kills fall in its own slots,
    at a random point of each slot, so kills of one target never pile up."""
    faults = []
    for target, count in counts.items():
        slot = duration * 0.9 / count
        for i in range(count):
            at = duration * 0.05 + slot * i + rng.uniform(0, slot * 0.8)
            faults.append(Fault(round(at, 3), target, round(rng.uniform(*down[target]), 3)))
    return sorted(faults)


def memory_kb(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


class MemoryProbe(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True, name="memory")
        self.pid = pid
        self.every = every
        self.samples: List[Tuple[float, int, int]] = []  # (time, VmRSS kB, VmHWM kB)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                m = memory_kb(self.pid)
            except OSError:
                return
            self.samples.append((time.monotonic(), m["VmRSS"], m["VmHWM"]))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def settle(output: Callable[[], bytes], want: int, timeout: float, what: Callable[[], str],
           quiet: Optional[float] = None) -> bytes:
    """Wait until the output holds `want` bytes (or more: duplicates), then a
    moment longer so late duplicates show too. With `quiet`, where loss is
    possible, also stop once the output has not grown for that many seconds.
    The output is returned even if it never got there: the verdict counts it."""
    seen = [-1, time.monotonic()]

    def done() -> bool:
        size = len(output())
        if size != seen[0]:
            seen[:] = [size, time.monotonic()]
        return size >= want or (quiet is not None and time.monotonic() - seen[1] >= quiet)

    try:
        wait_until(done, timeout, what, interval=0.25)
    except AssertionError as e:
        print(e)
    time.sleep(1.5)
    return output()


def apply(faults: Sequence[Fault], started: float, kill: Dict[str, Callable[[], None]],
          start: Dict[str, Callable[[], None]]) -> None:
    """Carry out `faults` in order: at each moment kill the target, wait, start it again."""
    for fault in faults:
        delay = started + fault.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        kill[fault.target]()
        time.sleep(fault.down)
        start[fault.target]()


def clean(result: Dict[str, int]) -> bool:
    return result["lost"] == result["duplicated"] == result["reordered"] == 0


def conclude(pipeline, numbers: Sequence[int], run, fault: str, timeout: float, notes: str = "",
             width: int = LINE_WIDTH, quiet: Optional[float] = None) -> Dict[str, int]:
    """Wait for the output, count lost, duplicated and reordered lines, record the row."""
    out = settle(pipeline.output, len(numbers) * width, timeout, lambda: f"every line\n{pipeline.logs()}", quiet)
    result = verdict(out, numbers)
    run.record(fault, result, notes)
    return result
