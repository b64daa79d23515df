"""The nats-server permissions each role needs, and nothing more.

`fshipper permissions` prints them as the JSON object a nats-server `users`
entry (or `nsc edit user`) takes. They follow what the code does:

- A producer publishes its lines on its own subject and receives the
  server's PubAcks on its inbox. It makes no JetStream API call (it never
  creates or inspects the stream: a missing stream shows as "no responders").
- The consumer (and the admin commands, which read the same configuration)
  creates, updates and inspects the stream and its consumers (`streams.ensure`,
  `fshipper status`), pulls with `$JS.API.CONSUMER.MSG.NEXT` and acknowledges
  on `$JS.ACK`. These are allowed for fshipper's stream only, for every
  consumer on it, so that changing SHIPPER_PARTITIONS needs no new permissions.

Neither role answers requests, so neither needs `allow_responses`: JetStream
acknowledgements are ordinary publishes to `$JS.ACK.<stream>.>`.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from . import wire
from .config import Settings

JS_API = "$JS.API"


def _permissions(publish: List[str], subscribe: List[str]) -> Dict[str, Dict[str, List[str]]]:
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def producer(settings: Settings, host: str, inbox_prefix: Optional[str] = None) -> dict:
    """What fshipper-producer on `host` needs: its subject (the partition computed as
    the producer computes it, from SHIPPER_PARTITIONS) and its own inbox."""
    subject = wire.subject(settings.shipper_subject, host, settings.shipper_partitions)
    return _permissions([subject], [f"{inbox_prefix or wire.inbox_prefix(host)}.>"])


def consumer(settings: Settings) -> dict:
    """What fshipper-consumer, `fshipper setup` and `fshipper status` need."""
    inbox = [f"{settings.inbox_prefix}.>"]
    if settings.shipper_mode == "core":
        return _permissions([], [f"{settings.shipper_subject}.>"] + inbox)
    stream = settings.stream
    return _permissions([
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.CREATE.{stream}",
        f"{JS_API}.STREAM.UPDATE.{stream}",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.LIST.{stream}",
        # nats-py names the filter in the subject: CREATE.<stream>.<consumer>.<filter>
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.*",   # servers before 2.9
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{JS_API}.CONSUMER.UNPIN.{stream}.*",   # a graceful stop hands its partition on
        f"$JS.ACK.{stream}.>",
    ], inbox)
