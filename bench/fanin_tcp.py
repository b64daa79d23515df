"""Simulated rsyslog senders: RFC 5424 octet-counted frames over one TCP
connection to the receiver, one frame per line, hosts taking turns as in
data.fanin_messages.  Run as `python -m bench.fanin_tcp`."""
from __future__ import annotations

import argparse
import socket
import time

from .data import fanin_messages, host_name


def frames(hosts: int, lines: int, size: int, run: int) -> bytes:
    out = []
    for h, block in fanin_messages(hosts, lines, size, run):
        prefix = b"<134>1 - %s bench - - - " % host_name(h).encode()
        for text in block.split(b"\n")[:-1]:
            msg = prefix + text
            out.append(b"%d %s" % (len(msg), msg))
    return b"".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--hosts", type=int, required=True)
    ap.add_argument("--lines", type=int, required=True, help="lines per host")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--run", type=int, required=True, help="lines per turn")
    args = ap.parse_args()
    payload = frames(args.hosts, args.lines, args.size, args.run)
    with socket.create_connection(("127.0.0.1", args.port)) as s:
        print(time.monotonic(), flush=True)     # the runner's start of clock
        view = memoryview(payload)
        for off in range(0, len(payload), 1 << 20):
            s.sendall(view[off:off + (1 << 20)])
        print(time.monotonic(), flush=True)     # all handed to the kernel


if __name__ == "__main__":
    main()
