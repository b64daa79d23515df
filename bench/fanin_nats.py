"""Simulated fshipper producers: each host's lines published straight into
JetStream with fshipper's wire format (subject, payload, position headers),
hosts taking turns as in data.fanin_messages.  Every publish is confirmed by
the server, a bounded number in flight.  Run as `python -m bench.fanin_nats`
with the interpreter that has fshipper and nats-py installed."""
from __future__ import annotations

import argparse
import asyncio
import time

import nats
import nats.js.errors

from fshipper import wire

from .data import fanin_messages, host_name

IN_FLIGHT = 256


def messages(subject: str, hosts: int, lines: int, size: int, run: int) -> list:
    """(subject, payload, headers) in publishing order; each simulated host
    is one producer (origin) whose file offsets the positions follow."""
    offsets = [0] * (hosts + 1)
    out = []
    for h, block in fanin_messages(hosts, lines, size, run):
        host = host_name(h)
        start, end = offsets[h], offsets[h] + len(block)
        offsets[h] = end
        pos = wire.Position(f"sim{h:06d}", 0, start, end)
        # whole lines: the payload is the block without its final newline
        out.append((wire.subject(subject, host, 0), block[:-1],
                    wire.headers(host, pos, False)))
    return out


async def publish(url: str, batch: list) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=IN_FLIGHT)
    deadline = time.monotonic() + 30
    while True:     # the consumer creates the stream as it starts
        try:
            await js.find_stream_name_by_subject(batch[0][0])
            break
        except nats.js.errors.NotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    # A warm-up line through, as in every other scenario: the consumer is then
    # connected and owns its partition (the guard after a pin has passed).
    ack = await js.publish(wire.subject(batch[0][0].split(".")[0], "warm-up", 0), b"warm-up")
    while (await js.consumer_info(ack.stream, f"{ack.stream}_p0")).ack_floor.stream_seq < ack.seq:
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer did not write the warm-up line")
        await asyncio.sleep(0.02)
    print(time.monotonic(), flush=True)     # the runner's start of clock
    futures = [await js.publish_async(s, p, headers=h) for s, p, h in batch]
    await asyncio.wait_for(js.publish_async_completed(), 120)
    for f in futures:
        f.result()          # raises if the server refused one
    print(time.monotonic(), flush=True)     # all confirmed
    await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--subject", required=True)
    ap.add_argument("--hosts", type=int, required=True)
    ap.add_argument("--lines", type=int, required=True, help="lines per host")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--run", type=int, required=True, help="lines per message")
    args = ap.parse_args()
    batch = messages(args.subject, args.hosts, args.lines, args.size, args.run)
    asyncio.run(publish(args.url, batch))


if __name__ == "__main__":
    main()
