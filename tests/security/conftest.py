"""A hostile client against the real daemons: while a legitimate host ships
numbered lines, a client with ordinary publish rights sends what it likes.

Every case checks the same things: the legitimate host's output is its log,
byte for byte (0 lost, 0 duplicated, 0 reordered); nothing outside the output
directory was created, changed or deleted (a sentinel tree next to it); both
daemons are alive; the refusal was logged and counted.
"""

import asyncio
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import nats
import pytest

from harness import append_numbered, verdict, wait_until

CLEAN = {"lost": 0, "duplicated": 0, "reordered": 0}


def snapshot(root: Path) -> Dict[str, tuple]:
    """Everything under `root`, links not followed: kind, mode, and content or target."""
    found = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(d, name)
            st = os.lstat(path)
            if os.path.islink(path):
                found[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[path] = ("dir", st.st_mode)
            else:
                found[path] = ("file", st.st_mode, st.st_mtime_ns,
                               hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return found


class Sentinel:
    """Files and a directory beside the output directory that nothing may touch,
    among them an output-like file older than SHIPPER_KEEP_DAYS (expiry bait)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sub").mkdir(parents=True)
        (root / "precious.txt").write_bytes(b"precious\n")
        (root / "sub" / "also.txt").write_bytes(b"also precious\n")
        self.old = root / "app.log.20200101"
        self.old.write_bytes(b"an old file, not ours\n")
        past = 1577836800   # 2020-01-01
        os.utime(self.old, (past, past))
        self.before = snapshot(root)

    def unchanged(self) -> bool:
        return snapshot(self.root) == self.before


class Shipping(threading.Thread):
    """The legitimate host: appends numbered lines to its log in small steps."""

    def __init__(self, log: Path, count: int, step: int = 200, pause: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.log, self.count, self.step, self.pause = log, count, step, pause

    def run(self) -> None:
        n = 1
        while n <= self.count:
            n = append_numbered(self.log, n, min(self.step, self.count - n + 1))
            time.sleep(self.pause)


class Hostile:
    """One pipeline (host web1.example.net), a sentinel tree, and helpers to attack it."""

    def __init__(self, pipeline, nats_server, tmp_path: Path, **settings) -> None:
        self.sentinel = Sentinel(tmp_path / "sentinel")
        self.p = pipeline(**settings)
        self.url = nats_server.url
        self.shipping: Optional[Shipping] = None
        self.consumer_peak_rss = 0

    def start(self, lines: int) -> Shipping:
        p = self.p
        p.consumer.start()
        p.wait_consuming()
        p.producer.start()
        self.shipping = Shipping(p.log, lines)
        self.shipping.start()
        wait_until(lambda: (p.state / "producer.position").exists(), 20, p.logs)
        return self.shipping

    @property
    def origin(self) -> str:
        return json.loads((self.p.state / "producer.position").read_text())["origin"]

    def publish(self, messages: List[Tuple[str, bytes, Optional[dict]]], acked: bool = True) -> int:
        """Publish (subject, payload, headers) as the hostile client; how many the stream took."""
        async def send() -> int:
            nc = await nats.connect(self.url)
            js = nc.jetstream()
            taken = 0
            try:
                for subject, payload, headers in messages:
                    if acked:
                        await js.publish(subject, payload, headers=headers)
                    else:
                        await nc.publish(subject, payload, headers=headers)
                    taken += 1
                await nc.flush()
            finally:
                await nc.close()
            return taken
        return asyncio.run(send())

    def drained(self, consumer: str = "SHIPPER_p0") -> bool:
        """The consumer has handled (acknowledged or refused) everything in the stream."""
        async def info():
            nc = await nats.connect(self.url)
            try:
                return await nc.jetstream().consumer_info("SHIPPER", consumer)
            finally:
                await nc.close()
        state = asyncio.run(info())
        return state.num_pending == 0 and state.num_ack_pending == 0

    def finish(self, expected: Callable[[bytes], bytes] = lambda out: out) -> str:
        """Wait for the legitimate host's lines; check them, the sentinel and the
        daemons; stop the consumer and return its log. `expected` maps the output
        to what must equal the log (to take out a line the attacker could inject
        legitimately, as any client allowed to publish as that host can)."""
        p = self.p
        self.shipping.join(120)
        wait_until(lambda: expected(p.output()) == p.log.read_bytes(), 60,
                   lambda: f"{verdict(p.output(), range(1, self.shipping.count + 1))}\n{p.logs()}")
        result = verdict(p.output(), range(1, self.shipping.count + 1))
        assert {k: result[k] for k in CLEAN} == CLEAN, result
        assert result["received"] == self.shipping.count
        assert self.sentinel.unchanged(), "something outside the output directory changed"
        assert p.producer.running() and p.consumer.running(), p.logs()
        self.consumer_peak_rss = peak_rss(p.consumer.proc.pid)
        assert p.consumer.stop() == 0
        return p.consumer.tail(200_000)


def peak_rss(pid: int) -> int:
    """Bytes: the process's peak resident set (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def stopped_line(log: str) -> str:
    return next(line for line in reversed(log.splitlines()) if "stopped:" in line)


def refused_count(log: str) -> int:
    line = stopped_line(log)
    return int(line.split(" refused,")[0].rsplit(" ", 1)[1])


@pytest.fixture
def hostile(pipeline, nats_server, tmp_path):
    """make(**settings) -> Hostile; the pipeline fixture stops the daemons after."""
    return lambda **settings: Hostile(pipeline, nats_server, tmp_path, **settings)
