"""The JetStream side of the contract: one stream, one durable consumer per partition.

Both `fshipper setup` and the consumer (at start) call `ensure`: it creates what
is missing and updates what differs, so running it again changes nothing.
"""

from __future__ import annotations

import logging
from typing import Iterable, List

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from . import wire
from .config import Settings

log = logging.getLogger(__name__)

ACK_WAIT = 10.0          # a batch is written and acknowledged well within this
MAX_ACK_PENDING = 20000  # bounds what one partition holds unacknowledged


def consumer_name(settings: Settings, number: int) -> str:
    return f"{settings.stream}_p{number}"


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


def consumer_config(settings: Settings, number: int) -> api.ConsumerConfig:
    name = consumer_name(settings, number)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"fshipper: partition {number}",
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
    for number in partitions:
        config = consumer_config(settings, number)
        try:
            current = (await js.consumer_info(settings.stream, config.durable_name)).config.as_dict()
        except NotFoundError:
            current = None
        if current is not None and not _differs(current, config.as_dict()):
            done.append(f"consumer {config.durable_name}: unchanged")
            continue
        await js.add_consumer(settings.stream, config)  # create or update
        done.append(f"consumer {config.durable_name}: {'created' if current is None else 'updated'}")
    for line in done:
        if not (quiet and line.endswith("unchanged")):
            log.info("%s", line)
    return done


def _differs(current: dict, wanted: dict) -> bool:
    skip = {"num_replicas"} if wanted.get("num_replicas") == 0 else set()
    return any(current.get(k) != v for k, v in wanted.items() if k not in skip and v is not None)
