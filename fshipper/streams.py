"""The JetStream side of the contract: one stream, one durable consumer per partition
(per consumer group, SHIPPER_CONSUMER_GROUP).

Both `fshipper setup` and the consumer (at start) call `ensure`: it creates what
is missing and updates what differs, so running it again changes nothing.

With SHIPPER_FAILOVER_TIMEOUT (see ownership.py) each partition's consumer has
the priority group GROUP with the pinned_client policy: the server hands its
messages to one client at a time. nats-py's ConsumerConfig does not know those
fields, so consumers are read and written with the plain JetStream API requests
(`$JS.API.CONSUMER.INFO` / `CREATE`), whose JSON carries them.
"""

from __future__ import annotations

import json
import logging
from typing import Iterable, List, Optional

import nats.errors
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from . import wire
from .config import Settings

log = logging.getLogger(__name__)

ACK_WAIT = 10.0          # a batch is written and acknowledged well within this
MAX_ACK_PENDING = 20000  # bounds what one partition holds unacknowledged
GROUP = "fshipper"       # the priority group every fshipper consumer pulls in
PRIORITY_FIELDS = ("priority_groups", "priority_policy", "priority_timeout")
API_TIMEOUT = 5.0
# Priority groups (pinned_client) came with nats-server 2.11.
MIN_SERVER = (2, 11, 0)


class ServerTooOldError(Exception):
    """The server lacks a feature the configuration needs; str() is the one line to log."""


def consumer_name(settings: Settings, number: int) -> str:
    group = settings.shipper_consumer_group
    return f"{settings.stream}_{group}_p{number}" if group else f"{settings.stream}_p{number}"


def failover(settings: Settings) -> bool:
    """Ownership with standbys: JetStream, SHIPPER_FAILOVER_TIMEOUT, and one directory per
    host (a partition's files and ledger must be its own: see ownership.py)."""
    return (settings.shipper_mode == "jetstream" and settings.shipper_failover_timeout > 0
            and bool(settings.shipper_directory))


def check_server(server, settings: Settings) -> None:
    """Failover needs priority groups; an older server would refuse the consumers
    (or, worse, ignore the fields). `server`: nats-py's connected_server_version,
    or a (major, minor, patch) tuple."""
    version = server if isinstance(server, tuple) else (server.major, server.minor, server.patch)
    if failover(settings) and version < MIN_SERVER:
        raise ServerTooOldError(
            f"nats-server {'.'.join(map(str, version))} has no priority groups, which "
            f"SHIPPER_FAILOVER_TIMEOUT needs (nats-server {'.'.join(map(str, MIN_SERVER))} or later): "
            "upgrade the servers, or set SHIPPER_FAILOVER_TIMEOUT=0 (one consumer per partition, "
            "no standby)")


def stream_config(settings: Settings) -> api.StreamConfig:
    return api.StreamConfig(
        name=settings.stream,
        description="fshipper: log lines per host",
        subjects=[f"{settings.shipper_subject}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        max_age=settings.shipper_stream_max_age or None,
        max_bytes=settings.shipper_stream_max_bytes,
        num_replicas=settings.shipper_stream_replicas,
        duplicate_window=settings.shipper_stream_duplicate_window,
    )


def consumer_config(settings: Settings, number: int) -> dict:
    """The consumer's configuration as the JetStream API takes it (durations in ns)."""
    name = consumer_name(settings, number)
    config = _plain_config(settings, number, name).as_dict()
    if failover(settings):
        config.update(priority_groups=[GROUP], priority_policy="pinned_client",
                      priority_timeout=int(settings.shipper_failover_timeout * 1e9))
    return config


def _plain_config(settings: Settings, number: int, name: str) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"fshipper: partition {number}"
                    + (f", group {settings.shipper_consumer_group}" if settings.shipper_consumer_group else ""),
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_deliver=-1,
        filter_subject=wire.partition_filter(settings.shipper_subject, number),
        max_ack_pending=MAX_ACK_PENDING,
        max_waiting=512,
        num_replicas=0,  # inherit the stream's
    )


def setup_partitions(settings: Settings) -> List[int]:
    """What `fshipper setup` prepares: every partition the producers can use."""
    return sorted(set(range(max(1, settings.shipper_partitions))) | set(settings.shipper_read_partitions))


async def ensure(js: JetStreamContext, settings: Settings, partitions: Iterable[int],
                 quiet: bool = False) -> List[str]:
    """Create or update the stream and the partitions' consumers; returns what it did
    (logged; with `quiet`, only what changed)."""
    done = []
    wanted = stream_config(settings)
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        await js.add_stream(wanted)
        done.append(f"stream {settings.stream}: created")
    else:
        if _differs(info.config.as_dict(), wanted.as_dict()):
            await js.update_stream(wanted)
            done.append(f"stream {settings.stream}: updated")
        else:
            done.append(f"stream {settings.stream}: unchanged")
    nc = js._nc  # the connection nats-py's context was made from (no public accessor)
    for number in partitions:
        config = consumer_config(settings, number)
        name = config["durable_name"]
        current = await _consumer_config(nc, settings.stream, name)
        if current is not None and not _differs(current, config):
            done.append(f"consumer {name}: unchanged")
            continue
        await _api(nc, f"CONSUMER.CREATE.{settings.stream}.{name}.{config['filter_subject']}",
                   {"stream_name": settings.stream, "config": config})  # create or update
        done.append(f"consumer {name}: {'created' if current is None else 'updated'}")
    for line in done:
        if not (quiet and line.endswith("unchanged")):
            log.info("%s", line)
    return done


async def _api(nc, subject: str, body: Optional[dict]) -> dict:
    """One JetStream API request; raises nats-py's APIError (or NotFoundError) for an error answer."""
    payload = json.dumps(body).encode() if body is not None else b""
    msg = await nc.request(f"$JS.API.{subject}", payload, timeout=API_TIMEOUT)
    answer = json.loads(msg.data)
    if answer.get("error"):
        APIError.from_error(answer["error"])  # raises the matching error
    return answer


async def _consumer_config(nc, stream: str, name: str) -> Optional[dict]:
    """The consumer's configuration as the server holds it (API form), None if it has none."""
    try:
        answer = await _api(nc, f"CONSUMER.INFO.{stream}.{name}", None)
    except NotFoundError:
        return None
    raw = answer["config"]
    # nats-py's round trip turns absent durations into 0, as in the wanted form.
    current = api.ConsumerConfig.from_response(dict(raw)).as_dict()
    current.update({k: raw[k] for k in PRIORITY_FIELDS if k in raw})
    return current


def _differs(current: dict, wanted: dict) -> bool:
    skip = {"num_replicas"} if wanted.get("num_replicas") == 0 else set()
    if any(k in current and k not in wanted for k in PRIORITY_FIELDS):
        return True  # failover turned off: the priority group goes
    return any(current.get(k) != v for k, v in wanted.items() if k not in skip and v is not None)
