"""Simulated syslog senders: RFC 5424 messages over one TCP connection to
the receiver, one per line, hosts taking turns as in data.fanin_messages;
octet-counted frames (rsyslog's imtcp) or one message per newline-ended
line (syslog-ng's network(), which on 3.38 does not detect octet
counting).  Run as `python -m bench.fanin_tcp`."""
from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import List

from .data import fanin_messages, host_name


def frames(hosts: int, lines: int, size: int, run: int, framing: str) -> bytes:
    out = []
    for h, block in fanin_messages(hosts, lines, size, run):
        prefix = b"<134>1 - %s bench - - - " % host_name(h).encode()
        for text in block.split(b"\n")[:-1]:
            msg = prefix + text
            out.append(b"%d %s" % (len(msg), msg) if framing == "octet" else msg + b"\n")
    return b"".join(out)


def argv(port: int, hosts: int, lines_per_host: int, size: int, run: int,
         framing: str) -> List[str]:
    """The command line of this publisher, for a system's publisher_argv."""
    return [sys.executable, "-m", "bench.fanin_tcp", "--port", str(port),
            "--hosts", str(hosts), "--lines", str(lines_per_host), "--size", str(size),
            "--run", str(run), "--framing", framing]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--hosts", type=int, required=True)
    ap.add_argument("--lines", type=int, required=True, help="lines per host")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--run", type=int, required=True, help="lines per turn")
    ap.add_argument("--framing", choices=("octet", "newline"), default="octet")
    args = ap.parse_args()
    payload = frames(args.hosts, args.lines, args.size, args.run, args.framing)
    with socket.create_connection(("127.0.0.1", args.port)) as s:
        print(time.monotonic(), flush=True)     # the runner's start of clock
        view = memoryview(payload)
        for off in range(0, len(payload), 1 << 20):
            s.sendall(view[off:off + (1 << 20)])
        print(time.monotonic(), flush=True)     # all handed to the kernel


if __name__ == "__main__":
    main()
