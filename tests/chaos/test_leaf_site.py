"""A far site: producers talk to a leaf node at the site, the consumer to the
hub; the link between the two drops for a while and comes back.

The hub is a nats-server with JetStream and a leafnode port; the site's server
has no JetStream and reaches the hub through a relay (the site's firewall and
WAN link) that the test cuts: either refusing (connections dropped, new ones
refused) or silently (nothing passes, nothing is closed).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Dict, List

import nats
import pytest

from faults import LINE_WIDTH, MemoryProbe, Relay, Writer, clean
from harness import NatsServer, free_port, verdict, wait_until

# Two hosts writing short lines at a steady rate, and a busy one whose file grows
# by many megabytes while the link is down (200-byte lines).
QUIET = ("web2.site.example.net", "db1.site.example.net")
BUSY = "web1.site.example.net"
RATE, BUSY_WIDTH = 1_000, 200
# Growth of a producer's VmRSS allowed while the link is down. What it may hold
# is bounded by settings: its publish window (SHIPPER_MAX_INFLIGHT 4 x
# SHIPPER_BATCH_BYTES 512 KiB = 2 MiB) and the client's buffer for it (twice
# the window and 1 MiB), 7 MiB in all, plus the interpreter's slack. The busy
# host's file grows by more than this during the cut (20 MB, long: 100 MB): a
# producer that held those lines in memory would fail.
RSS_GROWTH_KB = 16 * 1024


class FarSite:
    """The hub (JetStream, a leafnode port), the relay standing for the site's
    WAN link, and the site's leaf node (no JetStream) that producers talk to."""

    def __init__(self, root: Path) -> None:
        leaf_port = free_port()
        self.relay = Relay(leaf_port)
        # The hub advertises to leaf nodes the address they reach it at (here the
        # relay, in life the firewall's): else a leaf node learns the hub's own
        # leafnode address from it and, when that is reachable, goes round the cut.
        hub_conf = root / "hub.conf"
        hub_conf.write_text(f"server_name: hub\nleafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n"
                            f"  advertise: 127.0.0.1:{self.relay.port}\n}}\n")
        self.hub = NatsServer(root / "hub" / "store", config=str(hub_conf))
        site_conf = root / "site.conf"
        site_conf.write_text(f"server_name: site1\nleafnodes {{\n"
                             f'  remotes: [ {{ url: "nats-leaf://127.0.0.1:{self.relay.port}" }} ]\n}}\n')
        self.site = NatsServer(root / "site" / "store", config=str(site_conf), jetstream=False)

    def start(self) -> "FarSite":
        self.relay.start()
        self.hub.start()
        self.site.start()
        self.wait_linked()
        return self

    def stop(self) -> None:
        self.site.stop()
        self.relay.stop()
        self.hub.stop()

    def site_log(self) -> str:
        return self.site.log.read_text(errors="replace")

    def linked(self) -> bool:
        log = self.site_log()
        return log.rfind("Leafnode connection created") > log.rfind("Leafnode connection closed")

    def wait_linked(self) -> None:
        wait_until(self.linked, 20, lambda: f"the leaf node's link to the hub\n{self.site_log()[-3000:]}")

    def stored(self, stream: str = "SHIPPER") -> int:
        """The last sequence of the hub's stream: what came through the link."""

        async def ask() -> int:
            nc = await nats.connect(self.hub.url, connect_timeout=2, allow_reconnect=False)
            try:
                return (await nc.jetstream(timeout=5).stream_info(stream)).state.last_seq
            finally:
                await nc.close()

        return asyncio.run(ask())


@pytest.fixture
def far_site(tmp_path):
    site = FarSite(tmp_path).start()
    yield site
    site.stop()


def _memory(probe: MemoryProbe, cut: float, restored: float) -> Dict[str, int]:
    """VmRSS before the cut (its highest), at most while cut, at the end; VmHWM at the end (kB)."""
    return {"before": max(s[1] for s in probe.samples if s[0] < cut),
            "cut": max(s[1] for s in probe.samples if cut <= s[0] < restored),
            "end": probe.samples[-1][1], "hwm": probe.samples[-1][2]}


