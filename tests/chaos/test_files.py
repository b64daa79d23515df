"""Faults around files: rotations while the producer is down, copytruncate
under load, and the consumer's output disk filling up."""

import os
import time

import pytest

from faults import LINE_WIDTH, Rotator, Writer, clean, conclude
from harness import append_numbered, tmpfs, wait_until


def _kill_producer_midway(p, chaos, part: int) -> int:
    """Write `part` lines, ship them, kill -9 the producer at a random moment
    on the way; returns the next line number."""
    n = append_numbered(p.log, 1, part, LINE_WIDTH)
    p.consumer.start()
    p.producer.start()
    goal = chaos.rng.uniform(0.2, 0.8) * part * LINE_WIDTH
    wait_until(lambda: p.output_files() and len(p.output()) >= goal, 60, lambda: f"some lines out\n{p.logs()}")
    p.producer.stop(kill=True)
    return n


def test_producer_down_while_the_file_rotates_three_times(pipeline, chaos):
    """kill -9 of the producer half-way through the file; while it is down the
    file grows, is rotated (create) three times and each new file grows; at the
    restart it finishes app.log.3 from its position, then .2, .1 and app.log."""
    part = chaos.pick(10_000, 100_000)
    p = pipeline()
    n = _kill_producer_midway(p, chaos, part)
    rotator = Rotator(p.log, 0, "create")
    for _ in range(3):
        n = append_numbered(p.log, n, part // 2, LINE_WIDTH)   # the file grows while down
        rotator.rotate()
        n = append_numbered(p.log, n, part // 2, LINE_WIDTH)   # and its successor too
    rotator.check()
    names = sorted(f.name for f in p.log.parent.iterdir())
    assert names == ["app.log", "app.log.1", "app.log.2", "app.log.3"], names
    p.producer.start()
    result = conclude(p, range(1, n), chaos, "producer kill -9, file rotated 3x and grown while down",
                      timeout=chaos.pick(60, 180))
    assert clean(result), chaos.why(result, p.logs())
    assert "finishing it from byte" in p.producer.tail(100_000), p.logs()


def test_producer_down_during_copytruncate_loses_nothing(pipeline, chaos):
    """kill -9 of the producer half-way through the file; while it is down
    logrotate copytruncate copies and truncates the file, which then grows again.
    No line is written between the copy and the truncation, so none may be lost:
    the producer finishes the copy from its position, then the file from byte 0."""
    part = chaos.pick(10_000, 100_000)
    p = pipeline()
    n = _kill_producer_midway(p, chaos, part)
    n = append_numbered(p.log, n, part // 2, LINE_WIDTH)
    rotator = Rotator(p.log, 0, "copytruncate")
    rotator.rotate()
    rotator.check()
    n = append_numbered(p.log, n, part // 2, LINE_WIDTH)
    p.producer.start()
    result = conclude(p, range(1, n), chaos, "producer kill -9, copytruncate while down", timeout=chaos.pick(60, 180))
    assert clean(result), chaos.why(result, p.logs())
    assert "finishing its copy" in p.producer.tail(100_000), p.logs()


def test_copytruncate_under_load_duplicates_nothing(pipeline, chaos):
    """logrotate copytruncate every 2 s while lines are written at a steady rate.
    Lines written between logrotate's copy and its truncate are in neither file:
    they may be lost, never duplicated. The lost lines are measured: each run of
    them must fall inside a logrotate run, and the row reports the window."""
    total, rate = chaos.pick(40_000, 200_000), 2_000
    p = pipeline()
    p.log.touch()
    p.consumer.start()
    p.producer.start()
    writer, rotator = Writer(p.log, total, rate), Rotator(p.log, 2.0, "copytruncate")
    writer.start()
    rotator.start()
    writer.join()
    writer.check()
    rotator.stop()
    rotator.check()
    numbers = writer.numbers()
    result = conclude(p, numbers, chaos, "logrotate copytruncate every 2s", timeout=60, quiet=8)
    got = set(int(line[5:14]) for line in p.output().splitlines() if line.startswith(b"line "))
    lost = [x for x in numbers if x not in got]
    runs = _runs(lost)
    outside = []
    for lo, hi in runs:
        t_lo, t_hi = writer.time_of(lo), writer.time_of(hi)
        if not any(start - 0.05 <= t_lo and t_hi <= end + 0.05 for start, end, _, _ in rotator.runs):
            outside.append((lo, hi))
    longest = max((hi - lo + 1 for lo, hi in runs), default=0)
    rotate_ms = sorted(1000 * (end - start) for start, end, _, _ in rotator.runs)
    chaos.note(f"{len(rotator.runs)} rotations, {len(runs)} lost run(s), longest {longest} lines "
               f"= {1000 * longest / rate:.0f} ms at {rate} lines/s; logrotate run median "
               f"{rotate_ms[len(rotate_ms) // 2]:.0f} ms, max {rotate_ms[-1]:.0f} ms")
    assert result["duplicated"] == 0 and result["reordered"] == 0, chaos.why(result, p.logs())
    assert not outside, chaos.why({**result, "lost outside logrotate runs": outside[:5]}, p.logs())


def _runs(numbers):
    runs = []
    for x in numbers:
        if runs and runs[-1][1] == x - 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return [tuple(r) for r in runs]


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    with tmpfs(tmp_path / "out", "2m") as out:
        yield out


def test_consumer_output_disk_fills_up_and_is_freed(pipeline, chaos, small_disk):
    """The output directory is a 2 MiB tmpfs, mostly taken by ballast files. The
    consumer fills the rest, says it pauses, and naks; each time a ballast file
    is removed it writes on. Lines keep arriving at a steady rate meanwhile."""
    pieces = chaos.pick(2, 4)
    ballast = [small_disk / f"ballast-{i}" for i in range(pieces)]
    for path in ballast:
        path.write_bytes(b"\0" * (1536 * 1024 // pieces))
    total = 29_000   # 1.77 MiB: more than fits while any ballast file is left, less than 2 MiB
    p = pipeline()
    p.log.touch()
    consumer_log = lambda: p.consumer.tail(1_000_000)
    pauses = lambda: consumer_log().count("cannot write")
    p.consumer.start()
    p.producer.start()
    writer = Writer(p.log, total, rate=2_000)
    writer.start()
    for path in ballast:
        seen = pauses()
        wait_until(lambda: pauses() > seen, 60, lambda: f"the consumer to say it pauses\n{p.logs()}")
        time.sleep(chaos.rng.uniform(0.5, 3.0))   # stays full for a while: several naks
        path.unlink()
    writer.join()
    writer.check()
    result = conclude(p, writer.numbers(), chaos, "consumer output on a 2 MiB tmpfs that fills up",
                      timeout=90, notes=f"{pieces} fill/free cycles, {pauses()} pause message(s)")
    assert clean(result), chaos.why(result, p.logs())
    assert "writing again" in consumer_log(), p.logs()
    assert "No space left on device" in consumer_log(), p.logs()
