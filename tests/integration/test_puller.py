"""The puller tells the consumer whether more is waiting, so a busy consumer
gathers batches into one commit and an idle one commits each batch within a moment."""

import asyncio
import json

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


def test_pinned_pullers_one_gets_the_messages_the_other_takes_over_and_the_first_hears_423(nats_server):
    """The priority-group protocol as ownership.Claim reads it, on the real server."""
    from fshipper.ownership import Claim
    from fshipper.streams import GROUP

    timeout = 2.0

    async def drain(puller, seconds):
        got, deadline = [], asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            try:
                got += [int(m.data) for m in await puller.fetch(0.3)]
            except nats.errors.TimeoutError:
                pass
        return got

    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
        config = dict(ConsumerConfig(durable_name="c", name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
                                     filter_subject="t.>").as_dict(),
                      priority_groups=[GROUP], priority_policy="pinned_client",
                      priority_timeout=int(timeout * 1e9))
        answer = await nc.request("$JS.API.CONSUMER.CREATE.T.c.t.>",
                                  json.dumps({"stream_name": "T", "config": config}).encode())
        assert b'"error"' not in answer.data, answer.data
        claims = [Claim(timeout), Claim(timeout)]
        pullers = [Puller(nc, "T", "c", batch=10, max_bytes=1 << 20, wait=0.25, claim=c) for c in claims]
        for p in pullers:
            await p.start()
        for n in range(5):
            await js.publish("t.x", b"%d" % n)
        first = await drain(pullers[0], 0.5)
        assert first == [0, 1, 2, 3, 4] and claims[0].pin
        assert not claims[0].writable()                  # the guard after a new pin
        await drain(pullers[0], timeout / 2)
        assert claims[0].writable()                       # renewed by its requests
        assert await drain(pullers[1], 0.5) == [] and claims[1].pin is None   # the standby gets nothing
        # The owner stops pulling: after the timeout the standby is pinned and gets
        # what was not acknowledged (no ack_wait to wait for: nothing was delivered to it).
        for n in range(5, 8):
            await js.publish("t.x", b"%d" % n)
        second = await drain(pullers[1], timeout + 2)
        assert second[:3] == [5, 6, 7] and claims[1].pin and claims[1].pin != claims[0].pin
        assert not claims[0].writable()                   # its lease ran out meanwhile
        epoch = claims[0].epoch
        assert await drain(pullers[0], 0.5) == []
        assert claims[0].pin is None and claims[0].epoch != epoch   # told 423
        for p in pullers:
            await p.stop()
        await nc.close()

    asyncio.run(scenario())
