"""A model of the JetStream server around the real consumer code: every order
of delivery the server allows, and a crash at any step.

The consumer's decisions, writes, syncs, ledger and acknowledgements run for
real (fshipper.consumer.Consumer on real files and a real journal); only the
server is a model, because the point is to choose its behaviour: messages of
several producers and files (rotations, lines in parts, ranges published twice
and re-cut), delivered in batches drawn from what the server may hand out at
that moment (new messages in stream order; any redelivery whose nak delay or
ack_wait has passed, in any order), with a dead consumer's messages held until
their ack_wait. A fault can be injected at any step of decide → record new
files → write (between files) → sync → journal (torn) → acknowledge (between
acks): a crash (all memory lost; files and journal as they are on disk, as
after kill -9) or an I/O error. Then the consumer starts again from its state.

Checked: after every step each host's file is a prefix of that host's input;
no message is ever refused; and at the end, once the server has delivered
everything, each file equals its host's input: in order, once.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from hypothesis.stateful import run_state_machine_as_test
from nats.aio.msg import Msg

from fshipper import config, failpoint, wire
from fshipper.consumer import Consumer
from fshipper.ledger import Ledger
from fshipper.sink import Sink
from fshipper.util import Backoff

ACK_WAIT = 10.0
STREAM, DURABLE = "SHIPPER", "SHIPPER_p0"
STORED_NS = int(time.time() * 1e9)   # one day for every message: one file per host


class Crash(BaseException):
    """kill -9: nothing after it runs (a BaseException, so no handler in the code catches it)."""


# --- what the producers published -------------------------------------------------------


@st.composite
def producer(draw, host: str, origin: str) -> Tuple[bytes, List[dict]]:
    """A host's file content over 1-2 rotations and the messages its producer
    published: whole lines, a long line in parts, and ranges published again
    (as after a lost confirmation outside the duplicate window), re-cut or not."""
    content, messages = b"", []
    prev: Tuple[Optional[int], Optional[int]] = (None, None)
    number = 0
    for gen in range(draw(st.integers(1, 2))):
        lines = []
        for _ in range(draw(st.integers(1, 5))):
            number += 1
            lines.append(f"{host} {number:04d}".encode() + b"x" * draw(st.integers(0, 12)) + b"\n")
        data = b"".join(lines)
        cuts, offset = [], 0   # (start, end, more) of each message, in file order
        i = 0
        while i < len(lines):
            if len(lines[i]) > 12 and draw(st.booleans()):   # in two parts
                k = draw(st.integers(1, len(lines[i]) - 2))
                cuts += [(offset, offset + k, True), (offset + k, offset + len(lines[i]), False)]
                offset += len(lines[i])
                i += 1
                continue
            n = draw(st.integers(1, min(3, len(lines) - i)))
            end = offset + sum(map(len, lines[i:i + n]))
            cuts.append((offset, end, False))
            offset, i = end, i + n
        sent = [_message(host, origin, gen, prev, data, c) for c in cuts]
        for _ in range(draw(st.integers(0, 2))):   # published again from a message boundary on
            j = draw(st.integers(0, len(cuts) - 1))
            k = draw(st.integers(j, len(cuts) - 1))
            again = [_message(host, origin, gen, prev, data, c) for c in cuts[j:k + 1]]
            if k > j and not cuts[k - 1][2] and draw(st.booleans()):   # re-cut: two messages as one
                again = again[:-2] + [_message(host, origin, gen, prev, data, (cuts[k - 1][0], cuts[k][1], cuts[k][2]))]
            at = draw(st.integers(k + 1, len(sent)))
            sent[at:at] = again
        messages += sent
        content += data
        prev = (gen, len(data))
    return content, messages


def _message(host: str, origin: str, gen: int, prev, data: bytes, cut) -> dict:
    start, end, more = cut
    payload = data[start:end] if more else data[start:end - 1]
    pos = wire.Position(origin, gen, start, end, prev[0], prev[1], first=(0, 0))
    return {"subject": wire.subject("shipper", host, 0), "data": payload,
            "headers": wire.headers(host, pos, more)}


@st.composite
def stream_of(draw, hosts: List[str]) -> Tuple[Dict[str, bytes], List[dict]]:
    """Several producers' messages interleaved as the stream stored them."""
    contents, queues = {}, []
    for h, host in enumerate(hosts):
        content, messages = draw(producer(host, f"origin{h}"))
        contents[host] = content
        queues.append(messages)
    stream = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        stream.append(queue.pop(0))
    return contents, stream


# --- the server, as a model --------------------------------------------------------------


