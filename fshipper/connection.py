"""The NATS connection: servers, TLS, credentials, reconnecting forever, quiet logs."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client

from .config import Settings

log = logging.getLogger(__name__)


def redacted(url: str) -> str:
    """The URL without its password (nats://user:secret@h -> nats://user:***@h); a
    lone user name is a token, hidden as well."""
    parts = urlsplit(url if "://" in url else "nats://" + url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***" if parts.password is not None else "***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def servers(settings: Settings) -> str:
    """NATS_URL for messages: comma separated, passwords hidden."""
    return ", ".join(redacted(u) for u in settings.nats_url)


class _Reporter:
    """Logs each kind of connection trouble once until the connection is back."""

    def __init__(self) -> None:
        self.reported: set = set()
        self.closing = False

    async def error(self, e: Exception) -> None:
        kind = type(e).__name__
        if kind not in self.reported:
            self.reported.add(kind)
            log.warning("NATS: %s", str(e) or kind)

    async def disconnected(self) -> None:
        if self.closing:
            return
        if "disconnected" not in self.reported:
            self.reported.add("disconnected")
            log.warning("NATS: disconnected; reconnecting")

    async def reconnected(self, nc: Client) -> None:
        self.reported.clear()
        log.info("NATS: reconnected to %s", _where(nc))


def _where(nc: Client) -> str:
    url = nc.connected_url
    return f"{url.hostname}:{url.port}" if url else "?"


def tls_context(settings: Settings) -> Optional[ssl.SSLContext]:
    if not (settings.nats_ca or settings.nats_certificate):
        return None
    ctx = ssl.create_default_context(cafile=settings.nats_ca)
    if settings.nats_certificate:
        ctx.load_cert_chain(settings.nats_certificate, settings.nats_key)
    return ctx


async def connect(settings: Settings, pending_bytes: int = 8 * 1024 * 1024) -> Client:
    """Connect, retrying until a server answers; reconnect forever afterwards."""
    reporter = _Reporter()
    nc = Client()

    async def reconnected() -> None:
        await reporter.reconnected(nc)

    options = dict(
        servers=list(settings.nats_url),
        name=f"fshipper-{settings.name}" + (f" {settings.hostname}" if settings.hostname else ""),
        allow_reconnect=True,
        max_reconnect_attempts=-1,  # nats-py gives up after ~2 minutes by default
        reconnect_time_wait=1,
        connect_timeout=5,
        ping_interval=10,
        max_outstanding_pings=3,
        pending_size=pending_bytes,
        error_cb=reporter.error,
        disconnected_cb=reporter.disconnected,
        reconnected_cb=reconnected,
        inbox_prefix=settings.inbox_prefix,  # so that permissions can allow this client its replies only
    )
    ctx = tls_context(settings)
    if ctx is not None:
        options["tls"] = ctx
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    log.info("NATS: connecting to %s", servers(settings))
    await nc.connect(**options)
    reporter.reported.clear()
    nc._fshipper_reporter = reporter  # type: ignore[attr-defined]
    log.info("NATS: connected to %s (server %s)", _where(nc), nc.connected_server_version)
    return nc


async def close(nc: Optional[Client]) -> None:
    if nc is None or nc.is_closed:
        return
    reporter = getattr(nc, "_fshipper_reporter", None)
    if reporter is not None:
        reporter.closing = True
    try:
        await asyncio.wait_for(nc.close(), 5)
    except (asyncio.TimeoutError, nats.errors.Error):
        pass