@pytest.mark.parametrize("drop", ["refused", "silent"])
def test_leaf_site_loses_its_hub_link(tmp_path, far_site, pipeline, chaos, drop):
    """Three hosts write numbered lines at a steady rate; their producers publish
    to the site's leaf node only. The link to the hub is cut for 10 s (long: 60 s)
    and restored: `refused`, its connections dropped and new ones refused;
    `silent`, nothing passes and nothing says so (the leaf node's connection
    stays open). Every line must arrive once and in order per host, and each
    producer's memory stay flat while its lines pile up in its file."""
    outage, megabytes = chaos.pick(10, 60), chaos.pick(20, 100)
    cut_at = chaos.pick(5.0, 10.0) + chaos.rng.uniform(0, 2)
    duration = cut_at + outage + chaos.pick(5.0, 20.0)
    busy_rate = megabytes * 1_000_000 / BUSY_WIDTH / outage
    rates = {BUSY: (busy_rate, BUSY_WIDTH), **{host: (RATE, LINE_WIDTH) for host in QUIET}}
    print(f"link cut {cut_at:.1f}s after the first line, for {outage}s; {duration:.0f}s of lines: "
          f"{BUSY} {busy_rate:.0f}/s of {BUSY_WIDTH} bytes, {', '.join(QUIET)} {RATE}/s of {LINE_WIDTH} bytes")
    central = pipeline(root=tmp_path / "central", NATS_URL=far_site.hub.url)
    central.consumer.start()
    central.wait_consuming()
    hosts = [pipeline(root=tmp_path / host, NATS_URL=far_site.site.url, host=host) for host in rates]
    for p in hosts:
        p.log.touch()
        p.producer.start()
    for p in hosts:
        wait_until(lambda: "NATS: connected" in p.producer.tail(), 30, lambda: f"the producer\n{p.logs()}")

    def shipped() -> int:
        """Bytes at the hub's consumer (the output is not read: the busy host's is large)."""
        return sum(f.stat().st_size for p in hosts for f in central.output_files(p.host))

    def logs() -> str:
        return "".join(f"=== {p.host}\n{p.producer.tail()}\n" for p in hosts) + \
            f"=== central\n{central.consumer.tail()}\n=== site\n{far_site.site_log()[-3000:]}"

    probes = [MemoryProbe(p.producer.proc.pid, every=0.25) for p in hosts]
    writers = []
    for p in hosts:
        rate, width = rates[p.host]
        writers.append(Writer(p.log, int(duration * rate), rate, width=width))
    for thread in probes + writers:
        thread.start()
    time.sleep(cut_at)
    far_site.relay.cut(silent=drop == "silent")
    cut, at_cut = time.monotonic(), [w.written for w in writers]
    if drop == "refused":
        wait_until(lambda: not far_site.linked(), 10, lambda: f"the site to see its link gone\n{logs()}")
    time.sleep(2)   # what was on its way at the cut has landed
    stalled = far_site.stored()
    time.sleep(max(0.0, cut + outage - time.monotonic()))
    through = far_site.stored() - stalled
    grown = [(w.written - n) * w.width for w, n in zip(writers, at_cut)]
    behind = sum(w.written * w.width for w in writers)
    far_site.relay.restore()
    restored = time.monotonic()
    far_site.wait_linked()
    caught_up = wait_until(lambda: shipped() >= behind and time.monotonic(), 120,
                           lambda: f"the lines written before the link came back\n{logs()}")
    for w in writers:
        w.join()
        w.check()
    everything = sum(w.written * w.width for w in writers)
    wait_until(lambda: shipped() >= everything, 120, lambda: f"every line\n{logs()}", interval=0.25)
    time.sleep(1.5)   # late duplicates would show now
    for probe in probes:
        probe.stop()

    results = {p.host: verdict(central.output(p.host), w.numbers()) for p, w in zip(hosts, writers)}
    result = {k: sum(r[k] for r in results.values()) for k in ("lines", "lost", "duplicated", "reordered")}
    memory: List[Dict[str, int]] = [_memory(probe, cut, restored) for probe in probes]
    for p, m in zip(hosts, memory):
        print(f"{p.host}: producer VmRSS {m['before'] / 1024:.1f} MiB before the cut, at most "
              f"{m['cut'] / 1024:.1f} MiB while cut, {m['end'] / 1024:.1f} MiB at the end; "
              f"VmHWM {m['hwm'] / 1024:.1f} MiB")
    chaos.record(f"leaf site: hub link cut {outage}s ({drop})", result,
                 f"{len(hosts)} hosts to a leaf node, one writing {megabytes} MB while cut; the lines written "
                 f"before the restore all written at the hub {caught_up - restored:.1f}s after it; each "
                 "producer's VmRSS before the cut/at most while cut/at the end (VmHWM) in MiB: " + ", ".join(
                     "/".join(f"{m[k] / 1024:.1f}" for k in ("before", "cut", "end")) + f" ({m['hwm'] / 1024:.1f})"
                     for m in memory))
    assert clean(result), chaos.why({"all": result, **results}, logs())
    assert through == 0, f"{through} messages reached the hub's stream while the link was cut\n{logs()}"
    if drop == "refused":
        assert far_site.relay.connections >= 2, f"the leaf node never came back through the relay\n{logs()}"
    assert hosts[0].host == BUSY and grown[0] > RSS_GROWTH_KB * 1024, (
        f"the busy host's file grew only {grown[0]} bytes while cut: the memory bound was not put to the test")
    for p, m in zip(hosts, memory):
        assert m["cut"] - m["before"] < RSS_GROWTH_KB, (
            f"{p.host}: producer VmRSS grew from {m['before']} to {m['cut']} kB while the link was cut")
