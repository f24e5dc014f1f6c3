"""The swarm wire protocol: round trips, every hostile input refused with a reason, and the
sizes at Arch scale that docs/protocol.md states."""

from __future__ import annotations

import contextlib
import hashlib
import random

import pytest

from pacswarm.ipfs.cid import CID, DAG_PB, RAW, b58encode, encode_varint
from pacswarm.swarm.protocol import (
    INVENTORY_PROTOCOL,
    MAX_ENTRIES,
    MAX_MESSAGE,
    MAX_SIZE,
    VERSION,
    DbItem,
    Digest,
    Entry,
    InventoryRequest,
    News,
    ProtocolError,
    batch_news,
    db_digest,
    decode_inventory,
    decode_news,
    decode_request,
    encode_inventory,
    encode_news,
    encode_request,
    held_digest,
    topic,
)


def sha(i: int) -> str:
    return hashlib.sha256(f"pkg{i}".encode()).hexdigest()


def cid(i: int) -> str:
    return str(CID.of(f"root{i}".encode(), DAG_PB))


def entry(i: int) -> Entry:
    return Entry(sha(i), cid(i), 1000 + i, f"pkg{i:05d}-1.0-1-x86_64.pkg.tar.zst")


def arch_db(n: int = 15_000) -> list[DbItem]:
    return [DbItem(f"pkg{i:05d}-1.0-1-x86_64.pkg.tar.zst", sha(i), 1000 + i) for i in range(n)]


DIGEST = Digest("ab" * 32, 3, "cd" * 32)


def raw_str(text: bytes) -> bytes:
    return encode_varint(len(text)) + text


def raw_news(
    *,
    version: int = VERSION,
    kind: int = 1,
    repo: bytes = b"extra",
    arch: bytes = b"x86_64",
    flags: int = 0,
    count: int | None = None,
    sha256: bytes = bytes(32),
    cid_bytes: bytes | None = None,
    size: int = 5,
    filename: bytes = b"a-1-1-any.pkg.tar.zst",
    tail: bytes = b"",
) -> bytes:
    """A News message with one entry, built by hand so every field can be made hostile."""
    cid_bytes = CID.parse(cid(1)).to_bytes() if cid_bytes is None else cid_bytes
    one = sha256 + raw_str(cid_bytes) + encode_varint(size) + raw_str(filename)
    head = bytes([version, kind]) + raw_str(repo) + raw_str(arch) + bytes([flags])
    return head + encode_varint(1 if count is None else count) + one + tail


def test_topic_and_protocol_names_carry_the_version() -> None:
    assert topic("extra", "x86_64") == "/pacswarm/1/extra/x86_64"
    assert INVENTORY_PROTOCOL == "/pacswarm/inventory/1.0.0"
    with pytest.raises(ProtocolError, match="repository"):
        topic("../etc", "x86_64")


@pytest.mark.parametrize("port", [None, 4080])
@pytest.mark.parametrize("digest", [None, DIGEST])
def test_news_round_trip(port: int | None, digest: Digest | None) -> None:
    news = News("extra", "x86_64", tuple(entry(i) for i in range(5)), port, digest)
    assert decode_news(encode_news(news)) == news


def test_news_cids_come_back_canonical_and_raw_cids_are_accepted() -> None:
    raw = str(CID.of(b"small", RAW))
    as_b58 = "z" + b58encode(CID.parse(raw).to_bytes())
    news = News("core", "x86_64", (Entry(sha(1), as_b58, 1, "a-1-1-any.pkg.tar.zst"),), None)
    assert decode_news(encode_news(news)).entries[0].cid == raw


def test_a_valid_hand_built_message_decodes() -> None:
    """The hand-built messages below differ from this one in a single field only."""
    news = decode_news(raw_news())
    assert news.entries[0].filename == "a-1-1-any.pkg.tar.zst"


