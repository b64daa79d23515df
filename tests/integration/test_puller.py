"""The puller tells the consumer whether more is waiting, so a busy consumer
gathers batches into one commit and an idle one commits each batch within a moment."""

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
        puller = Puller(nc, "T", "c", batch=10, max_bytes=1 << 20, wait=0.5)
        await puller.start()
        seen, busy = [], []
        while len(seen) < 35:
            msgs = await puller.fetch(5.0)
            seen += [int(m.data) for m in msgs]
            busy.append((len(seen), puller.busy()))
        assert seen == list(range(35))
        assert all(flag for count, flag in busy if count < 30), busy   # 5+ still in the stream
        await asyncio.sleep(0.6)       # the open request (5 of 10 delivered) expires
        assert not puller.busy()       # all handed out, nothing in the stream, none coming
        await js.publish("t.x", b"35")
        assert [int(m.data) for m in await puller.fetch(5.0)] == [35]
        assert puller.busy()           # a request is delivering: more may follow at once
        await asyncio.sleep(0.6)
        assert not puller.busy()
        await puller.stop()
        await nc.close()

    asyncio.run(scenario())
