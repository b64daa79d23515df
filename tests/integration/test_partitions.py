"""One consumer serving several partitions: each host's lines arrive whole and
in order, whether every host has its own file or all share one."""

import asyncio

import nats
import pytest

from fshipper import wire
from harness import numbered_line, verdict, wait_until

HOSTS = [f"host{n:02d}.example.net" for n in range(12)]
LINES, PER_MESSAGE, PARTITIONS = 3000, 50, 4


def _publish_all(url: str) -> None:
    """Simulated producers, hosts taking turns; host h's lines are numbered
    h*LINES.. so every line names its host and place."""
    async def run():
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=128)
        offsets = dict.fromkeys(HOSTS, 0)
        for first in range(0, LINES, PER_MESSAGE):
            for h, host in enumerate(HOSTS):
                block = b"".join(numbered_line(h * LINES + n) for n in range(first, first + PER_MESSAGE))
                pos = wire.Position(f"origin-{h}", 0, offsets[host], offsets[host] + len(block))
                offsets[host] = pos.end
                await js.publish_async(wire.subject("shipper", host, PARTITIONS), block[:-1],
                                       headers=wire.headers(host, pos, False))
        await js.publish_async_completed()
        await nc.close()
    asyncio.run(run())


@pytest.mark.parametrize("per_host", [True, False])
def test_one_consumer_serving_four_partitions(pipeline, nats_server, tmp_path, per_host):
    assert len({wire.partition(h, PARTITIONS) for h in HOSTS}) == PARTITIONS  # all four busy
    single = tmp_path / "central" / "all.log.%Y%m%d"
    settings = {} if per_host else {"SHIPPER_OUTPUT": single, "SHIPPER_DIRECTORY": ""}
    p = pipeline(SHIPPER_PARTITIONS=PARTITIONS, SHIPPER_READ_PARTITIONS="0,1,2,3", **settings)
    p.consumer.start()
    wait_until(lambda: p.consumer.tail().count("consuming") == PARTITIONS, 20, p.logs)
    _publish_all(nats_server.url)
    total = len(HOSTS) * LINES * len(numbered_line(0))

    def output(host=None) -> bytes:
        if per_host:
            return p.output(host) if host else b"".join(p.output(h) for h in HOSTS)
        return b"".join(f.read_bytes() for f in sorted(single.parent.glob("all.log.*")))

    wait_until(lambda: len(output()) >= total, 60, p.logs)
    assert len(output()) == total
    everything = output()
    for h, host in enumerate(HOSTS):
        mine = output(host) if per_host else b"".join(
            line + b"\n" for line in everything.splitlines() if h * LINES <= int(line[5:14]) < (h + 1) * LINES)
        result = verdict(mine, range(h * LINES, (h + 1) * LINES))
        assert result == {"lines": LINES, "received": LINES, "lost": 0, "duplicated": 0, "reordered": 0}, (host, result)
        assert mine == b"".join(numbered_line(h * LINES + n) for n in range(LINES))
