"""What the consumer believes of a message's headers (fshipper.trust, wire.read_headers)."""

import logging

import pytest

from fshipper import trust, wire
from fshipper.wire import HeaderError, Position

ORIGIN = "0123456789abcdef"   # what a producer makes: 16 hex characters


def pos(text: str) -> Position:
    decoded = Position.decode(text)
    assert decoded is not None, text
    return decoded


@pytest.mark.parametrize("text", [
    f"{ORIGIN} 0 0 10 - - 0 0",
    f"{ORIGIN} 3 100 250 2 4096 0 0",
    f"{ORIGIN} 0 0 10 - -",                     # the six-field form of fshipper 0.1
    "o_-A9 0 0 1 - - - -",
    f"{'x' * 64} 0 0 1 - - 0 0",
    f"{ORIGIN} 0 {2 ** 53 - 2} {2 ** 53 - 1} - - 0 0",
])
def test_well_formed_positions_are_read(text):
    decoded = Position.decode(text)
    assert decoded is not None and decoded.encode().split()[:6] == text.split()[:6]


@pytest.mark.parametrize("text", [
    f"{'x' * 65} 0 0 1 - - 0 0",                 # origin too long (the 60 kB origins of a flood)
    "a/b 0 0 1 - - 0 0", "a.b 0 0 1 - - 0 0", "\u00e9 0 0 1 - - 0 0", " 0 0 1 - - 0 0",
    f"{ORIGIN} 0 0 {2 ** 53} - - 0 0",           # beyond 2**53
    f"{ORIGIN} 0 0 1000000000000000000 - - 0 0",
    f"{ORIGIN} +1 0 1 - - 0 0", f"{ORIGIN} 0 0 1_0 - - 0 0", f"{ORIGIN} 0 0 01 - - 0 0",
    f"{ORIGIN} 0 0 \u0661 - - 0 0",              # an Arabic-Indic digit: int() would take it
    f"{ORIGIN}  0 0 1 - - 0 0",                  # two spaces
    f"{ORIGIN} 0 0 1 - 5 0 0", f"{ORIGIN} 0 0 1 - - 0 -",   # half a pair
    f"{ORIGIN} 0 5 5 - - 0 0", f"{ORIGIN} 0 6 5 - - 0 0",   # empty or backwards range
    f"{ORIGIN} 0 0 5 - - 0", f"{ORIGIN} 0 0 5 - - 0 0 0",
])
def test_positions_not_well_formed_are_not_read(text):
    assert Position.decode(text) is None


def test_headers_present_but_not_believable_raise():
    good = wire.headers("web1", pos(f"{ORIGIN} 0 0 10 - - 0 0"), more=True)
    assert wire.read_headers(good) == (pos(f"{ORIGIN} 0 0 10 - - 0 0"), True)
    assert wire.read_headers(None) == (None, False)               # the original Go producer
    assert wire.read_headers({"Nats-Msg-Id": "x"}) == (None, False)
    with pytest.raises(HeaderError, match="without Fshipper-Pos"):
        wire.read_headers({wire.HDR_PART: wire.PART_MORE})       # a lone part: nothing to join it by
    with pytest.raises(HeaderError, match="is not 'more'"):
        wire.read_headers({wire.HDR_POS: f"{ORIGIN} 0 0 10 - - 0 0", wire.HDR_PART: "less"})
    with pytest.raises(HeaderError, match="not well formed"):
        wire.read_headers({wire.HDR_POS: f"{ORIGIN} 0 0 10000000000000000 - -"})   # >= 2**53


@pytest.mark.parametrize("text, more, size", [
    (f"{ORIGIN} 0 0 11 - - 0 0", False, 10),     # ten bytes and the newline
    (f"{ORIGIN} 0 0 10 - - 0 0", False, 10),     # the last line of a finished file, no newline
    (f"{ORIGIN} 0 0 1 - - 0 0", False, 0),       # an empty line
    (f"{ORIGIN} 0 0 10 - - 0 0", True, 10),      # a part: its bytes only
    (f"{ORIGIN} 2 0 10 1 500 0 0", False, 9),
    (f"{ORIGIN} 2 50 60 1 500 2 50", False, 9),  # the chain began with this message
])
def test_consistent_headers_are_believed(text, more, size):
    assert trust.inconsistency(pos(text), more, size) is None