class Server:
    """One durable pull consumer's view of the stream: what is delivered, acknowledged,
    due again, on a virtual clock."""

    def __init__(self, stream: List[dict]) -> None:
        self.stream = stream
        self.now = 0.0
        self.next_new = 0                     # index of the first message never delivered
        self.due: Dict[int, float] = {}       # delivered, not acknowledged: index -> redelivery time
        self.delivered: Dict[int, int] = {}
        self.acked: set = set()
        self.terminated: List[int] = []

    def available(self) -> List[int]:
        again = sorted(i for i, t in self.due.items() if t <= self.now)
        return again + ([self.next_new] if self.next_new < len(self.stream) else [])

    def deliver(self, index: int, client) -> Msg:
        if index == self.next_new:
            self.next_new += 1
        self.delivered[index] = self.delivered.get(index, 0) + 1
        self.due[index] = self.now + ACK_WAIT
        pending = len(self.stream) - self.next_new
        reply = (f"$JS.ACK.{STREAM}.{DURABLE}.{self.delivered[index]}.{index + 1}.{sum(self.delivered.values())}."
                 f"{STORED_NS}.{pending}")
        m = self.stream[index]
        return Msg(client, subject=m["subject"], reply=reply, data=m["data"], headers=dict(m["headers"]))

    def answer(self, reply: str, payload: bytes) -> None:
        index = int(reply.split(".")[5]) - 1
        if index in self.acked:
            return
        if payload in (b"", b"+ACK"):
            self.acked.add(index)
            self.due.pop(index, None)
        elif payload.startswith(b"-NAK"):
            rest = payload[4:].strip()
            delay = json.loads(rest)["delay"] / 1e9 if rest else 0.0
            self.due[index] = self.now + delay
        elif payload == b"+WPI":   # in progress: not due again before ack_wait from now
            self.due[index] = self.now + ACK_WAIT
        elif payload.startswith(b"+TERM"):
            self.terminated.append(index)
            self.acked.add(index)
            self.due.pop(index, None)
        else:
            raise AssertionError(f"unexpected reply {payload!r}")

    def done(self) -> bool:
        return len(self.acked) == len(self.stream)


class Faults:
    """Counts the steps the code passes through; at the chosen one, a crash or an I/O error."""

    def __init__(self) -> None:
        self.left: Optional[int] = None
        self.kind = "crash"
        self.where = ""

    def arm(self, steps: Optional[int], kind: str) -> None:
        self.left, self.kind = steps, kind

    def step(self, where: str, error_allowed: bool = True) -> None:
        """A point where the process may die (or, if `error_allowed`, an OSError may come)."""
        if self.left is None:
            return
        if self.left > 0:
            self.left -= 1
            return
        self.left, self.where = None, where
        if self.kind == "error" and error_allowed:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        raise Crash(where)


class Client:
    """What the consumer publishes on: acknowledgements reach the model server."""

    def __init__(self, server: Server, faults: Faults) -> None:
        self.server = server
        self.faults = faults

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers=None) -> None:
        self.faults.step("acknowledge")
        self.server.answer(subject, payload)


# --- the state machine ------------------------------------------------------------------


HOSTS = ["web1.example.net", "db1.example.net", "cache1.example.net"]


class ConsumerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.tmp = tempfile.TemporaryDirectory(prefix="fshipper-model-", dir=base)
        root = Path(self.tmp.name)
        (root / "etc").mkdir()
        (root / "etc" / "fshipper.env").write_text(
            f"NATS_URL=nats://127.0.0.1:4222\nSHIPPER_SUBJECT=shipper\nSHIPPER_STATE_DIR={root / 'state'}\n")
        (root / "etc" / "consumer.env").write_text(
            f"SHIPPER_OUTPUT=app.log.%Y%m%d\nSHIPPER_DIRECTORY={root / 'out'}\nSHIPPER_MAX_OPEN_FILES=2\n")
        self.settings = config.load("consumer", None, str(root / "etc"), environ={}).settings
        self.loop = asyncio.new_event_loop()
        self.faults = Faults()
        self.consumer: Optional[Consumer] = None
        self.crashes = 0

    @initialize(data=st.data(), hosts=st.integers(1, 3))
    def publish(self, data, hosts: int) -> None:
        self.expected, stream = data.draw(stream_of(HOSTS[:hosts]))
        self.server = Server(stream)
        self.client = Client(self.server, self.faults)
        self._start()

    def _start(self) -> None:
        self.consumer = Consumer(self.settings)
        self.consumer.nc = self.client
        self.consumer.early.clock = lambda: self.server.now   # held messages told in progress on the model's clock
        self.consumer.open_state()
        self.backoff = Backoff(first=0.5, cap=30.0)

    def _crashed(self) -> None:
        """kill -9: close what the process held without flushing or recording anything."""
        self.crashes += 1
        self.consumer.sink.close()
        self.consumer.ledger.close()
        self.consumer = None
        self._start()

    def _run(self, coroutine) -> None:
        try:
            self.loop.run_until_complete(coroutine)
        except Crash:
            self._crashed()

    @rule(data=st.data(), size=st.integers(1, 4), more=st.booleans(),
          fault=st.one_of(st.none(), st.tuples(st.integers(0, 12), st.sampled_from(["crash", "error"]))))
    def deliver(self, data, size: int, more: bool, fault) -> None:
        """A batch of what the server may hand out now, in an order it may choose."""
        batch = []
        while len(batch) < size:
            choices = [i for i in self.server.available() if i not in batch]
            if not choices:
                break
            batch.append(data.draw(st.sampled_from(choices)))
        if not batch:
            return
        msgs = [self.server.deliver(i, self.client) for i in batch]
        self.faults.arm(*(fault or (None, "crash")))
        self._run(self.consumer._handle(0, msgs, self.backoff, more=more))
        self.faults.arm(None, "crash")

    @rule(fault=st.one_of(st.none(), st.tuples(st.integers(0, 8), st.sampled_from(["crash", "error"]))))
    def quiet(self, fault) -> None:
        """No message came for a while: what was gathered is committed."""
        if not self.consumer._uncommitted:
            return
        self.faults.arm(*(fault or (None, "crash")))
        self._run(self.consumer._commit_or_fail(0, self.backoff))
        self.faults.arm(None, "crash")

    @rule(fault=st.one_of(st.none(), st.tuples(st.integers(0, 4), st.sampled_from(["crash", "error"]))))
    def tend(self, fault) -> None:
        """Between fetches: held messages told in progress (+WPI) when due."""
        self.faults.arm(*(fault or (None, "crash")))
        self._run(self.consumer._tend_early(0, self.backoff))
        self.faults.arm(None, "crash")

    @rule()
    def crash(self) -> None:
        self._crashed()

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.server.now += seconds

    @invariant()
    def every_file_is_a_prefix_of_its_host(self) -> None:
        for host, content in getattr(self, "expected", {}).items():
            written = self._output(host)
            assert content.startswith(written), (host, written, content)
        assert not getattr(self, "server", None) or not self.server.terminated, self.server.terminated

    def _output(self, host: str) -> bytes:
        return b"".join(p.read_bytes() for p in sorted((Path(self.tmp.name) / "out" / host).glob("app.log.*")))

    def teardown(self) -> None:
        try:
            if getattr(self, "server", None) is not None:
                self._drain()
                for host, content in self.expected.items():
                    assert self._output(host) == content, host
        finally:
            if self.consumer is not None:
                self.consumer.sink.close()
                self.consumer.ledger.close()
            self.loop.close()
            self.tmp.cleanup()

    def _drain(self) -> None:
        """No more faults: the server hands out everything until all is acknowledged."""
        for _ in range(1000):
            if self.server.done() and not self.consumer._uncommitted:
                return
            ready = self.server.available()
            if not ready:
                if self.consumer._uncommitted:
                    self._run(self.consumer._commit_or_fail(0, self.backoff))
                    continue
                self.server.now = min(self.server.due.values())
                continue
            msgs = [self.server.deliver(i, self.client) for i in ready[:4]]
            self._run(self.consumer._handle(0, msgs, self.backoff, more=False))
        raise AssertionError("the server never got everything acknowledged")


@pytest.fixture
def fault_points(monkeypatch):
    """Put the model's fault points into the real code's steps."""
    faults_of = lambda: ConsumerModel.current.faults  # noqa: E731

    monkeypatch.setattr(failpoint, "reach", lambda name: faults_of().step(name, name != "consumer-batch"))

    write_parts = Sink._write_parts

    def write_parts_with_faults(fd, parts):
        faults_of().step("write (between files)")
        write_parts(fd, parts)
    monkeypatch.setattr(Sink, "_write_parts", staticmethod(write_parts_with_faults))

    append = Ledger._append

    def append_with_faults(self, entry):
        faults = faults_of()
        if faults.left == 0 and faults.kind == "crash":   # torn: half the line, then death
            line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
            self._open_journal()
            os.write(self._journal, line[:len(line) // 2])
        faults.step("journal")
        append(self, entry)
    monkeypatch.setattr(Ledger, "_append", append_with_faults)


def _machine():
    class Current(ConsumerModel):
        def __init__(self) -> None:
            super().__init__()
            ConsumerModel.current = self
    return Current


def test_every_delivery_order_and_crash_point(fault_points):
    run_state_machine_as_test(_machine(), settings=settings(
        max_examples=int(os.environ.get("FSHIPPER_MODEL_EXAMPLES", "150")), stateful_step_count=40,
        deadline=None, suppress_health_check=list(HealthCheck), database=None))


@pytest.mark.chaos_long
def test_every_delivery_order_and_crash_point_long(fault_points):
    run_state_machine_as_test(_machine(), settings=settings(
        max_examples=int(os.environ.get("FSHIPPER_MODEL_EXAMPLES", "3000")), stateful_step_count=80,
        deadline=None, suppress_health_check=list(HealthCheck), database=None))
