"""Runs one role in the asyncio loop: signals set events, the loop acts on them.

The worker holds its state's lock (daemon.StateLock) while it runs.
SIGTERM/SIGINT stop gracefully. SIGHUP re-reads the configuration; if it is
valid the worker is stopped gracefully (position saved, files closed) and a new
one starts with it, so no line is lost or written twice; if not, the error is
logged and the running configuration stays.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Callable, List, Optional

from . import config, connection
from .config import ConfigError, DependencyError, Settings
from .daemon import StateLock

log = logging.getLogger(__name__)


class Running:
    """The current worker, and its counters, which outlive a reload so that the
    metrics' counters do not restart from zero."""

    def __init__(self) -> None:
        self.worker: Any = None
        self.counters: Any = None

    def start(self, settings: Settings, ready: Callable[[], None]):
        if settings.role == "producer":
            from .producer import Producer
            self.worker = Producer(settings, ready, self.counters)
        else:
            from .consumer import Consumer
            self.worker = Consumer(settings, ready, self.counters)
        self.counters = self.worker.counters
        return self.worker

    def samples(self) -> List:
        return self.worker.metrics() if self.worker is not None else []


async def serve(settings: Settings, config_dir: str, ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    running = Running()
    metrics = None
    try:
        while settings is not None:
            with StateLock(settings) as lock:
                # Kept across reloads, unless a reload moves the state elsewhere.
                while settings is not None and lock.path == StateLock.path_for(settings):
                    metrics = await _metrics(metrics, settings, running)
                    settings = await _work(settings, config_dir, ready, stop, reload, running)
    finally:
        if metrics is not None:
            await metrics.close()


async def _metrics(server, settings: Settings, running: Running):
    """The metrics endpoint as the settings want it (started, moved or stopped on a reload)."""
    if server is not None and server.listen == settings.shipper_metrics_listen:
        return server
    if server is not None:
        await server.close()
    if not settings.shipper_metrics_listen:
        return None
    from .metrics import MetricsServer

    server = MetricsServer(settings.role, running.samples)
    await server.start(settings.shipper_metrics_listen)
    return server


async def _work(settings: Settings, config_dir: str, ready: Callable[[], None],
                stop: asyncio.Event, reload: asyncio.Event, running: Running) -> Optional[Settings]:
    """Run one worker until it ends or is stopped (None), or until a valid new
    configuration is loaded (returned, after the worker stopped gracefully)."""
    worker_stop = asyncio.Event()
    task = asyncio.ensure_future(running.start(settings, ready).run(worker_stop))
    while True:
        waiters = {task, asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters - {task}:
            waiter.cancel()
        if task.done():
            task.result()  # raises what the worker raised
            return None
        if stop.is_set():
            log.info("stopping (signal)")
            worker_stop.set()
            await task
            return None
        reload.clear()
        try:
            loaded = config.load(settings.role, settings.instance, config_dir)
            config.require_dependencies(loaded.settings)
            connection.check_tls(loaded)
        except (ConfigError, DependencyError) as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            continue
        for warning in loaded.warnings:
            log.warning("%s", warning)
        log.info("reloading the configuration")
        worker_stop.set()
        await task
        return loaded.settings
