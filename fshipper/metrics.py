"""Prometheus metrics at http://SHIPPER_METRICS_LISTEN/metrics (off by default).

Served by a small HTTP handler on the daemon's own asyncio loop rather than by
prometheus_client's start_http_server, which runs a thread: the values are
read from the daemon's counters on the loop that changes them, so a scrape
never sees one half-updated, and the endpoint stops with the daemon. The
daemons count with plain integers; this module turns them into metric
families only when scraped, so shipping pays nothing for metrics.

prometheus_client is imported only when metrics are on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable, List, Optional, Tuple

from . import __version__

log = logging.getLogger(__name__)

# (name, "counter" or "gauge", help, value); counters are named without _total
Sample = Tuple[str, str, str, float]

READ_TIMEOUT = 5.0     # seconds a client has to send its request
MAX_REQUEST = 16384    # bytes of request line and headers
MAX_CLIENTS = 16       # connections served at once; more are closed at once


class _Collector:
    def __init__(self, role: str, collect: Callable[[], Iterable[Sample]]) -> None:
        self.role = role
        self._collect = collect

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        info = GaugeMetricFamily("fshipper_info", "fshipper version and role", labels=["version", "role"])
        info.add_metric([__version__, self.role], 1)
        yield info
        for name, kind, text, value in self._collect():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, text, value=value)


class MetricsServer:
    def __init__(self, role: str, collect: Callable[[], Iterable[Sample]]) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(role, collect))
        self.server: Optional[asyncio.AbstractServer] = None
        self.listen: Optional[Tuple[str, int]] = None
        self.clients = 0

    async def start(self, listen: Tuple[str, int]) -> None:
        """Listen; a port that cannot be had is logged, and shipping goes on without metrics."""
        try:
            self.server = await asyncio.start_server(self._handle, listen[0], listen[1], limit=MAX_REQUEST)
        except OSError as e:
            log.error("metrics: cannot listen on %s:%d (%s); running without metrics", listen[0], listen[1],
                      e.strerror or e)
            return
        self.listen = listen
        log.info("metrics: serving http://%s:%d/metrics", listen[0], listen[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        self.listen = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return
            writer.write(self._answer(head.split(b"\r\n", 1)[0].split()))
            await writer.drain()
        except OSError:
            pass
        finally:
            self.clients -= 1
            writer.close()

    def _answer(self, request: List[bytes]) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if len(request) != 3 or request[0] not in (b"GET", b"HEAD"):
            return _response(b"405 Method Not Allowed", "text/plain", b"GET /metrics\n")
        if request[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
            return _response(b"404 Not Found", "text/plain", b"see /metrics\n")
        body = generate_latest(self.registry)
        return _response(b"200 OK", CONTENT_TYPE_LATEST, b"" if request[0] == b"HEAD" else body, len(body))


def _response(status: bytes, content_type: str, body: bytes, length: Optional[int] = None) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type.encode() + b"\r\nContent-Length: "
            + str(len(body) if length is None else length).encode() + b"\r\nConnection: close\r\n\r\n" + body)
