"""The puller tells the consumer whether more is waiting, so a busy consumer
gathers batches into one commit and an idle one commits each batch at once."""

import asyncio

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from fshipper.puller import Puller


def test_busy_while_the_stream_holds_more_than_one_request_brings(nats_server):
    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
        await js.add_consumer("T", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT))
        for n in range(35):
            await js.publish("t.x", b"%d" % n)
        puller = Puller(nc, "T", "c", batch=10, max_bytes=1 << 20, wait=1.0)
        await puller.start()
        seen, busy = [], []
        while len(seen) < 35:
            msgs = await puller.fetch(5.0)
            seen += [int(m.data) for m in msgs]
            busy.append((len(seen), puller.busy()))
        assert seen == list(range(35))
        assert all(flag for count, flag in busy if count < 30), busy   # 5+ still in the stream
        assert busy[-1] == (35, False), busy                           # all handed out, none coming
        await js.publish("t.x", b"35")                                 # one more, alone
        assert [int(m.data) for m in await puller.fetch(5.0)] == [35]
        assert not puller.busy()
        await puller.stop()
        await nc.close()

    asyncio.run(scenario())
