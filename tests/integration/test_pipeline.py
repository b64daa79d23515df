"""End to end through real daemons and a real nats-server with JetStream."""

import asyncio
import signal
import time

import nats

from harness import append_numbered, verdict, wait_until

AWKWARD = [
    b"",                                   # an empty line
    b"windows line\r",                     # CRLF: the \r is kept
    b"\ttabs\tinside\t",
    b"invalid utf-8: \xff\xfe\xc3\x28 end",
    b"non-ascii: \xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\x9c",
    b"x" * 100_000,                        # a 100 KB line
    b"   leading and trailing spaces   ",
]


def test_200k_numbered_and_awkward_lines_arrive_byte_identical(pipeline):
    p = pipeline()
    expected = bytearray()
    with open(p.log, "wb") as f:
        pass
    append_numbered(p.log, 1, 100_000)
    p.consumer.start()
    p.producer.start()
    with open(p.log, "ab") as f:
        f.write(b"\n".join(AWKWARD) + b"\n")
    append_numbered(p.log, 100_001, 100_000)
    with open(p.log, "ab") as f:
        f.write(b"\n".join(AWKWARD) + b"\n")
    expected = p.log.read_bytes()
    wait_until(lambda: p.output_files() and len(p.output()) >= len(expected), 60,
               lambda: f"the output to reach {len(expected)} bytes\n{p.logs()}")
    out = p.output()
    assert out == expected, verdict(out, range(1, 200_001))
    assert verdict(out, range(1, 200_001))["lost"] == 0


def test_a_line_longer_than_a_message_travels_in_parts(pipeline):
    p = pipeline(SHIPPER_BATCH_BYTES="64K")
    long_line = bytes(range(32, 127)) * 30_000   # 2.85 MB, well above 64K and 1 MiB
    p.log.write_bytes(b"before\n" + long_line + b"\nafter\n")
    p.consumer.start()
    p.producer.start()
    expected = p.log.read_bytes()
    wait_until(lambda: p.output_files() and len(p.output()) >= len(expected), 30, lambda: f"the output\n{p.logs()}")
    assert p.output() == expected


def test_incomplete_last_line_is_held_until_its_newline(pipeline):
    p = pipeline()
    p.log.write_bytes(b"one\ntw")
    p.consumer.start()
    p.producer.start()
    wait_until(lambda: p.output_files() and p.output() == b"one\n", 20, lambda: f"the first line\n{p.logs()}")
    with open(p.log, "ab") as f:
        f.write(b"o\nthree\n")
    wait_until(lambda: p.output() == b"one\ntwo\nthree\n", 20, lambda: f"the completed lines\n{p.logs()}")


def _first_part_shipped(p) -> int:
    """20,000 numbered lines, both daemons started, all of them in the output;
    returns the next line number."""
    n = append_numbered(p.log, 1, 20_000)
    p.consumer.start()
    p.producer.start()
    wait_until(lambda: p.output_files() and len(p.output()) == p.log.stat().st_size, 30, lambda: f"first part\n{p.logs()}")
    return n


def test_producer_restart_resends_nothing_and_loses_nothing(pipeline):
    p = pipeline()
    n = _first_part_shipped(p)
    assert p.producer.stop() == 0, p.logs()
    n = append_numbered(p.log, n, 20_000)       # written while the producer is down
    p.producer.start()
    n = append_numbered(p.log, n, 20_000)
    wait_until(lambda: len(p.output()) >= p.log.stat().st_size, 30, lambda: f"everything\n{p.logs()}")
    out = p.output()
    result = verdict(out, range(1, n))
    assert result == {"lines": n - 1, "received": n - 1, "lost": 0, "duplicated": 0, "reordered": 0}
    assert out == p.log.read_bytes()


def test_consumer_restart_loses_nothing(pipeline):
    p = pipeline()
    n = _first_part_shipped(p)
    assert p.consumer.stop() == 0, p.logs()
    n = append_numbered(p.log, n, 30_000)       # queued in the stream meanwhile
    p.consumer.start()
    wait_until(lambda: len(p.output()) >= p.log.stat().st_size, 30, lambda: f"everything\n{p.logs()}")
    result = verdict(p.output(), range(1, n))
    assert result["lost"] == result["duplicated"] == result["reordered"] == 0, result
    assert p.output() == p.log.read_bytes()


