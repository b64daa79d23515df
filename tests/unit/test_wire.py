import pytest

from fshipper import wire

# 32-bit FNV-1a reference values (offset 2166136261, prime 16777619), as Go's
# hash/fnv New32a computes them.
FNV_VECTORS = [
    (b"", 0x811C9DC5),
    (b"a", 0xE40C292C),
    (b"foobar", 0xBF9CF968),
    (b"hello", 0x4F9F2CAB),
    (b"web1.example.net", None),  # checked against the loop definition below
]


def reference_fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h ^= b
        h = (h * 16777619) % 2 ** 32
    return h


@pytest.mark.parametrize("data, expected", FNV_VECTORS)
def test_fnv1a_known_vectors(data, expected):
    assert wire.fnv1a32(data) == (expected if expected is not None else reference_fnv1a(data))


def test_partition_is_fnv_mod_partitions_and_zero_when_unset():
    host = "web1.example.net"
    assert wire.partition(host, 0) == 0
    assert wire.partition(host, 1) == 0
    assert wire.partition(host, 7) == reference_fnv1a(host.encode()) % 7
    assert wire.partition("a", 10) == 0xE40C292C % 10


def test_subject_keeps_the_dots_of_the_host():
    n = 0xE40C292C % 8
    assert wire.subject("shipper", "a", 8) == f"shipper.p{n}.a"
    assert wire.subject("shipper", "web1.example.net", 0) == "shipper.p0.web1.example.net"
    assert wire.parse_subject("shipper", "shipper.p3.web1.example.net") == (3, "web1.example.net")
    assert wire.parse_subject("shipper", "other.p3.x") is None
    assert wire.parse_subject("shipper", "shipper.px.host") is None
    assert wire.parse_subject("logs.prod", "logs.prod.p12.h") == (12, "h")


def test_unframe_adds_the_newline_back_except_for_parts():
    assert wire.unframe(b"a\r\nb", False) == b"a\r\nb\n"
    assert wire.unframe(b"part", True) == b"part"


def test_position_round_trip_and_headers():
    pos = wire.Position("abc", 3, 100, 250, 2, 4096)
    assert wire.Position.decode(pos.encode()) == pos
    first = wire.Position("abc", 0, 0, 10, first=(0, 0))
    assert first.encode() == "abc 0 0 10 - - 0 0"
    assert wire.Position.decode(first.encode()) == first
    hdrs = wire.headers("web1", pos, more=True)
    assert hdrs["Nats-Msg-Id"] == "web1:abc:3:100:250"
    assert wire.read_headers(hdrs) == (pos, True)
    assert wire.read_headers(None) == (None, False)
    assert wire.read_headers({"Other": "x"}) == (None, False)


def test_where_a_chain_begins():
    assert wire.Position("o", 2, 100, 200, first=(2, 100)).begins_chain()
    assert not wire.Position("o", 2, 200, 300, first=(2, 100)).begins_chain()
    assert not wire.Position("o", 3, 0, 300, 2, 200, first=(2, 100)).begins_chain()
    # The six-field form of fshipper 0.1: a chain begins at byte 0 of a file with nothing before it.
    legacy = wire.Position.decode("o 0 0 10 - -")
    assert legacy == wire.Position("o", 0, 0, 10) and legacy.begins_chain()
    assert not wire.Position.decode("o 0 10 20 - -").begins_chain()
    assert not wire.Position.decode("o 1 0 20 0 10").begins_chain()


@pytest.mark.parametrize("text", ["", "a b c", "a 1 10 5 - -", "a -1 0 5 - -", "a x 0 5 - -",
                                  "a 0 0 5 - - 0", "a 0 0 5 - - x 0"])
def test_bad_positions_are_ignored(text):
    assert wire.Position.decode(text) is None


@pytest.mark.parametrize("host, token", [
    ("web1", "web1"),
    ("web1.example.net", "web1_example_net"),
    ("a_b", "a~5Fb"),
    ("a~b", "a~7Eb"),
    ("h\u00e9", "h~C3~A9"),
])
def test_a_host_becomes_one_readable_subject_token(host, token):
    assert wire.host_token(host) == token
    assert wire.inbox_prefix(host) == "_INBOX_host_" + token


def test_no_inbox_prefix_covers_another_hosts():
    """With dots kept, web1's `<prefix>.>` would match web1.example.net's inboxes; a
    `_` for each dot alone would give web1.x and web1_x the same prefix."""
    hosts = ["web1", "web1.example.net", "web1_example.net", "web1.example_net", "web1_example_net",
             "web1~5Fexample.net", "consumer", "fshipper.consumer"]
    prefixes = [wire.inbox_prefix(h) for h in hosts] + [wire.inbox_prefix(None)]
    assert len(set(prefixes)) == len(prefixes)
    assert all("." not in p for p in prefixes)   # one token: `<prefix>.>` matches its own inboxes only
