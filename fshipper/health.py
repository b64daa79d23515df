"""`fshipper status`: each producer's lag, each partition's backlog, a verdict per line.

Producers are read from their state on this host (position and status files
of every producer configuration in the config dir); partitions from the
server. Verdicts and exit status follow the Nagios plugin convention: 0 ok,
1 warning, 2 critical (3 unknown is not used: what cannot be known is said
as a warning or critical line).

A producer is critical when it cannot read its file, when bytes have waited
longer than the critical threshold without a confirmation, or when it has
had no connection to NATS for that long; a warning past the warning
threshold, or when it is not running. A partition is critical while its
consumer is paused (it cannot write), a warning when messages wait and no
consumer is pulling.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import config, statusfile
from .config import ConfigError, Settings

OK, WARNING, CRITICAL = "ok", "warning", "critical"
EXIT = {OK: 0, WARNING: 1, CRITICAL: 2}
LEVEL = {OK: 0, WARNING: 1, CRITICAL: 2}


@dataclass
class Line:
    kind: str      # "nats", "stream", "partition", "producer"
    name: str
    verdict: str
    text: str
    facts: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.facts, kind=self.kind, name=self.name, verdict=self.verdict, text=self.text)


def worst(lines: List[Line]) -> str:
    return max((line.verdict for line in lines), key=LEVEL.__getitem__, default=OK)


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: it exists
    return True


def _ago(then: Optional[float], now: float) -> str:
    if not then:
        return "never"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(then))
    return f"{stamp} ({now - then:.0f}s ago)"


def lag_bytes(path: str, position: Dict[str, Any]) -> Optional[int]:
    """Bytes in the followed file (and the rotated one the producer is finishing)
    after the confirmed position; None if the file cannot be looked at."""
    try:
        current = os.stat(path)
    except OSError:
        current = None
    ref = position.get("file") or {}
    offset = int(position.get("offset") or 0)
    if current is None:
        return None if not ref else 0
    if not ref or (ref.get("dev"), ref.get("ino")) == (current.st_dev, current.st_ino):
        return max(0, current.st_size - (offset if ref else 0))
    # Still on a rotated file: what is left of it, then all of the current one.
    directory, base = os.path.split(path)
    try:
        names = [n for n in os.listdir(directory) if n.startswith(base) and n != base]
    except OSError:
        names = []
    for name in names:
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ref.get("dev"), ref.get("ino")) and stat.S_ISREG(st.st_mode):
            return max(0, st.st_size - offset) + current.st_size
    return current.st_size


def producer_line(settings: Settings, now: float, warning: float, critical: float) -> Line:
    state, name = settings.shipper_state_dir, settings.name
    unreadable = None
    try:
        with open(os.path.join(state, f"{name}.position"), "rb") as f:
            position = json.load(f)
    except PermissionError as e:
        position, unreadable = {}, f"cannot read its state ({e.strerror}: run status as root or as the service user)"
    except (OSError, ValueError):
        position = {}
    status = statusfile.read(state, name)
    path = settings.shipper_file or ""
    try:
        size: Optional[int] = os.stat(path).st_size
    except OSError:
        size = None
    lag = lag_bytes(path, position)
    confirmed_at = position.get("confirmed_at")
    waiting_since = confirmed_at or status.get("started")
    lag_seconds = 0.0 if not lag or not waiting_since else max(0.0, now - waiting_since)
    problems = status.get("problems") or {}
    running = _alive(status.get("pid"))
    facts = {"file": path, "size": size, "confirmed": position.get("offset"),
             "confirmed_inode": (position.get("file") or {}).get("ino"), "lag_bytes": lag,
             "lag_seconds": round(lag_seconds, 1), "last_confirmation": confirmed_at,
             "last_error": status.get("last_error"), "problems": problems, "running": running}

    verdict, why = OK, []
    if unreadable:
        verdict, why = WARNING, [unreadable]
    elif not position and not status:
        verdict, why = WARNING, ["has never run (no position in " + state + ")"]
    elif not running:
        verdict, why = WARNING, ["not running"]
    for what, problem in problems.items():
        age = now - problem.get("since", now)
        if what == "file":
            verdict = CRITICAL  # no waiting makes an unreadable file readable
        elif age > critical:
            verdict = CRITICAL
        elif age > warning and verdict == OK:
            verdict = WARNING
        why.append(f"{problem.get('text')} for {age:.0f}s")
    if lag_seconds > critical:
        verdict = CRITICAL
        why.append(f"{lag} bytes unconfirmed for {lag_seconds:.0f}s")
    elif lag_seconds > warning and verdict == OK:
        verdict = WARNING
        why.append(f"{lag} bytes unconfirmed for {lag_seconds:.0f}s")
    last_error = status.get("last_error")
    text = (f"{path} {size if size is not None else '-'} bytes, confirmed {position.get('offset', 0)} "
            f"(inode {facts['confirmed_inode'] or '-'}), lag {lag if lag is not None else '-'} bytes "
            f"{lag_seconds:.0f}s, last confirmation {_ago(confirmed_at, now)}, last error "
            + (f"{last_error['text']} at {_ago(last_error['at'], now)}" if last_error else "none"))
    if why:
        text += "; " + "; ".join(why)
    return Line("producer", name, verdict, text, facts)


def producer_lines(config_dir: str, now: float, warning: float, critical: float) -> List[Line]:
    lines = []
    for instance in config.instances(config_dir, "producer"):
        try:
            settings = config.load("producer", instance, config_dir, environ={}).settings
        except ConfigError as e:
            lines.append(Line("producer", f"producer-{instance}" if instance else "producer",
                              CRITICAL, f"invalid configuration: {e}"))
            continue
        lines.append(producer_line(settings, now, warning, critical))
    return lines


def consumer_pauses(config_dir: str) -> Dict[int, Dict[str, Any]]:
    """Paused partitions as the consumers on this host recorded them."""
    paused: Dict[int, Dict[str, Any]] = {}
    for instance in config.instances(config_dir, "consumer"):
        try:
            settings = config.load("consumer", instance, config_dir, environ={}).settings
        except ConfigError:
            continue
        status = statusfile.read(settings.shipper_state_dir, settings.name)
        if not _alive(status.get("pid")):
            continue  # a stopped consumer's pause is over
        for what, problem in (status.get("problems") or {}).items():
            if what.startswith("paused p") and what[8:].isdigit():
                paused[int(what[8:])] = dict(problem, consumer=settings.name)
    return paused


def partition_line(info, number: Optional[int], paused: Dict[int, Dict[str, Any]], now: float) -> Line:
    pause = paused.get(number) if number is not None else None
    facts = {"pending": info.num_pending, "unacknowledged": info.num_ack_pending,
             "redelivered": info.num_redelivered, "waiting_pulls": info.num_waiting,
             "paused": pause is not None, "paused_since": pause and pause.get("since"),
             "paused_why": pause and pause.get("text")}
    text = (f"{info.num_pending} pending, {info.num_ack_pending} unacknowledged, "
            f"{info.num_redelivered} redelivered, ")
    if pause:
        text += f"paused since {_ago(pause.get('since'), now)}: {pause.get('text')} ({pause.get('consumer')})"
        return Line("partition", info.name, CRITICAL, text, facts)
    text += "not paused"
    if info.num_pending and not info.num_waiting:
        return Line("partition", info.name, WARNING, text + "; messages wait and no consumer is pulling", facts)
    return Line("partition", info.name, OK, text, facts)


async def server_lines(js, settings: Settings, config_dir: str, now: float) -> List[Line]:
    """The stream and its partitions as the server sees them; what the server
    refuses to say is a critical line, so the producers' lines still follow."""
    import asyncio

    import nats.errors
    from nats.js.errors import APIError, NotFoundError

    try:
        info = await js.stream_info(settings.stream)
        consumers = await js.consumers_info(settings.stream)
    except NotFoundError:
        return [Line("stream", settings.stream, CRITICAL, "missing (run 'fshipper setup')")]
    except APIError as e:  # e.g. a producer host's user may not ask about the stream: see --local
        return [Line("stream", settings.stream, CRITICAL,
                     f"the server answered {e.code} (err_code {e.err_code}): {e.description}")]
    except (nats.errors.Error, asyncio.TimeoutError) as e:
        return [Line("stream", settings.stream, CRITICAL, f"no answer about the stream ({type(e).__name__}: {e}); "
                                                           "on a producer host without the permission, use --local")]
    s = info.state
    lines = [Line("stream", settings.stream, OK,
                  f"{s.messages} messages, {s.bytes} bytes, sequences {s.first_seq}..{s.last_seq}, "
                  f"replicas {info.config.num_replicas}",
                  {"messages": s.messages, "bytes": s.bytes, "first_seq": s.first_seq, "last_seq": s.last_seq})]
    paused = consumer_pauses(config_dir)
    for c in sorted(consumers, key=lambda c: c.name):
        # <stream>_p<N>, or <stream>_<group>_p<N> (SHIPPER_CONSUMER_GROUP)
        suffix = c.name.rpartition("_p")[2] if c.name.startswith(f"{settings.stream}_") else ""
        lines.append(partition_line(c, int(suffix) if suffix.isdigit() else None, paused, now))
    return lines


def render(lines: List[Line]) -> List[str]:
    verdict = worst(lines)
    counts = ", ".join(f"{sum(l.verdict == v for l in lines)} {v}" for v in (CRITICAL, WARNING, OK))
    return [f"{verdict.upper()}: {counts}"] + [f"{l.verdict} {l.kind} {l.name}: {l.text}" for l in lines]