CIDV0 = CID.of(b"x", DAG_PB, version=0).to_bytes()
ODD_CODEC = encode_varint(1) + encode_varint(0x71) + CID.parse(cid(1)).to_bytes()[2:]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (raw_news(version=2), "unsupported protocol version 2"),
        (raw_news(version=0), "unsupported protocol version 0"),
        (raw_news(kind=3), "message type"),
        (b"\x01", "truncated"),
        (b"", "truncated"),
        (raw_news(repo=b".."), "invalid repository"),
        (raw_news(repo=b"a/b"), "invalid repository"),
        (raw_news(arch=b"x86_64/../.."), "invalid architecture"),
        (raw_news(repo=b"\xff\xfe"), "not UTF-8"),
        (raw_news(flags=0x80), "unknown flags"),
        (raw_news(flags=0x01)[:-3], "truncated"),
        (raw_news(count=MAX_ENTRIES + 1), "exceeds the limit"),
        (raw_news(count=2), "truncated"),
        (raw_news(cid_bytes=CIDV0), "CIDv1"),
        (raw_news(cid_bytes=ODD_CODEC), "CIDv1"),
        (raw_news(cid_bytes=b"\x01\x70\x11\x20" + bytes(32)), "bad CID"),
        (raw_news(cid_bytes=CID.parse(cid(1)).to_bytes() + b"x"), "CIDv1"),
        (raw_news(cid_bytes=bytes(100)), "CID length"),
        (raw_news(size=MAX_SIZE + 1), "size"),
        (raw_news(filename=b"../../etc/passwd.pkg.tar.zst"), "invalid package file name"),
        (raw_news(filename=b"a/b-1-1-any.pkg.tar.zst"), "invalid package file name"),
        (raw_news(filename=b"..pkg.tar.zst"), "invalid package file name"),
        (raw_news(filename=b"extra.db"), "not a package file name"),
        (raw_news(filename=b"a-1-1-any.pkg.tar.zst.sig"), "not a package file name"),
        (raw_news(filename=b"a" * 300 + b".pkg.tar.zst"), "filename length"),
        (raw_news(filename=b"x\x00.pkg.tar.zst"), "invalid package file name"),
        (raw_news(tail=b"\x01\x05ab"), "truncated"),
        (raw_news(tail=b"\xff" * 10), "varint"),
        (raw_news()[:15] + b"\x00\x81\x00" + raw_news()[17:], "non-minimal varint"),
        (raw_news() + bytes(MAX_MESSAGE), "exceeds"),
    ],
    ids=lambda value: "news" if isinstance(value, bytes) else value,
)
def test_hostile_news_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_news(data)


def test_gateway_port_zero_and_digest_count_are_checked() -> None:
    head = bytes([VERSION, 1]) + raw_str(b"extra") + raw_str(b"x86_64")
    with pytest.raises(ProtocolError, match="gateway port 0"):
        decode_news(head + b"\x01\x00\x00\x00")
    huge = encode_varint(10**6)
    with pytest.raises(ProtocolError, match="digest count"):
        decode_news(head + b"\x02" + bytes(32) + huge + bytes(32) + b"\x00")


def test_every_truncation_and_random_corruption_gives_only_protocol_error() -> None:
    """Whatever a peer sends, the validator sees ProtocolError or a valid News, never a crash."""
    good = encode_news(News("extra", "x86_64", tuple(entry(i) for i in range(3)), 4080, DIGEST))
    for cut in range(len(good)):
        with pytest.raises(ProtocolError):
            decode_news(good[:cut])
    rng = random.Random(7)
    for _ in range(3000):
        bad = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        with contextlib.suppress(ProtocolError):
            decode_news(bytes(bad))


def test_random_corruption_of_inventories_and_requests_gives_only_protocol_error() -> None:
    db = arch_db(300)
    rng = random.Random(8)
    messages = [
        (encode_inventory("extra", "x86_64", db, held_of(db, 40), db_digest(db), 4080), True),
        (encode_inventory("extra", "x86_64", db, held_of(db, 40), "00" * 32, 4080), True),
        (encode_request(InventoryRequest("extra", "x86_64", db_digest(db))), False),
    ]
    for good, inventory in messages:
        for _ in range(1000):
            bad = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                bad[rng.randrange(len(bad))] = rng.randrange(256)
            with contextlib.suppress(ProtocolError):
                decode_inventory(bytes(bad), db) if inventory else decode_request(bytes(bad))