def test_sighup_reload_keeps_every_line(pipeline):
    p = pipeline()
    n = append_numbered(p.log, 1, 5_000)
    p.consumer.start()
    p.producer.start()
    wait_until(lambda: "shipping" in p.producer.tail() and "consuming" in p.consumer.tail(), 20, p.logs)
    for _ in range(3):
        p.producer.signal(signal.SIGHUP)
        p.consumer.signal(signal.SIGHUP)
        n = append_numbered(p.log, n, 5_000)
    wait_until(lambda: p.output_files() and len(p.output()) >= p.log.stat().st_size, 30, lambda: f"everything\n{p.logs()}")
    assert p.output() == p.log.read_bytes()
    assert "reloading the configuration" in p.producer.tail(100_000)


def _publish(url, subject, payload, headers=None):
    async def go():
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.publish(subject, payload, headers=headers)
        await nc.close()
    asyncio.run(go())


def test_plain_message_of_the_original_go_producer_is_written_as_a_line(pipeline, nats_server):
    p = pipeline()
    p.consumer.start()
    p.wait_consuming()
    _publish(nats_server.url, "shipper.p0.legacy-host", b"a line from the Go producer")
    _publish(nats_server.url, "shipper.p0.legacy-host", b"and another")
    wait_until(lambda: p.output_files("legacy-host") and p.output("legacy-host").count(b"\n") == 2, 20,
               lambda: f"the plain lines\n{p.logs()}")
    assert p.output("legacy-host") == b"a line from the Go producer\nand another\n"


def test_a_plain_subscriber_writing_payload_and_newline_gets_the_original_lines(pipeline, nats_server):
    """As the original Go consumer does: payload + "\\n" per message."""
    p = pipeline()
    append_numbered(p.log, 1, 3_000)
    with open(p.log, "ab") as f:
        f.write(b"\n".join(AWKWARD[:5]) + b"\n")

    async def collect():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        sub = await js.subscribe("shipper.>", ordered_consumer=True)
        got = bytearray()
        while len(got) < p.log.stat().st_size:
            msg = await sub.next_msg(timeout=20)
            got += msg.data + b"\n"
        await nc.close()
        return bytes(got)

    p.consumer.start()   # creates the stream
    p.wait_consuming()
    p.producer.start()
    assert asyncio.run(collect()) == p.log.read_bytes()


def test_duplicate_message_from_a_republish_is_written_once(pipeline, nats_server):
    """A range the consumer already wrote (e.g. re-published after the duplicate
    window) is acknowledged and skipped; an overlapping range writes only its new tail."""
    p = pipeline()
    p.consumer.start()
    p.wait_consuming()
    subject = "shipper.p0.dup-host"
    pos = lambda s, e: {"Fshipper-Pos": f"origin1 0 {s} {e} - -"}
    _publish(nats_server.url, subject, b"l1\nl2", pos(0, 6))
    _publish(nats_server.url, subject, b"l1\nl2", pos(0, 6))            # same range again
    _publish(nats_server.url, subject, b"l1\nl2\nl3\nl4", pos(0, 12))   # overlaps: l3, l4 are new
    _publish(nats_server.url, subject, b"l5", pos(12, 15))
    wait_until(lambda: p.output_files("dup-host") and p.output("dup-host").endswith(b"l5\n"), 20,
               lambda: f"the lines\n{p.logs()}")
    assert p.output("dup-host") == b"l1\nl2\nl3\nl4\nl5\n"


def test_a_range_arriving_before_its_predecessor_waits_for_it(pipeline, nats_server):
    """Stream order k+1, k (a re-send after a lost publish): written k, k+1."""
    p = pipeline()
    p.consumer.start()
    p.wait_consuming()
    subject = "shipper.p0.order-host"
    pos = lambda s, e: {"Fshipper-Pos": f"origin2 0 {s} {e} - -"}
    _publish(nats_server.url, subject, b"first", pos(0, 6))
    _publish(nats_server.url, subject, b"third", pos(12, 18))   # ahead of "second"
    _publish(nats_server.url, subject, b"second", pos(6, 12))
    wait_until(lambda: p.output_files("order-host") and p.output("order-host").count(b"\n") == 3, 30,
               lambda: f"the lines\n{p.logs()}")
    assert p.output("order-host") == b"first\nsecond\nthird\n"


