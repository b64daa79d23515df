"""fshipper.protocol.Parser against nats-py's own parser: the same calls for the
same bytes, however the reads cut them."""

import asyncio
import json
import random

import pytest
from hypothesis import given, settings, strategies as st
from nats.errors import ProtocolError
from nats.protocol.parser import Parser as NatsParser

from fshipper.protocol import Parser


class Recorder:
    """What a parser hands the client."""

    def __init__(self) -> None:
        self.calls = []

    async def _process_msg(self, sid, subject, reply, payload, hdr):
        assert isinstance(payload, bytes) and (hdr is None or isinstance(hdr, bytes))
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), payload, hdr))

    async def _process_ping(self):
        self.calls.append(("ping",))

    async def _process_pong(self):
        self.calls.append(("pong",))

    async def _process_info(self, info):
        self.calls.append(("info", json.dumps(info, sort_keys=True)))

    async def _process_err(self, err):
        self.calls.append(("err", err))


def hmsg(subject: bytes, sid: int, reply: bytes, hdr: bytes, payload: bytes) -> bytes:
    head = b"HMSG %s %d %s%d %d\r\n" % (subject, sid, reply + b" " if reply else b"", len(hdr), len(hdr) + len(payload))
    return head + hdr + payload + b"\r\n"


def msg(subject: bytes, sid: int, reply: bytes, payload: bytes) -> bytes:
    return b"MSG %s %d %s%d\r\n" % (subject, sid, reply + b" " if reply else b"", len(payload)) + payload + b"\r\n"


HDR = b"NATS/1.0\r\nFshipper-Pos: a1b2 0 0-120\r\nNats-Msg-Id: web1:a1b2:0:0-120\r\n\r\n"
STATUS = b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1000\r\n\r\n"


def stream(seed: int) -> bytes:
    rnd = random.Random(seed)
    out = [b'INFO {"server_id":"x","max_payload":1048576}\r\n', b"PING\r\n", b"+OK\r\n"]
    for i in range(rnd.randint(1, 30)):
        kind = rnd.random()
        payload = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 1, 2, 100, 3000, 70000])))
        payload = payload.replace(b"\r\n", b"\n\r")   # any bytes, CRLF included, below
        if rnd.random() < 0.3:
            payload += b"\r\nMSG x 1 2\r\n"             # protocol-looking bytes inside a payload
        reply = rnd.choice([b"", b"$JS.ACK.S.C.1.%d.%d.1733190000000000000.0" % (i, i)])
        if kind < 0.5:
            out.append(hmsg(b"shipper.p0.web%d" % i, 7, reply, HDR, payload))
        elif kind < 0.7:
            out.append(msg(b"_INBOX.abc.%d" % i, 3, reply, payload))
        elif kind < 0.8:
            out.append(hmsg(b"_INBOX.abc.1", 3, b"", STATUS, b""))
        else:
            out.append(rnd.choice([b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Stale Connection'\r\n"]))
    out.append(hmsg(b"shipper.p0.last", 7, b"", HDR, b"the end"))
    return b"".join(out)


async def feed(parser_class, data: bytes, cuts) -> list:
    rec = Recorder()
    parser = parser_class(rec)
    start = 0
    for end in list(cuts) + [len(data)]:
        await parser.parse(data[start:end])
        start = end
    return rec.calls


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_the_same_calls_as_nats_py_however_the_reads_are_cut(seed, data):
    raw = stream(seed)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=40))))
    expected = run(feed(NatsParser, raw, []))
    assert run(feed(Parser, raw, cuts)) == expected
    assert expected[-1] == ("msg", 7, b"shipper.p0.last", b"", b"the end", HDR)


def test_every_single_cut_of_a_small_stream():
    raw = hmsg(b"a.b", 1, b"r", HDR, b"x" * 50) + b"PING\r\n" + msg(b"c", 2, b"", b"yz") + hmsg(b"d", 3, b"", STATUS, b"")
    expected = run(feed(NatsParser, raw, []))
    for cut in range(1, len(raw)):
        assert run(feed(Parser, raw, [cut])) == expected, cut
    assert run(feed(Parser, raw, range(1, len(raw)))) == expected   # a byte at a time


def test_a_large_payload_over_many_reads_is_one_message():
    payload = bytes(range(256)) * 4096   # 1 MiB
    raw = hmsg(b"shipper.p0.web1", 5, b"$JS.ACK.x", HDR, payload) + b"PONG\r\n"
    calls = run(feed(Parser, raw, range(32768, len(raw), 32768)))
    assert calls == [("msg", 5, b"shipper.p0.web1", b"$JS.ACK.x", payload, HDR), ("pong",)]


def test_unknown_protocol_is_an_error_as_in_nats_py():
    with pytest.raises(ProtocolError):
        run(feed(Parser, b"HELLO there\r\n", []))
    with pytest.raises(ProtocolError):
        run(feed(NatsParser, b"HELLO there\r\n", []))