def test_unknown_extensions_are_skipped_so_version_1_can_grow() -> None:
    good = encode_news(News("extra", "x86_64", (entry(1),), 4080))
    extended = good + encode_varint(9) + raw_str(b"a field from the future")
    assert decode_news(extended) == decode_news(good)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Entry("AB" * 32, cid(1), 1, "a-1-1-any.pkg.tar.zst"), "lowercase hex"),
        (Entry("ab" * 31, cid(1), 1, "a-1-1-any.pkg.tar.zst"), "64 lowercase hex"),
        (Entry("zz" * 32, cid(1), 1, "a-1-1-any.pkg.tar.zst"), "not hex"),
        (Entry(sha(1), "QmNotACid", 1, "a-1-1-any.pkg.tar.zst"), "bad CID"),
        (Entry(sha(1), str(CID.of(b"x", DAG_PB, 0)), 1, "a-1-1-any.pkg.tar.zst"), "CIDv1"),
        (Entry(sha(1), cid(1), -1, "a-1-1-any.pkg.tar.zst"), "size"),
        (Entry(sha(1), cid(1), True, "a-1-1-any.pkg.tar.zst"), "size"),
        (Entry(sha(1), cid(1), 1, "../a-1-1-any.pkg.tar.zst"), "file name"),
    ],
)
def test_encoder_refuses_what_the_decoder_would_refuse(bad: Entry, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        encode_news(News("extra", "x86_64", (bad,), None))


def test_encoder_limits() -> None:
    with pytest.raises(ProtocolError, match="gateway port"):
        encode_news(News("extra", "x86_64", (), 70000))
    too_many = tuple(entry(i) for i in range(MAX_ENTRIES + 1))
    with pytest.raises(ProtocolError, match="batch_news"):
        encode_news(News("extra", "x86_64", too_many, None))


def test_batch_news_splits_10000_entries_within_the_limits_and_loses_none() -> None:
    entries = [entry(i) for i in range(10_000)]
    batches = batch_news("extra", "x86_64", entries, 4080, DIGEST)
    encoded = [encode_news(n) for n in batches]
    assert all(len(e) <= MAX_MESSAGE for e in encoded)
    decoded = [decode_news(e) for e in encoded]
    assert [x for n in decoded for x in n.entries] == entries
    assert [n.digest for n in decoded] == [None] * (len(batches) - 1) + [DIGEST]
    assert batch_news("extra", "x86_64", [], 4080) == []
    (only,) = batch_news("extra", "x86_64", [], 4080, DIGEST)
    assert only.entries == () and only.digest == DIGEST


def test_news_sizes_are_the_documented_ones() -> None:
    """A digest-only news is 85 bytes, an entry 32 + 37 + size varint + 1 + the file name."""
    digest = Digest("ab" * 32, 700, "cd" * 32)  # 700 held: a 2-byte count
    assert len(encode_news(News("extra", "x86_64", (), 4080, digest))) == 85
    one = Entry(sha(1), cid(1), 50_000_000, "linux-firmware-20240610.8ad6fc0b-1-any.pkg.tar.zst")
    empty = len(encode_news(News("extra", "x86_64", (), 4080)))
    with_one = len(encode_news(News("extra", "x86_64", (one,), 4080)))
    assert with_one - empty == 32 + 37 + 4 + 1 + len(one.filename)


def test_db_and_held_digests_ignore_order() -> None:
    db = arch_db(100)
    assert db_digest(db) == db_digest(list(reversed(db)))
    assert db_digest(db) != db_digest(db[:-1])
    changed = [*db[:-1], DbItem(db[-1].filename, sha(10**6), db[-1].size)]
    assert db_digest(db) != db_digest(changed)
    assert held_digest([sha(1), sha(2), sha(1)]) == held_digest([sha(2), sha(1)])
    assert held_digest([sha(1)]) != held_digest([sha(2)])


def test_request_round_trip_and_hostile_requests() -> None:
    request = InventoryRequest("extra", "x86_64", db_digest(arch_db(10)))
    assert decode_request(encode_request(request)) == request
    data = encode_request(request)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_request(data[:-1])
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_request(data + bytes(2000))
    with pytest.raises(ProtocolError, match="message type"):
        decode_request(encode_news(News("extra", "x86_64", (), None)))
    with pytest.raises(ProtocolError, match="hex"):
        encode_request(InventoryRequest("extra", "x86_64", "nope"))


def held_of(db: list[DbItem], n: int, seed: int = 1) -> dict[str, str]:
    rng = random.Random(seed)
    return {item.sha256: cid(i) for i, item in rng.sample(list(enumerate(db)), n)}


def test_inventory_at_arch_scale_is_a_2kb_bitfield_plus_the_cids() -> None:
    """15,000 packages in extra, 500 held: 1,875 bytes of bitfield + 500 * 37 bytes of CIDs."""
    db = arch_db()
    held = held_of(db, 500)
    data = encode_inventory("extra", "x86_64", db, held, db_digest(db), 4080)
    bitfield = 15_000 // 8
    header = 2 + 6 + 7 + 1 + 2 + 32 + 2  # version, type, repo, arch, flags, port, db, count
    assert len(data) == header + bitfield + 500 * 37 == 20_427
    entries, port = decode_inventory(data, list(reversed(db)))
    assert port == 4080
    assert {e.sha256: e.cid for e in entries} == held
    by_sha = {item.sha256: item for item in db}
    assert all(by_sha[e.sha256].filename == e.filename for e in entries)


def test_inventory_against_another_db_is_an_explicit_list() -> None:
    db = arch_db(2000)
    held = held_of(db, 50)
    held[sha(10**7)] = cid(10**7)  # not in our db: not sent
    data = encode_inventory("extra", "x86_64", db, held, "00" * 32, None)
    entries, port = decode_inventory(data, arch_db(10))  # the asker's db is different
    assert port is None
    assert {e.sha256 for e in entries} == set(held) - {sha(10**7)}


def test_hostile_inventories_are_refused() -> None:
    db = arch_db(20)
    held = held_of(db, 5)
    data = encode_inventory("extra", "x86_64", db, held, db_digest(db), 4080)
    with pytest.raises(ProtocolError, match="another db"):
        decode_inventory(data, arch_db(21))
    for cut in range(len(data)):
        with pytest.raises(ProtocolError):
            decode_inventory(data[:cut], db)
    # Set a bit past the end of the 20-package db (the last byte holds bits 16..23).
    head = len(data) - 5 * 37 - 3
    bad = bytearray(data)
    bad[head + 2] |= 0x01
    with pytest.raises(ProtocolError, match="past the end"):
        decode_inventory(bytes(bad), db)
    with pytest.raises(ProtocolError, match="message type"):
        decode_inventory(encode_request(InventoryRequest("extra", "x86_64", "00" * 32)), db)
    listed = bytes([VERSION, 3]) + raw_str(b"extra") + raw_str(b"x86_64") + b"\x00"
    with pytest.raises(ProtocolError, match="entry count"):
        decode_inventory(listed + encode_varint(10**6), db)
