"""nats-py's protocol parser with one copy of each payload instead of three.

nats-py's Parser appends every read to a bytearray, then cuts each payload out
of it with `bytes(buf[a:b])`: three copies of every byte the server sends. A
copy of a large payload costs about 0.2 s per GB on the machines measured
(bench/README.md), so a consumer that receives batches of 512 KiB spent about
0.8 s per GB in the parser alone. This one reads the control lines where they
are and takes each payload out of the reads in one copy; a payload that spans
reads is kept as views of them until it is complete.

It replaces the client's parser (`Client._ps`, not public API); the protocol
is that of nats-py's parser, which tests/unit/test_protocol.py compares it with
on the same bytes cut at every place.
"""

from __future__ import annotations

import json
import re
from typing import List, Optional

from nats.errors import ProtocolError
from nats.protocol import parser as _nats

# nats-py's patterns, anchored where matching starts rather than at the
# start of the read (\A does not match at a `pos` argument).
MSG_RE = re.compile(rb"MSG\s+([^\s]+)\s+([^\s]+)\s+(([^\s]+)[^\S\r\n]+)?(\d+)\r\n")
HMSG_RE = re.compile(rb"HMSG\s+([^\s]+)\s+([^\s]+)\s+(([^\s]+)[^\S\r\n]+)?([\d]+)\s+(\d+)\r\n")
OK_RE = re.compile(rb"\+OK\s*\r\n")
ERR_RE = re.compile(rb"-ERR\s+('.+')?\r\n")
PING_RE = re.compile(rb"PING\s*\r\n")
PONG_RE = re.compile(rb"PONG\s*\r\n")
INFO_RE = re.compile(rb"INFO\s+([^\r\n]+)\r\n")

CRLF = b"\r\n"
MAX_CONTROL_LINE = _nats.MAX_CONTROL_LINE_SIZE


def _take(parts: List[memoryview], n: int) -> bytes:
    """The first `n` bytes of `parts`, in one copy; taken off them."""
    out = []
    while n:
        part = parts[0]
        if len(part) <= n:
            out.append(parts.pop(0))
            n -= len(part)
        else:
            out.append(part[:n])
            parts[0] = part[n:]
            n = 0
    return bytes(out[0]) if len(out) == 1 else b"".join(out)


class Parser(_nats.Parser):
    def reset(self) -> None:
        super().reset()
        self.parts: List[memoryview] = []   # the payload so far, while it spans reads
        self.have = 0

    async def parse(self, data: bytes = b"") -> None:
        pos, end = 0, len(data)
        if self.parts:   # a payload that spans reads
            self.parts.append(memoryview(data))
            self.have += end
            if self.have < self.needed + len(CRLF):
                return
            pos = end - (self.have - self.needed - len(CRLF))   # where the next line starts
            parts, self.parts, self.have = self.parts, [], 0
            hdr = _take(parts, self.header_needed) if self.header_needed else None
            await self._deliver(_take(parts, self.needed - self.header_needed), hdr)
        elif self.buf:   # a control line cut by the read: completed from this one
            kept = len(self.buf)
            head = bytes(self.buf) + data[:MAX_CONTROL_LINE]
            self.buf = bytearray()
            nxt, call = self._line(head, 0)
            if nxt < 0:
                self.buf = bytearray(head if end <= MAX_CONTROL_LINE else head[:kept] + data)
                return
            pos = nxt - kept
            if call is not None:
                await call()
        while pos < end:
            if self.state == _nats.AWAITING_MSG_PAYLOAD:
                stop = pos + self.needed
                if stop + len(CRLF) > end:
                    self.parts, self.have = [memoryview(data)[pos:]], end - pos
                    return
                hdr = data[pos:pos + self.header_needed] if self.header_needed else None
                payload = data[pos + self.header_needed:stop]
                pos = stop + len(CRLF)
                await self._deliver(payload, hdr)
                continue
            nxt, call = self._line(data, pos)
            if nxt < 0:
                self.buf = bytearray(data[pos:])
                return
            pos = nxt
            if call is not None:
                await call()

    async def _deliver(self, payload: bytes, hdr: Optional[bytes]) -> None:
        self.state, self.header_needed = _nats.AWAITING_CONTROL_LINE, 0
        arg = self.msg_arg
        await self.nc._process_msg(arg["sid"], arg["subject"], arg["reply"], payload, hdr)

    def _line(self, data: bytes, pos: int):
        """The control line at `pos`: (where the next thing starts, a call to
        await or None); (-1, None) if the line is not all there yet."""
        m = HMSG_RE.match(data, pos) or MSG_RE.match(data, pos)
        if m:
            try:
                groups = m.groups()
                self.msg_arg["subject"] = groups[0]
                self.msg_arg["sid"] = int(groups[1])
                self.msg_arg["reply"] = groups[3] or b""
                if len(groups) == 6:
                    self.header_needed = int(groups[4])
                    self.needed = int(groups[5])
                else:
                    self.needed = int(groups[4])
            except Exception:
                raise ProtocolError("nats: malformed MSG")
            self.state = _nats.AWAITING_MSG_PAYLOAD
            return m.end(), None
        m = OK_RE.match(data, pos)
        if m:
            return m.end(), None
        m = ERR_RE.match(data, pos)
        if m:
            err = m.group(1).decode().lower() if m.group(1) else ""
            return m.end(), lambda: self.nc._process_err(err)
        m = PING_RE.match(data, pos)
        if m:
            return m.end(), self.nc._process_ping
        m = PONG_RE.match(data, pos)
        if m:
            return m.end(), self.nc._process_pong
        m = INFO_RE.match(data, pos)
        if m:
            info = json.loads(m.group(1).decode())
            return m.end(), lambda: self.nc._process_info(info)
        if len(data) - pos < MAX_CONTROL_LINE and data.find(CRLF, pos) >= 0:
            raise ProtocolError("nats: unknown protocol")
        return -1, None
