"""A consumer meeting a producer it has no record of: killed before its first
commit, the next consumer is handed later messages first (the earlier ones are
held for the dead consumer until ack_wait). It must neither take the earlier
ones for repeats (lost lines) nor write the dead consumer's leftovers twice."""

import asyncio
import json
import signal
import subprocess

import nats

from fshipper import wire
from harness import BIN, clean_environ, numbered_line, verdict, wait_until

HOST = "web1.example.net"
MESSAGES, PER_MESSAGE = 6, 3


def publish(url: str, messages: int = MESSAGES, origin: str = "0123456789abcdef") -> bytes:
    """One producer's messages of PER_MESSAGE numbered lines each, as fshipper's
    producer frames them; returns the file they came from."""
    async def run() -> bytes:
        nc = await nats.connect(url)
        js = nc.jetstream()
        data, offset = b"", 0
        for m in range(messages):
            block = b"".join(numbered_line(m * PER_MESSAGE + n + 1) for n in range(PER_MESSAGE))
            pos = wire.Position(origin, 0, offset, offset + len(block), first=(0, 0))
            await js.publish(wire.subject("shipper", HOST, 0), block[:-1], headers=wire.headers(HOST, pos, False))
            data, offset = data + block, pos.end
        await nc.close()
        return data
    return asyncio.run(run())


def setup(p) -> None:
    done = subprocess.run([str(BIN / "fshipper"), "setup", "--config-dir", str(p.config)],
                          env=clean_environ(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_killed_before_its_first_commit_then_later_messages_come_first(pipeline, nats_server):
    # One consumer alone (no standby): with failover, what comes back during the guard
    # of its first pin arrives as redeliveries, and the first batch is committed at once.
    p = pipeline(SHIPPER_FETCH_BATCH=2, SHIPPER_FAILOVER_TIMEOUT=0)
    setup(p)
    expected = publish(nats_server.url)
    first = p.consumer.start(failpoint="consumer-batch:2")  # dies as its second batch arrives
    assert first.proc.wait(30) == -signal.SIGKILL, p.logs()
    left = p.output(HOST)
    journal = p.state / "consumer.journal"
    assert left and len(left) < len(expected), f"the first consumer wrote {len(left)} bytes\n{p.logs()}"
    assert all(json.loads(line)["s"] == {} for line in journal.read_text().splitlines()), \
        "the first consumer committed before it died: the test did not test"

    p.consumer.start()  # handed messages 3.. first; 1.. come back after ack_wait (10 s)
    try:
        wait_until(lambda: len(p.output(HOST)) >= len(expected), 40, "every line")
    except AssertionError:
        pass  # the verdict says what is missing
    assert p.consumer.stop() == 0
    out = p.output(HOST)
    assert verdict(out, range(1, MESSAGES * PER_MESSAGE + 1)) == {
        "lines": 18, "received": 18, "lost": 0, "duplicated": 0, "reordered": 0}, p.logs()
    assert out == expected
    stopped = [line for line in p.consumer.tail().splitlines() if "stopped:" in line][-1]
    assert "0 gaps" in stopped, stopped


def test_a_producer_whose_first_messages_expired_is_written_after_the_gap_timeout(pipeline, nats_server):
    """The stream no longer holds the start of a producer's chain (expired before any
    consumer wrote it): the consumer waits SHIPPER_GAP_TIMEOUT for it, then logs the
    gap with the missing range and writes on, each later line once and in order."""
    p = pipeline(SHIPPER_GAP_TIMEOUT="3s")
    setup(p)
    expected = publish(nats_server.url)
    first_message = expected[:len(expected) // MESSAGES]
    asyncio.run(_purge_first(nats_server.url))   # as if max_age had taken it
    p.consumer.start()
    wait_until(lambda: len(p.output(HOST)) >= len(expected) - len(first_message), 30, p.logs)
    assert p.consumer.stop() == 0
    assert p.output(HOST) == expected[len(first_message):]
    log = p.consumer.tail(20_000)
    assert (f"host {HOST}: producer 0123456789abcdef's lines from file 0 byte 0 (no record of it here: expired "
            "from the stream, or written under another state directory) never came within 3s; writing on from "
            f"0123456789abcdef 0 {len(first_message)} ") in log, log
    assert "1 gaps" in [line for line in log.splitlines() if "stopped:" in line][-1]


async def _purge_first(url: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().delete_msg("SHIPPER", 1)
    await nc.close()
