"""Host names come from subjects anyone with publish rights can choose."""

import asyncio
import os

import nats

from harness import wait_until

UNSAFE = ["a/b", "~root", "-rf", ".hidden", "..", "x/../../escape", "bad\\name"]


def test_unsafe_host_names_write_nothing_outside_and_good_hosts_carry_on(pipeline, nats_server, tmp_path):
    p = pipeline()
    p.consumer.start()
    p.wait_consuming()

    async def publish():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        sent = 0
        for n in range(3):
            for host in UNSAFE:
                try:
                    await js.publish(f"shipper.p0.{host}", b"evil %d" % n)
                    sent += 1
                except Exception:
                    pass  # the server refuses some subjects itself: nothing to write either
            await js.publish("shipper.p0.good-host", b"good %d" % n)
        await nc.close()
        return sent

    sent = asyncio.run(publish())
    assert sent >= 4 * 3  # most unsafe names do reach the consumer
    wait_until(lambda: p.output_files("good-host") and p.output("good-host").count(b"\n") == 3, 20, p.logs)
    assert p.output("good-host") == b"good 0\ngood 1\ngood 2\n"
    # Nothing but the good host's directory under the output, nothing anywhere else in tmp_path.
    # The good host's directory, and the partition ledgers (failover, on with SHIPPER_DIRECTORY)
    assert sorted(os.listdir(p.out)) == [".fshipper", "good-host"]
    everything = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert not [f for f in everything if b"evil" in open(f, "rb").read() and "jetstream" not in f
                and not f.endswith(".log")]
    wait_until(lambda: "refused a message" in p.consumer.tail(100_000), 10, p.logs)

    async def pending():
        nc = await nats.connect(nats_server.url)
        info = await nc.jetstream().consumer_info("SHIPPER", "SHIPPER_p0")
        await nc.close()
        return info.num_ack_pending + info.num_pending

    # Refused messages are terminated, not redelivered forever.
    wait_until(lambda: asyncio.run(pending()) == 0, 20, "refused messages to be terminated")
    p.consumer.stop()
    assert f"{sent} refused" in p.consumer.tail(100_000), p.consumer.tail()
