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
from typing import Callable, Optional

from . import config, connection
from .config import ConfigError, DependencyError, Settings
from .daemon import StateLock

log = logging.getLogger(__name__)


def _worker(settings: Settings, ready: Callable[[], None]):
    if settings.role == "producer":
        from .producer import Producer
        return Producer(settings, ready)
    from .consumer import Consumer
    return Consumer(settings, ready)


async def serve(settings: Settings, config_dir: str, ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    while settings is not None:
        with StateLock(settings) as lock:
            # Kept across reloads, unless a reload moves the state elsewhere.
            while settings is not None and lock.path == StateLock.path_for(settings):
                settings = await _work(settings, config_dir, ready, stop, reload)


async def _work(settings: Settings, config_dir: str, ready: Callable[[], None],
                stop: asyncio.Event, reload: asyncio.Event) -> Optional[Settings]:
    """Run one worker until it ends or is stopped (None), or until a valid new
    configuration is loaded (returned, after the worker stopped gracefully)."""
    worker_stop = asyncio.Event()
    task = asyncio.ensure_future(_worker(settings, ready).run(worker_stop))
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
