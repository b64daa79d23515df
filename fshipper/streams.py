"""The JetStream side of the contract: one stream, one durable consumer per partition
(per consumer group, SHIPPER_CONSUMER_GROUP).

Both `fshipper setup` and the consumer (at start) call `ensure`: it creates what
is missing and updates what differs, so running it again changes nothing.

fshipper changes only what it created: its stream and consumers carry the
metadata `fshipper=1` (those made before metadata existed, its description).
Anything else with the same name, and any change that would lose messages or
alter what the stream or a consumer is (subjects, retention, storage, ack
policy, a shrinking limit), is a conflict: one line, nothing changed, unless
`force` takes it over. Limits that only grow are applied to fshipper's own.

With SHIPPER_FAILOVER_TIMEOUT (see ownership.py) each partition's consumer has
the priority group GROUP with the pinned_client policy: the server hands its
messages to one client at a time. nats-py's ConsumerConfig does not know those
fields: ConsumerConfig below adds them, and a consumer's configuration is read
with the plain `$JS.API.CONSUMER.INFO` request, whose JSON carries them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import nats.errors
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NotFoundError

from . import wire
from .config import Settings

log = logging.getLogger(__name__)

ACK_WAIT = 10.0          # a batch is written and acknowledged well within this
MAX_ACK_PENDING = 20000  # bounds what one partition holds unacknowledged
MARKER = {"fshipper": "1"}
DESCRIPTION_PREFIX = "fshipper:"

# What fshipper sets. Fixed: a difference means the object is not what
# fshipper made. Limits: (value meaning "none", whether bigger is looser);
# a looser value is applied to fshipper's own object, a tighter one is a
# conflict (messages would be dropped, ids forgotten, copies lost).
STREAM_FIXED = ("subjects", "retention", "storage", "discard")
STREAM_LIMITS = {"max_age": 0, "max_bytes": -1, "num_replicas": None, "duplicate_window": None}
CONSUMER_FIXED = ("filter_subject", "ack_policy", "deliver_policy", "max_deliver")
PRIORITY_FIELDS = ("priority_groups", "priority_policy", "priority_timeout")
CONSUMER_TUNABLE = ("ack_wait", "max_ack_pending", "max_waiting") + PRIORITY_FIELDS
GROUP = "fshipper"       # the priority group every fshipper consumer pulls in
# Priority groups (pinned_client) came with nats-server 2.11.
MIN_SERVER = (2, 11, 0)


class ConflictError(Exception):
    """What fshipper would change belongs to someone else, or would lose data."""

    def __init__(self, lines: List[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


class ServerTooOldError(Exception):
    """The server lacks a feature the configuration needs; str() is the one line to log."""


@dataclass
class ConsumerConfig(api.ConsumerConfig):
    """nats-py's consumer configuration with the priority-group fields of
    nats-server 2.11 (priority_timeout in seconds here, nanoseconds on the wire)."""
    priority_groups: Optional[List[str]] = None
    priority_policy: Optional[str] = None
    priority_timeout: Optional[float] = None

    @classmethod
    def from_response(cls, resp: Dict[str, Any]):
        resp = dict(resp)
        cls._convert_nanoseconds(resp, "priority_timeout")
        return super().from_response(resp)

    def as_dict(self) -> Dict[str, object]:
        result = super().as_dict()
        if self.priority_timeout is not None:
            result["priority_timeout"] = self._to_nanoseconds(self.priority_timeout)
        return result


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
        max_age=settings.shipper_stream_max_age,
        max_bytes=settings.shipper_stream_max_bytes,
        num_replicas=settings.shipper_stream_replicas,
        duplicate_window=settings.shipper_stream_duplicate_window,
        metadata=dict(MARKER),
    )


def consumer_config(settings: Settings, number: int) -> ConsumerConfig:
    name = consumer_name(settings, number)
    pinned = failover(settings)
    return ConsumerConfig(
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
        metadata=dict(MARKER),
        priority_groups=[GROUP] if pinned else None,
        priority_policy="pinned_client" if pinned else None,
        priority_timeout=settings.shipper_failover_timeout if pinned else None,
    )


def setup_partitions(settings: Settings) -> List[int]:
    """What `fshipper setup` prepares: every partition the producers can use."""
    return sorted(set(range(max(1, settings.shipper_partitions))) | set(settings.shipper_read_partitions))


@dataclass
class Step:
    """What `ensure` does (or, dry, would do) to one stream or consumer."""
    what: str                    # "stream SHIPPER", "consumer SHIPPER_p0"
    action: str                  # created, updated, unchanged, conflict
    changes: List[str] = field(default_factory=list)
    conflict: str = ""
    apply: Optional[Any] = None  # the config to send

    def line(self, dry: bool = False) -> str:
        if self.action == "conflict":
            return f"{self.what}: {self.conflict}"
        verb = {"created": "would be created", "updated": "would be updated"}.get(self.action, self.action) \
            if dry else self.action
        return f"{self.what}: {verb}" + (f" ({', '.join(self.changes)})" if self.changes else "")


def _own(config: Any) -> bool:
    return (config.metadata or {}).get("fshipper") == MARKER["fshipper"] or \
        (config.description or "").startswith(DESCRIPTION_PREFIX)


DURATIONS = ("max_age", "duplicate_window", "ack_wait", "priority_timeout")


def _show(value: Any, name: str = "") -> str:
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, list):
        return ",".join(value)
    if name in DURATIONS and isinstance(value, (int, float)):
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if value >= seconds and value % seconds == 0:
                return f"{int(value // seconds)}{unit}"
        return "0" if value == 0 else f"{value:g}s"
    return str(value)


def _looser(old: Any, new: Any, unlimited: Any) -> bool:
    def size(v):
        return math.inf if unlimited is not None and v == unlimited else v
    return size(new) > size(old)


def _same(old: Any, new: Any) -> bool:
    if isinstance(new, float) or isinstance(old, float):
        return old is not None and new is not None and math.isclose(old, new, abs_tol=1e-3)
    return old == new


def _merged_metadata(current: Any) -> Dict[str, str]:
    kept = {k: v for k, v in (current.metadata or {}).items() if not k.startswith("_nats")}
    return {**kept, **MARKER}


def plan_stream(current: Optional[api.StreamConfig], wanted: api.StreamConfig, force: bool,
                overlapping: Optional[str]) -> Step:
    what = f"stream {wanted.name}"
    if current is None:
        if overlapping:
            return Step(what, "conflict", conflict=(
                f"not created: its subjects {_show(wanted.subjects)} overlap with stream {overlapping}, which "
                f"fshipper does not manage (set SHIPPER_STREAM={overlapping} to use it, or another SHIPPER_SUBJECT)"))
        return Step(what, "created", apply=wanted)
    changes, names = _differences(current, wanted, STREAM_FIXED + tuple(STREAM_LIMITS))
    tighter = [change for change, name in zip(changes, names)
               if name in STREAM_FIXED or not _looser(getattr(current, name), getattr(wanted, name),
                                                      STREAM_LIMITS[name])]
    # The current configuration with fshipper's settings on top: what an
    # operator set besides them (placement, max_msgs, ...) stays.
    update = current.evolve(**{name: getattr(wanted, name) for name in
                               STREAM_FIXED + tuple(STREAM_LIMITS) + ("description",)},
                            metadata=_merged_metadata(current))
    return _step(what, current, changes, tighter, force, "would drop or change what it holds", update)


def plan_consumer(current: Optional[api.ConsumerConfig], wanted: api.ConsumerConfig, force: bool) -> Step:
    what = f"consumer {wanted.durable_name}"
    if current is None:
        return Step(what, "created", apply=wanted)
    changes, names = _differences(current, wanted, CONSUMER_FIXED + CONSUMER_TUNABLE)
    fixed = [change for change, name in zip(changes, names) if name in CONSUMER_FIXED]
    update = wanted.evolve(metadata=_merged_metadata(current))
    return _step(what, current, changes, fixed, force, "would change what it delivers", update)


def _differences(current: Any, wanted: Any, names: Iterable[str]):
    """The differences as text, and the names of the fields that differ."""
    differ = [name for name in names if not _same(getattr(current, name), getattr(wanted, name))]
    return [f"{name} {_show(getattr(current, name), name)} -> {_show(getattr(wanted, name), name)}"
            for name in differ], differ


def _step(what: str, current: Any, changes: List[str], blocking: List[str], force: bool, harm: str,
          update: Any) -> Step:
    own = _own(current)
    if not changes and own and (current.metadata or {}).get("fshipper"):
        return Step(what, "unchanged")
    if not force and not own:
        return Step(what, "conflict", changes, conflict=(
            "exists and was not created by fshipper (no metadata fshipper=1); left alone"
            + (f" (fshipper would change {', '.join(changes)})" if changes else "")
            + "; `fshipper setup --force` takes it over"))
    if not force and blocking:
        return Step(what, "conflict", changes, conflict=(
            f"left alone: {', '.join(blocking)} {harm}; `fshipper setup --force` applies it"))
    return Step(what, "updated", changes or ["metadata fshipper=1"], apply=update)


async def _stream_config(js: JetStreamContext, name: str) -> Optional[api.StreamConfig]:
    try:
        return (await js.stream_info(name)).config
    except NotFoundError:
        return None


async def _consumer_config(js: JetStreamContext, stream: str, name: str) -> Optional[ConsumerConfig]:
    """The consumer's configuration as the server holds it, priority group included
    (nats-py's consumer_info drops it)."""
    try:
        answer = await js._api_request(f"{js._prefix}.CONSUMER.INFO.{stream}.{name}", b"",
                                       timeout=js._timeout)
    except NotFoundError:
        return None
    return ConsumerConfig.from_response(answer["config"])


async def _overlapping(js: JetStreamContext, subjects: List[str], name: str) -> Optional[str]:
    """Another stream capturing these subjects, if the account lets us ask
    (STREAM.NAMES is not among the consumer's permissions: then None)."""
    for subject in subjects:
        try:
            other = await js.find_stream_name_by_subject(subject)
        except NotFoundError:
            continue
        except (nats.errors.Error, asyncio.TimeoutError):
            return None
        if other != name:
            return other
    return None


async def plan(js: JetStreamContext, settings: Settings, partitions: Iterable[int],
               force: bool = False, find_overlap: bool = True) -> List[Step]:
    """What ensure would do. `find_overlap`: ask up front whether another stream
    captures the subjects (ensure asks only once the server refused to create)."""
    wanted = stream_config(settings)
    current = await _stream_config(js, settings.stream)
    overlapping = await _overlapping(js, wanted.subjects, settings.stream) if not current and find_overlap else None
    steps = [plan_stream(current, wanted, force, overlapping)]
    for number in partitions:
        config = consumer_config(settings, number)
        existing = await _consumer_config(js, settings.stream, config.durable_name) if current else None
        steps.append(plan_consumer(existing, config, force))
    return steps


def api_error(what: str, error: APIError) -> str:
    """A NATS API error as one line."""
    text = error.description or type(error).__name__
    return f"{what}: the server refused it: {text}" + (f" (NATS error {error.err_code})" if error.err_code else "")


async def ensure(js: JetStreamContext, settings: Settings, partitions: Iterable[int],
                 quiet: bool = False, force: bool = False) -> List[str]:
    """Create or update the stream and the partitions' consumers; returns what it
    did (logged; with `quiet`, only what changed). A conflict raises
    ConflictError before anything is changed."""
    steps = await plan(js, settings, list(partitions), force, find_overlap=False)
    conflicts = [step.line() for step in steps if step.action == "conflict"]
    if conflicts:
        raise ConflictError(conflicts)
    done = []
    for step in steps:
        try:
            if step.action in ("created", "updated") and step.what.startswith("stream"):
                await (js.add_stream if step.action == "created" else js.update_stream)(step.apply)
            elif step.action in ("created", "updated"):
                await js.add_consumer(settings.stream, step.apply)  # create or update
        except BadRequestError as e:
            other = await _overlapping(js, step.apply.subjects, settings.stream) \
                if step.action == "created" and step.what.startswith("stream") else None
            line = plan_stream(None, step.apply, force, other).line() if other else api_error(step.what, e)
            raise ConflictError([line]) from None
        done.append(step.line())
    for line in done:
        if not (quiet and line.endswith("unchanged")):
            log.info("%s", line)
    return done
