"""Where fshipper's time goes: py-spy (or perf) on the producer and consumer
during one burst or one steady-rate run, then the top functions.

    pip install py-spy        # into the environment; a profiling tool only
    python -m bench.profile burst --lines 200000 --size 1000
    python -m bench.profile latency --rate 1000 --seconds 10
    python -m bench.profile burst --perf      # perf record of all three processes
    python -m bench.profile fanin --hosts 1000 --lines 2000000   # the consumer only

Sampling starts after the warm-up line, so start-up is not in the profile
(in the fan-in, which has none, once the consumer is started: its start-up
waits in epoll, which is left out).
py-spy runs with --nonblocking (it does not stop the process to sample),
and samples where a thread waits in epoll or for work are left out.
"""
from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

from . import scenarios
from .sut_fshipper import Fshipper

IDLE = ("EpollSelector.select", "_worker (")   # waiting, not working


def top(path: Path, count: int) -> str:
    """The functions of a py-spy raw profile with the most samples, self and inclusive."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r" \((?:.*/)?([^/]+:\d+)\)", r" (\1)", f) for f in stack.split(";")]
        if frames[-1].startswith(IDLE):
            continue
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    out = [f"{path.name}: {total} samples", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(count)]
    out += ["inclusive:"] + [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(count + 12)]
    return "\n".join(out)


def main(argv: List[str] = sys.argv[1:]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=("burst", "latency", "fanin"))
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=1000, help="fan-in: simulated hosts")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--perf", action="store_true", help="perf record (with the server) instead of py-spy")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fshipper-profile")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    samplers: List[subprocess.Popen] = []
    warm_up = scenarios._warm_up

    def sample(sut, roles):
        for role in roles:
            pid = str(sut.proc(role).pid)
            argv = (["perf", "record", "-F", "499", "-g", "-p", pid, "-o", str(args.out / f"{role}.perf")]
                    if args.perf else
                    [spy, "record", "--nonblocking", "-r", "200", "-f", "raw", "-p", pid,
                     "-o", str(args.out / f"{role}.txt")])
            samplers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def sampled_warm_up(sut, input_file, size):
        warm = warm_up(sut, input_file, size)
        sample(sut, ("producer", "consumer", "server") if args.perf else ("producer", "consumer"))
        return warm

    class SampledSink(Fshipper):
        def start_sink(self) -> None:
            super().start_sink()
            sample(self, ("consumer", "server") if args.perf else ("consumer",))

    scenarios._warm_up = sampled_warm_up
    sut = (SampledSink if args.scenario == "fanin" else Fshipper)(args.out / "run")
    roles = ("consumer",) if args.scenario == "fanin" else ("producer", "consumer")
    try:
        if args.scenario == "fanin":
            metrics = scenarios.fanin(sut, args.hosts, args.lines // args.hosts, 100, 100, 600)
        elif args.scenario == "burst":
            cache = args.out / "cache"
            metrics = scenarios.burst(sut, cache, args.lines, args.size, 600)
        else:
            metrics = scenarios.latency(sut, args.rate, args.seconds)
    finally:
        for sampler in samplers:
            sampler.send_signal(signal.SIGINT)
        for sampler in samplers:
            sampler.wait(60)
        sut.stop()
    print(", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if args.perf:
        print(f"perf report -i {args.out}/<role>.perf --no-children --sort dso,symbol")
    else:
        for role in roles:
            print(top(args.out / f"{role}.txt", 12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
