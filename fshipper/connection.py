"""The NATS connection: servers, TLS, credentials, reconnecting forever, quiet logs.

TLS is never downgraded. nats-py upgrades a connection to TLS only when the
server's first message (INFO, always in plain text) asks for it; if it does not
(a server without TLS, or someone in between who removed the request), nats-py
carries on in plain text and sends CONNECT with the credentials. When TLS is
asked for (Settings.tls_required), the client below refuses to send CONNECT on
a connection that is not TLS: the attempt fails, is logged, and retried like
any other failed connection, so a daemon recovers once the server does TLS.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Callable, Optional

import nats
import nats.errors
from nats.aio.client import Client

from . import protocol
from .config import ConfigError, Loaded, Settings, redact_url

log = logging.getLogger(__name__)


class TlsRequiredError(nats.errors.Error):
    """The server did not start TLS where TLS is required; nothing was sent."""


class _TlsOnlyClient(Client):
    """nats-py's client that sends CONNECT only over TLS.

    `_connect_command` is where nats-py builds CONNECT, right before writing it,
    after any TLS upgrade, on first connects and reconnects alike; it is not public
    API, so tests/integration/test_trust.py checks this against a server that
    does not ask for TLS.
    """

    def _connect_command(self) -> bytes:
        if not _on_tls(self):
            server = self._current_server.uri if self._current_server else None
            where = f"{server.hostname}:{server.port}" if server else "the server"
            raise TlsRequiredError(
                f"{where} did not start TLS (its INFO does not ask for it) and TLS is required "
                "(tls:// in NATS_URL, NATS_CA or NATS_CERTIFICATE): nothing sent, not even CONNECT; "
                "retrying; check the server's tls block, or whether something in between strips TLS")
        return super()._connect_command()


def _on_tls(nc: Client) -> bool:
    writer = getattr(nc._transport, "_io_writer", None)   # TCP: the stream after any upgrade
    if writer is not None:
        return writer.get_extra_info("ssl_object") is not None
    # WebSocket: nats-py opens wss:// with TLS and never upgrades ws://
    return nc._current_server is not None and nc._current_server.uri.scheme == "wss"


def servers(settings: Settings) -> str:
    """NATS_URL for messages: comma separated, passwords hidden."""
    return redact_url(", ".join(settings.nats_url))


class _Reporter:
    """Logs each kind of connection trouble once until the connection is back."""

    def __init__(self, on_change: Callable[[Optional[str]], None]) -> None:
        self.reported: set = set()
        self.closing = False
        self.on_change = on_change  # told each trouble's text, and None once connected

    async def error(self, e: Exception) -> None:
        kind = type(e).__name__
        self.on_change(f"NATS: {str(e) or kind}")
        if kind not in self.reported:
            self.reported.add(kind)
            level = logging.ERROR if isinstance(e, TlsRequiredError) else logging.WARNING
            log.log(level, "NATS: %s", str(e) or kind)

    async def disconnected(self) -> None:
        if self.closing:
            return
        self.on_change("NATS: disconnected")
        if "disconnected" not in self.reported:
            self.reported.add("disconnected")
            log.warning("NATS: disconnected; reconnecting")

    async def reconnected(self, nc: Client) -> None:
        self.reported.clear()
        self.on_change(None)
        log.info("NATS: reconnected to %s", _where(nc))


def _where(nc: Client) -> str:
    url = nc.connected_url
    return f"{url.hostname}:{url.port}" if url else "?"


def tls_context(settings: Settings) -> Optional[ssl.SSLContext]:
    """The context to verify servers with (the system's CAs unless NATS_CA), with the
    client certificate if any; None when TLS is not required (nats-py then makes one
    itself if a server asks for TLS)."""
    if not settings.tls_required:
        return None
    ctx = ssl.create_default_context(cafile=settings.nats_ca)
    if settings.nats_certificate:
        # An encrypted key would make OpenSSL prompt on the terminal: fail instead.
        ctx.load_cert_chain(settings.nats_certificate, settings.nats_key, password=lambda: "")
    return ctx


def check_tls(loaded: Loaded) -> None:
    """Fail at start (exit 78), not at each connection attempt, when the certificate,
    key or CA cannot be used: retrying never makes that better."""
    try:
        tls_context(loaded.settings)
    except (ssl.SSLError, OSError) as e:
        names = [f"{name} ({loaded.sources[name]})" for name in ("NATS_CA", "NATS_CERTIFICATE", "NATS_KEY")
                 if loaded.texts[name]]
        raise ConfigError(f"{', '.join(names)}: cannot be used for TLS: "
                          f"{getattr(e, 'reason', None) or e}") from None


async def connect(settings: Settings, pending_bytes: int = 8 * 1024 * 1024,
                  on_change: Callable[[Optional[str]], None] = lambda text: None) -> Client:
    """Connect, retrying until a server answers; reconnect forever afterwards.
    `on_change` hears of each connection problem, and None when connected again."""
    reporter = _Reporter(on_change)
    nc = _TlsOnlyClient() if settings.tls_required else Client()
    nc._ps = protocol.Parser(nc)   # one copy of each payload (protocol.py)

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
    on_change(None)
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
