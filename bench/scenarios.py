"""The measurements, each one run of one system, the same code for both.

Each function starts the system in a fresh work directory, measures, stops
it, and checks the output byte for byte before returning any figure: a run
whose output is wrong raises BenchError and reports no speed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from .data import (cached_lines, host_lines, host_name, line,
                   output_size, verify)
from .latency import Tail, percentile, writer_line
from .procs import BenchError, FdSampler, cpu_seconds, peak_rss_mb
from .sut import SystemUnderTest

HOST = "benchhost"
REPO = Path(__file__).resolve().parent.parent
Metrics = Dict[str, float]


def _append_file(target: Path, source: Path) -> None:
    """Append all of `source` to `target` at once, in large writes."""
    with open(source, "rb") as src, open(target, "ab") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)


def _wait_drained(sut: SystemUnderTest, host_dir: Path, size: int,
                  timeout: float, sampler: Optional[FdSampler] = None) -> float:
    """Poll the output size until it reaches `size`; return that moment."""
    deadline = time.monotonic() + timeout
    next_check = 0.0
    while True:
        now = time.monotonic()
        got = output_size(host_dir)
        if got >= size:
            return now
        if now > deadline:
            raise BenchError(f"{sut.name}: {got} of {size} bytes after {timeout:.0f}s")
        if now > next_check:
            sut.check_alive()
            if sampler:
                sampler.sample()
            next_check = now + 0.05
        time.sleep(0.002)


def _warm_up(sut: SystemUnderTest, input_file: Path, size: int) -> bytes:
    """Line 0 goes through first, so the clock starts on a connected,
    ready pipeline for both systems."""
    warm = line(0, size)
    with open(input_file, "ab") as f:
        f.write(warm)
    _wait_drained(sut, sut.host_dir(HOST), len(warm), 60)
    return warm


def _cpu(sut: SystemUnderTest) -> Dict[str, float]:
    return {role: cpu_seconds(pid) for role, pid in sut.pids().items()}


def _rss(sut: SystemUnderTest) -> Metrics:
    return {f"rss_{role}": peak_rss_mb(pid) for role, pid in sut.pids().items()}


def _stop_and_verify(sut: SystemUnderTest, expected, host_dir: Path) -> None:
    sut.stop()
    _verify(sut, expected, host_dir)


def _verify(sut: SystemUnderTest, expected, host_dir: Path) -> None:
    error = verify(expected, host_dir)
    if error:
        raise BenchError(f"{sut.name}: output is not the input: {error}")


def burst(sut: SystemUnderTest, cache: Path, count: int, size: int,
          timeout: float) -> Metrics:
    """count x size-byte lines appended at once to a followed file."""
    data = cached_lines(cache, count, size)
    input_file = sut.workdir / "input.log"
    input_file.touch()
    sut.start_pipeline(input_file, HOST)
    warm = _warm_up(sut, input_file, size)
    cpu0 = _cpu(sut)
    t0 = time.monotonic()
    _append_file(input_file, data)
    t1 = _wait_drained(sut, sut.host_dir(HOST), len(warm) + count * size, timeout)
    cpu1 = _cpu(sut)
    metrics = _rss(sut)
    _stop_and_verify(sut, input_file, sut.host_dir(HOST))
    metrics.update(seconds=t1 - t0, lines_per_s=count / (t1 - t0),
                   mb_per_s=count * size / 1e6 / (t1 - t0))
    for role in cpu1:
        metrics[f"cpu_{role}"] = (cpu1[role] - cpu0[role]) / (count / 1e6)
    return metrics


def backlog(sut: SystemUnderTest, cache: Path, count: int, size: int,
            timeout: float) -> Metrics:
    """A file that already holds `count` lines when the daemons start."""
    data = cached_lines(cache, count, size)
    input_file = sut.workdir / "input.log"
    shutil.copyfile(data, input_file)
    t0 = time.monotonic()
    sut.start_pipeline(input_file, HOST)
    t1 = _wait_drained(sut, sut.host_dir(HOST), count * size, timeout)
    metrics = _rss(sut)
    _stop_and_verify(sut, input_file, sut.host_dir(HOST))
    metrics.update(seconds=t1 - t0, lines_per_s=count / (t1 - t0))
    return metrics


def latency(sut: SystemUnderTest, rate: int, seconds: float,
            size: int = 100) -> Metrics:
    """Lines written at a steady rate; each one's time from write() to its
    appearance in the output file."""
    input_file = sut.workdir / "input.log"
    input_file.touch()
    sut.start_pipeline(input_file, HOST)
    warm = _warm_up(sut, input_file, size)
    count = int(rate * seconds)
    written_at: List[float] = [0.0] * (count + 1)
    arrived_at: List[float] = [0.0] * (count + 1)
    tail = Tail(sut.host_dir(HOST), skip=len(warm))
    fd = os.open(input_file, os.O_WRONLY | os.O_APPEND)
    try:
        t0 = time.monotonic()
        deadline = t0 + seconds + 60
        written, arrived, next_check = 0, 0, 0.0
        while arrived < count:
            now = time.monotonic()
            due = min(count, int((now - t0) * rate))
            if due > written:
                os.write(fd, b"".join(writer_line(seq, size)
                                      for seq in range(written + 1, due + 1)))
                done = time.monotonic()
                written_at[written + 1:due + 1] = [done] * (due - written)
                written = due
            for seq in tail.read_seqs():
                arrived_at[seq] = time.monotonic()
                arrived += 1
            if now > next_check:
                if now > deadline:
                    raise BenchError(f"{sut.name}: {arrived} of {count} lines "
                                     f"arrived at {rate}/s")
                sut.check_alive()
                next_check = now + 0.5
            time.sleep(0.0005)
    finally:
        os.close(fd)
        tail.close()
    _stop_and_verify(sut, input_file, sut.host_dir(HOST))
    ms = sorted((a - w) * 1000 for a, w in zip(arrived_at[1:], written_at[1:]))
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1]}


def fanin(sut: SystemUnderTest, hosts: int, lines_per_host: int, size: int,
          per_message: int, timeout: float) -> Metrics:
    """Simulated publishers for `hosts` hosts, straight into the receiving
    side; lines/s from the first publish to the last line written."""
    sut.start_sink()
    sampler = FdSampler([sut.proc("consumer")])
    pub = subprocess.Popen(
        sut.publisher_argv(hosts, lines_per_host, size, per_message),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True)
    try:
        first = pub.stdout.readline()     # printed when it starts publishing
        if not first:
            raise BenchError(f"{sut.name} publisher: {pub.stderr.read()[-2000:]}")
        t0 = float(first)
        cpu0 = cpu_seconds(sut.proc("consumer").pid)
        expected = lines_per_host * size
        _wait_drained(sut, sut.host_dir(host_name(hosts)), expected, timeout, sampler)
        pending = [h for h in range(1, hosts) if output_size(sut.host_dir(host_name(h))) < expected]
        for h in pending:
            _wait_drained(sut, sut.host_dir(host_name(h)), expected, timeout, sampler)
        t1 = time.monotonic()
        sampler.sample()
        cpu1 = cpu_seconds(sut.proc("consumer").pid)
        published = pub.stdout.readline()   # printed when the last is sent
        if pub.wait(timeout) != 0 or not published:
            raise BenchError(f"{sut.name} publisher: {pub.stderr.read()[-2000:]}")
    finally:
        if pub.poll() is None:
            pub.kill()
        pub.wait()
    metrics = _rss(sut)
    sut.stop()
    for h in range(1, hosts + 1):
        _verify(sut, host_lines(h, lines_per_host, size), sut.host_dir(host_name(h)))
    total = hosts * lines_per_host
    metrics.update(lines_per_s=total / (t1 - t0), seconds=t1 - t0,
                   publish_lines_per_s=total / (float(published) - t0),
                   fds_consumer=sampler.peak["consumer"],
                   cpu_consumer=(cpu1 - cpu0) / (total / 1e6))
    return metrics
