"""kill -9 of producer, consumer and nats-server at random moments, under real
logrotate; a producer down past the duplicate window; a NATS cluster losing
nodes; a long NATS outage with the producer's memory watched."""

import shutil
import signal
import time

from faults import (MemoryProbe, NatsCluster, Rotator, Writer, apply, clean, conclude, schedule,
                    stored_twice)
from harness import append_numbered, wait_until

# The note of a kill-everything run whose first consumer died before its first commit.
EARLY_FIRST_KILL = "first consumer kill before its first commit"


def test_kill_everything_under_logrotate(pipeline, nats_server, chaos):
    """Lines at a steady rate, logrotate (create) every 2 s, and kill -9 of the
    producer, the consumer and nats-server (same store, same port) at random moments.
    In half the runs (drawn from the seed) the first consumer kills itself after
    writing and syncing its first lines, before its first commit; the first
    scheduled kill then finds it dead, and it starts again after that kill's down time."""
    total, rate = chaos.pick(60_000, 300_000), 2_000
    kills = {"producer": chaos.pick(5, 8), "consumer": chaos.pick(5, 8), "nats": chaos.pick(2, 3)}
    faults = schedule(chaos.rng, total / rate, kills,
                      {"producer": (0.1, 3.0), "consumer": (0.1, 3.0), "nats": (0.2, 2.0)})
    # Drawn after the schedule, so that a seed replays the same kills as before.
    early = chaos.rng.random() < 0.5
    print("faults:", [(f.at, f.target, f.down) for f in faults],
          f"first consumer dies before its first commit: {'yes' if early else 'no'}")
    p = pipeline()
    p.log.touch()
    if early:
        # Both daemons ready before the first line: the consumer's first commit
        # (at most a second after its first batch) comes before the earliest kill.
        p.consumer.start(failpoint="consumer-commit:1")
        p.wait_consuming()
        p.producer.start()
        wait_until(lambda: "NATS: connected" in p.producer.tail(), 20, lambda: f"the producer\n{p.logs()}")
    else:
        p.consumer.start()
        p.producer.start()
    # The producer follows the file before the first line is written: a first
    # start takes files rotated before it ever ran for history (on a loaded
    # machine its start can take longer than the first rotation).
    wait_until(lambda: "shipping" in p.producer.tail(), 30, lambda: f"the producer\n{p.logs()}")
    writer, rotator = Writer(p.log, total, rate), Rotator(p.log, 2.0, "create")
    started = time.monotonic()
    writer.start()
    rotator.start()
    if early:
        # Before any scheduled kill: on a loaded machine, kills due earlier wait for it.
        wait_until(lambda: not p.consumer.running(), 30,
                   lambda: f"the first consumer's death at its first commit\n{p.logs()}")
        died = time.monotonic() - started
        status, written = p.consumer.proc.returncode, len(p.output())
        assert status == -signal.SIGKILL and written > 0, (
            f"seed {chaos.seed}: the first consumer was to kill itself before its first commit, after "
            f"writing; it ended with status {status}, {written} bytes written\n{p.logs()}")
    # The first scheduled kill of the consumer is harmless if it is dead already.
    apply(faults, started,
          kill={"producer": lambda: p.producer.stop(kill=True), "consumer": lambda: p.consumer.stop(kill=True),
                "nats": lambda: nats_server.stop(kill=True)},
          start={"producer": p.producer.start, "consumer": p.consumer.start, "nats": nats_server.start})
    writer.join()
    writer.check()
    rotator.stop()
    rotator.check()
    notes = f"kills {kills}, {len(rotator.runs)} rotations, writer reopened {writer.reopens}x"
    result = conclude(p, writer.numbers(), chaos, "kill -9 producer/consumer/nats + logrotate create every 2s",
                      timeout=120, notes=f"{notes}; {EARLY_FIRST_KILL} ({died:.1f}s in)" if early else notes)
    assert clean(result), chaos.why(result, p.logs())
    assert len(rotator.runs) >= total / rate / 2 - 2 and writer.reopens >= len(rotator.runs) - 2


def test_producer_down_longer_than_the_duplicate_window(pipeline, chaos):
    """kill -9 of the producer with its saved position behind what the server
    acknowledged (as a crash just before a save leaves it), down longer than the
    stream's duplicate window: the re-sent messages reach the stream again, and
    the consumer must recognise them."""
    window = chaos.pick(5, 15)
    total, rate = chaos.pick(30_000, 120_000), 2_000
    p = pipeline(SHIPPER_STREAM_DUPLICATE_WINDOW=f"{window}s")
    p.log.touch()
    p.consumer.start()
    p.producer.start()
    position = p.state / "producer.position"
    writer = Writer(p.log, total, rate)
    writer.start()
    wait_until(position.exists, 20, lambda: f"the producer's position\n{p.logs()}")
    time.sleep(chaos.rng.uniform(0.2, 0.4) * total / rate)
    before = position.read_bytes()
    time.sleep(chaos.rng.uniform(0.2, 0.4) * total / rate)
    p.producer.stop(kill=True)
    position.write_bytes(before)   # the last save was lost: everything since is sent again
    time.sleep(window + 2)
    p.producer.start()
    writer.join()
    writer.check()
    result = conclude(p, writer.numbers(), chaos, f"producer down > duplicate window ({window}s) after kill -9",
                      timeout=60)
    assert p.consumer.stop() == 0
    skipped = _consumer_count(p.consumer.tail(100_000), "duplicates skipped")
    twice = stored_twice(_url(p))
    chaos.note(f"{twice} bytes stored twice in the stream, {skipped} whole repeats skipped by the consumer")
    assert clean(result), chaos.why(result, p.logs())
    assert twice > 0, f"nothing was stored twice: the test did not test\n{p.logs()}"