@pytest.mark.parametrize("text, more, size, why", [
    (f"{ORIGIN} 0 0 1000000000000 - - 0 0", False, 1, "claims 1000000000000"),   # silencing
    (f"{ORIGIN} 0 0 12 - - 0 0", False, 10, "claims 12"),
    (f"{ORIGIN} 0 0 9 - - 0 0", False, 10, "claims 9"),
    (f"{ORIGIN} 0 0 11 - - 0 0", True, 10, "a part of 10"),   # a part has no newline
    (f"{ORIGIN} 0 0 9 - - 0 0", True, 10, "a part of 10"),
    (f"{ORIGIN} 2 0 10 2 500 0 0", False, 9, "follow file 2"),
    (f"{ORIGIN} 2 0 10 3 500 0 0", False, 9, "follow file 3"),
    (f"{ORIGIN} 2 0 10 1 500 2 5", False, 9, "after this message"),
    (f"{ORIGIN} 2 0 10 1 500 3 0", False, 9, "after this message"),
])
def test_inconsistent_headers_are_refused(text, more, size, why):
    assert why in trust.inconsistency(pos(text), more, size)


def test_what_the_producer_sends_is_always_believed():
    """Every message shape follower.read makes passes the checks."""
    from fshipper.follower import Chunk  # noqa: F401 (the shape: start, end, payload, more)
    for data in (b"a\nbb\n", b"x" * 7 + b"\n", b"\n"):
        payload = data[:-1]
        p = Position(ORIGIN, 0, 100, 100 + len(data), None, None, (0, 0))
        assert trust.inconsistency(p, False, len(payload)) is None
    part = Position(ORIGIN, 0, 100, 107, None, None, (0, 0))
    assert trust.inconsistency(part, True, 7) is None


def test_refusals_are_counted_and_their_log_is_rate_limited(caplog):
    refusals = trust.Refusals()
    with caplog.at_level(logging.WARNING, logger="fshipper.trust"):
        for n in range(1000):
            refusals.note(f"shipper.p0.h{n}", "a reason", "header")
    assert refusals.total == 1000 and refusals.by_reason == {"header": 1000}
    lines = [r.getMessage() for r in caplog.records]
    assert trust.LOG_BURST <= len(lines) <= trust.LOG_BURST + 2
    assert lines[0].startswith("refused a message on 'shipper.p0.h0': a reason (refused so far: 1")
    assert refusals.summary() == "header 1000"


def test_new_hosts_beyond_the_limit_are_refused_with_one_error(caplog):
    refusals = trust.Refusals()
    bounds = trust.Bounds(3, refusals)
    bounds.recount({"web1"}, ["web2"])
    with caplog.at_level(logging.WARNING):
        assert bounds.admit("s.p0.web1", "web1", None, set())
        assert bounds.admit("s.p0.web3", "web3", "o", set())
        assert not bounds.admit("s.p0.made-up1", "made-up1", None, set())
        assert not bounds.admit("s.p0.made-up2", "made-up2", "o", set())
        assert bounds.admit("s.p0.web2", "web2", None, set())   # known hosts carry on
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "SHIPPER_MAX_HOSTS=3 reached" in errors[0].getMessage()
    assert refusals.by_reason == {"host limit": 2}


def test_producers_of_one_host_beyond_the_limit_are_refused():
    refusals = trust.Refusals()
    bounds = trust.Bounds(10, refusals)
    recorded = {f"o{n}" for n in range(trust.MAX_ORIGINS_PER_HOST - 2)}
    assert bounds.admit("s", "h", "o0", recorded)
    assert bounds.admit("s", "h", "new1", recorded)
    bounds.wait("h", "new1")                                  # held early: counts too
    assert bounds.admit("s", "h", "new2", recorded)
    bounds.wait("h", "new2")
    assert not bounds.admit("s", "h", "new3", recorded)
    assert bounds.admit("s", "h", "new2", recorded)           # one already counted carries on
    bounds.written("h", "new2")
    assert refusals.by_reason == {"origin limit": 1}
