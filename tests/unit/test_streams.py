"""What `fshipper setup` decides for an existing stream or consumer: its own
are updated towards looser limits only, anything else is a conflict."""

import pytest
from nats.js import api

from fshipper import streams

DAY = 86400.0


def wanted(**changes) -> api.StreamConfig:
    base = api.StreamConfig(name="SHIPPER", description="fshipper: log lines per host", subjects=["shipper.>"],
                            retention=api.RetentionPolicy.LIMITS, storage=api.StorageType.FILE,
                            discard=api.DiscardPolicy.OLD, max_age=7 * DAY, max_bytes=-1, num_replicas=1,
                            duplicate_window=120.0, metadata={"fshipper": "1"})
    return base.evolve(**changes)


def test_the_same_stream_is_unchanged_and_a_missing_one_created():
    assert streams.plan_stream(wanted(), wanted(), False, None).line() == "stream SHIPPER: unchanged"
    assert streams.plan_stream(None, wanted(), False, None).line(dry=True) == "stream SHIPPER: would be created"


@pytest.mark.parametrize("change, now, looser", [
    ({"max_age": 30 * DAY}, {"max_age": 7 * DAY}, True),
    ({"max_age": 0.0}, {"max_age": 7 * DAY}, True),          # 0: no limit
    ({"max_age": DAY}, {"max_age": 7 * DAY}, False),
    ({"max_bytes": -1}, {"max_bytes": 1 << 30}, True),       # -1: no limit
    ({"max_bytes": 1 << 20}, {"max_bytes": 1 << 30}, False),
    ({"num_replicas": 3}, {"num_replicas": 1}, True),
    ({"num_replicas": 1}, {"num_replicas": 3}, False),
    ({"duplicate_window": 60.0}, {"duplicate_window": 120.0}, False),
])
def test_own_stream_limits_grow_but_never_shrink_without_force(change, now, looser):
    step = streams.plan_stream(wanted(**now), wanted(**change), False, None)
    assert step.action == ("updated" if looser else "conflict"), step.line()
    assert streams.plan_stream(wanted(**now), wanted(**change), True, None).action == "updated"


@pytest.mark.parametrize("change", [{"subjects": ["shipper.>", "other.>"]},
                                    {"retention": api.RetentionPolicy.WORK_QUEUE},
                                    {"storage": api.StorageType.MEMORY}])
def test_what_a_stream_is_never_changes_without_force(change):
    step = streams.plan_stream(wanted(**change), wanted(), False, None)
    assert step.action == "conflict" and "--force" in step.line(), step.line()


def test_a_foreign_stream_is_a_conflict_even_when_identical():
    foreign = wanted(description=None, metadata=None)
    step = streams.plan_stream(foreign, wanted(), False, None)
    assert step.line() == ("stream SHIPPER: exists and was not created by fshipper (no metadata fshipper=1); "
                           "left alone; `fshipper setup --force` takes it over")
    forced = streams.plan_stream(foreign.evolve(max_msgs=10), wanted(), True, None)
    assert forced.action == "updated" and forced.apply.metadata == {"fshipper": "1"}
    assert forced.apply.max_msgs == 10  # not fshipper's to set


def test_a_stream_of_an_older_fshipper_is_its_own_and_gets_the_marker():
    older = wanted(metadata={"_nats.req.level": "0"})
    step = streams.plan_stream(older, wanted(), False, None)
    assert step.line() == "stream SHIPPER: updated (metadata fshipper=1)"
    assert step.apply.metadata == {"fshipper": "1"}


def test_a_consumer_filtering_elsewhere_is_a_conflict():
    mine = streams.ConsumerConfig(durable_name="SHIPPER_p0", description="fshipper: partition 0",
                                  deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.EXPLICIT,
                                  ack_wait=10.0, max_deliver=-1, filter_subject="shipper.p0.>",
                                  max_ack_pending=20000, max_waiting=512, metadata={"fshipper": "1"})
    assert streams.plan_consumer(mine, mine, False).action == "unchanged"
    assert streams.plan_consumer(mine.evolve(ack_wait=30.0), mine, False).line() == \
        "consumer SHIPPER_p0: updated (ack_wait 30s -> 10s)"
    pinned = mine.evolve(priority_groups=["fshipper"], priority_policy="pinned_client", priority_timeout=5.0)
    assert streams.plan_consumer(mine, pinned, False).line() == (
        "consumer SHIPPER_p0: updated (priority_groups None -> fshipper, priority_policy None -> pinned_client, "
        "priority_timeout None -> 5s)")
    assert pinned.as_dict()["priority_timeout"] == 5_000_000_000
    assert streams.ConsumerConfig.from_response(pinned.as_dict()).priority_timeout == 5.0
    step = streams.plan_consumer(mine.evolve(filter_subject="shipper.>"), mine, False)
    assert step.line() == ("consumer SHIPPER_p0: left alone: filter_subject shipper.> -> shipper.p0.> would change "
                           "what it delivers; `fshipper setup --force` applies it")
