"""Headers a hostile client makes up: believed only when they hold together."""

from fshipper import wire
from security.conftest import refused_count, stopped_line

WEB1 = "shipper.p0.web1.example.net"


def test_a_forged_range_does_not_silence_a_host(hostile):
    """The attack that moved web1's record to 10**15: every later line of web1 was
    taken as a duplicate. Now the range must be as long as the payload."""
    h = hostile()
    h.start(lines=20_000)
    origin = h.origin
    forged = [
        f"{origin} 0 0 1000000000000000 - -",            # the attack as it was
        f"{origin} 0 0 1000000000000000 - - 0 0",        # the same in the eight-field form
        f"{origin} 0 0 10000000000000000 - - 0 0",       # beyond 2**53
        f"{origin} 0 5 1000000000000000 - - 0 0",
        f"{origin} 1 0 1000000000000000 0 10 0 0",       # "next file"
        f"{origin} 0 +0 10 - - 0 0",                     # numbers as int() would take them
        f"{origin} 0 0 10 - - 0 7",                      # a chain that begins after this message
        f"{origin} 3 0 10 5 10 0 0",                     # follows a file that comes after it
    ]
    taken = h.publish([(WEB1, b"x", {wire.HDR_POS: text}) for text in forged])
    assert taken == len(forged)
    log = h.finish()
    assert refused_count(log) == len(forged), stopped_line(log)
    assert f"refused a message on '{WEB1}': Fshipper-Pos" in log
    assert "header 8" in stopped_line(log)


def test_a_lone_part_is_never_glued_to_a_line(hostile):
    """A lone `Fshipper-Part: more` was written without its newline and so
    prepended to the host's next real line."""
    h = hostile()
    h.start(lines=20_000)
    lone = [
        (WEB1, b"GLUE-", {wire.HDR_PART: wire.PART_MORE}),                         # no position
        (WEB1, b"GLUE-", {wire.HDR_PART: "more-or-less"}),
        (WEB1, b"GLUE-", {wire.HDR_PART: wire.PART_MORE,                           # claims a newline
                          wire.HDR_POS: f"{h.origin} 0 0 6 - - 0 0"}),
    ]
    assert h.publish(lone) == len(lone)
    log = h.finish()
    assert b"GLUE" not in h.p.output()
    assert refused_count(log) == len(lone), stopped_line(log)
    assert "a part (Fshipper-Part) without Fshipper-Pos" in log


def test_a_part_of_another_producer_is_ended_before_the_next_line(hostile):
    """A well-formed part of a made-up producer (it cannot be told from a new
    producer whose first line is long) is written, but ended with a newline
    before the host's next line: never glued to it."""
    h = hostile()
    h.start(lines=20_000)
    part = b"FOREIGN-PART"
    headers = {wire.HDR_PART: wire.PART_MORE,
               wire.HDR_POS: f"feedfacefeedface 0 0 {len(part)} - - 0 0"}
    assert h.publish([(WEB1, part, headers)]) == 1
    log = h.finish(expected=lambda out: out.replace(part + b"\n", b"", 1))
    out = h.p.output()
    assert out.count(part) == 1 and (b"\n" + part + b"\n") in out   # a line of its own
    assert "open lines ended" in stopped_line(log) and " 1 open lines ended" in stopped_line(log)
    assert "feedfacefeedface's line left open at file 0 byte 12 is ended here" in log