def _consumer_count(log: str, what: str) -> int:
    """A counter from the consumer's last 'stopped: …' line."""
    line = [l for l in log.splitlines() if "stopped:" in l][-1]
    for part in line.split("stopped:")[1].split(","):
        if what in part:
            return int(part.split()[0])
    raise AssertionError(f"no '{what}' in {line!r}")


def _url(p) -> str:
    for line in (p.config / "fshipper.env").read_text().splitlines():
        if line.startswith("NATS_URL="):
            return line.split("=", 1)[1]
    raise AssertionError("no NATS_URL")


def test_cluster_node_killed_repeatedly_then_lost(tmp_path, pipeline, chaos):
    """Three nats-server processes, stream R3, NATS_URL listing all three: kill -9
    of a node at random moments (restarted after a while), then one node lost
    for good (killed, its store removed) for the rest of the run."""
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        total, rate = chaos.pick(40_000, 200_000), 2_000
        duration = total / rate
        kills = {f"n{i}": chaos.pick(1, 3) for i in range(3)}
        faults = schedule(chaos.rng, duration * 0.65, kills, {k: (0.5, 3.0) for k in kills})
        gone = chaos.rng.randrange(3)
        print("faults:", [(f.at, f.target, f.down) for f in faults], f"n{gone} lost for good at 75%")
        p = pipeline(NATS_URL=cluster.url, SHIPPER_STREAM_REPLICAS="3")
        p.log.touch()
        p.consumer.start()
        p.producer.start()
        writer = Writer(p.log, total, rate)
        started = time.monotonic()
        writer.start()
        nodes = {f"n{i}": node for i, node in enumerate(cluster.nodes)}
        apply(faults, started, kill={k: (lambda n=n: n.stop(kill=True)) for k, n in nodes.items()},
              start={k: n.start for k, n in nodes.items()})
        time.sleep(max(0.0, started + duration * 0.75 - time.monotonic()))
        cluster.nodes[gone].stop(kill=True)
        shutil.rmtree(cluster.nodes[gone].store)
        writer.join()
        writer.check()
        result = conclude(p, writer.numbers(), chaos, "3-node cluster, R3: kill -9 of nodes, then one lost",
                          timeout=120, notes=f"{len(faults)} node kills, n{gone} lost for good")
        assert clean(result), chaos.why(result, p.logs())
    finally:
        cluster.stop()


def test_nats_down_while_the_file_grows(pipeline, nats_server, chaos):
    """nats-server stopped while the file grows by many megabytes: the producer
    holds its position and retries; its memory stays flat (the file is the
    buffer); every line arrives once the server is back."""
    outage, megabytes, width = chaos.pick(15, 60), chaos.pick(20, 100), 200
    rate = megabytes * 1_000_000 / width / outage
    p = pipeline()
    first = 1 + 5_000
    append_numbered(p.log, 1, first - 1, width)
    p.consumer.start()
    p.producer.start()
    wait_until(lambda: p.output_files() and len(p.output()) >= (first - 1) * width, 60,
               lambda: f"the first lines\n{p.logs()}")
    probe = MemoryProbe(p.producer.proc.pid)
    probe.start()
    time.sleep(2)
    baseline = max(s[1] for s in probe.samples)
    nats_server.stop()
    down = time.monotonic()
    writer = Writer(p.log, int(rate * outage), rate, first=first, width=width)
    writer.start()
    writer.join()
    writer.check()
    time.sleep(max(0.0, down + outage - time.monotonic()))
    during = [s for s in probe.samples if s[0] >= down]
    nats_server.start()
    result = conclude(p, range(1, writer.next_number), chaos,
                      f"nats-server down {outage}s while the file grows {megabytes} MB",
                      timeout=chaos.pick(120, 300), width=width)
    probe.stop()
    peak = max(s[1] for s in during)
    chaos.note(f"producer VmRSS {baseline / 1024:.1f} MiB before, max {peak / 1024:.1f} MiB during "
               f"the outage, VmHWM {probe.samples[-1][2] / 1024:.1f} MiB at the end")
    assert clean(result), chaos.why(result, p.logs())
    assert peak - baseline < 16 * 1024, f"producer RSS grew {baseline} -> {peak} kB during the outage"