def test_core_mode_ships_over_plain_nats(pipeline):
    p = pipeline(SHIPPER_MODE="core")
    p.consumer.start()
    wait_until(lambda: "subscribed" in p.consumer.tail(), 20, p.logs)
    p.producer.start()
    append_numbered(p.log, 1, 5_000)
    wait_until(lambda: p.output_files() and len(p.output()) >= p.log.stat().st_size, 30, p.logs)
    assert p.output() == p.log.read_bytes()
    assert "core mode" in p.consumer.tail()


def test_producer_waits_for_the_stream_and_then_ships(pipeline):
    p = pipeline()
    append_numbered(p.log, 1, 1_000)
    p.producer.start()
    wait_until(lambda: "no stream answers for shipper.>" in p.producer.tail(), 20, p.logs)
    assert not p.out.exists()
    p.consumer.start()   # creates the stream and its consumer
    wait_until(lambda: p.output_files() and len(p.output()) >= p.log.stat().st_size, 40, p.logs)
    assert p.output() == p.log.read_bytes()


def test_without_directory_every_host_goes_into_one_file(pipeline, nats_server, tmp_path):
    single = tmp_path / "central" / "all.log"
    p = pipeline(SHIPPER_OUTPUT=single, SHIPPER_DIRECTORY="")
    p.consumer.start()
    p.wait_consuming()
    _publish(nats_server.url, "shipper.p0.host-a", b"from a")
    _publish(nats_server.url, "shipper.p0.host-b", b"from b")
    wait_until(lambda: list(single.parent.glob("all.log-*")) and
               list(single.parent.glob("all.log-*"))[0].read_bytes().count(b"\n") == 2, 20, p.logs)
    [path] = single.parent.glob("all.log-*")
    assert path.name.endswith("0000")   # '-%Y%m%d%H%M' of the day's start was appended
    assert path.read_bytes() == b"from a\nfrom b\n"


def test_a_first_start_killed_before_its_first_line_still_ships_the_file_rotated_meanwhile(pipeline):
    """The file a producer's first start follows is recorded at once: killed
    before any line came, restarted after the file was rotated away, it ships
    the rotated file (not skipped as history from before fshipper ran), then the new one."""
    p = pipeline()
    p.log.touch()
    p.consumer.start()
    p.producer.start()
    wait_until(lambda: "shipping" in p.producer.tail(), 20, p.logs)
    p.producer.stop(kill=True)
    n = append_numbered(p.log, 1, 3_000)
    p.log.rename(p.log.with_name("app.log.1"))
    n = append_numbered(p.log, n, 3_000)
    p.producer.start()
    want = p.log.with_name("app.log.1").read_bytes() + p.log.read_bytes()
    wait_until(lambda: len(p.output()) >= len(want), 30, lambda: f"everything\n{p.logs()}")
    assert verdict(p.output(), range(1, n)) == {"lines": n - 1, "received": n - 1, "lost": 0, "duplicated": 0,
                                                "reordered": 0}
    assert p.output() == want


def test_a_backlog_in_large_messages_drains_at_once_after_the_owners_guard(pipeline):
    """200 MB waiting in the file before the daemons start: the producer sends it in
    large messages, and a new owner gets far more of them within its guard than it
    holds. Handed back, they came again behind later ones, which then waited for
    them one redelivery at a time: a 300 MB backlog took 159 s instead of 3 s."""
    p = pipeline()
    lines = 2_000_000
    append_numbered(p.log, 1, lines, width=100)
    size = p.log.stat().st_size
    p.consumer.start()
    p.producer.start()
    started = time.monotonic()
    wait_until(lambda: p.output_files() and len(p.output()) >= size, 120,
               lambda: f"the output to reach {size} bytes\n{p.logs()}", interval=0.1)
    drained = time.monotonic() - started
    out = p.output()
    assert out == p.log.read_bytes(), verdict(out, range(1, lines + 1))
    print(f"\n{size / 1e6:.0f} MB backlog written in {drained:.1f} s")
    assert drained < 30
