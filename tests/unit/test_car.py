"""CARv1 framing: what we write parses back, and a hostile stream is refused early."""

from __future__ import annotations

import pytest

from pacswarm.ipfs.car import MAX_FRAME, CarError, CarReader, encode_frame, encode_header
from pacswarm.ipfs.cid import CID, DAG_PB, encode_varint
from pacswarm.ipfs.unixfs import CHUNK_SIZE, import_bytes

DATA = bytes(range(256)) * (3 * CHUNK_SIZE // 256) + b"end"


def sample_car() -> tuple[CID, list[tuple[CID, bytes]], bytes]:
    result = import_bytes(DATA)
    blocks = [(n.cid, n.block) for n in result.inner]
    blocks += [(lf.cid, DATA[lf.offset : lf.offset + lf.length]) for lf in result.leaves]
    body = encode_header(result.root) + b"".join(encode_frame(c, b) for c, b in blocks)
    return result.root, blocks, body


def test_header_is_the_canonical_dag_cbor_map() -> None:
    root = CID.of(b"x")
    header = encode_header(root)
    body = header[1:]
    assert header[0] == len(body)
    cid_field = b"\x00" + root.to_bytes()
    assert body == (
        b"\xa2\x65roots\x81\xd8\x2a\x58" + bytes([len(cid_field)]) + cid_field + b"\x67version\x01"
    )


@pytest.mark.parametrize("root", [CID.of(b"raw root"), CID.of(b"pb root", DAG_PB, version=0)])
def test_header_parsed_back(root: CID) -> None:
    reader = CarReader()
    assert reader.feed(encode_header(root)) == []
    assert reader.roots == (root,)
    reader.finish()


def test_blocks_parsed_back_in_order() -> None:
    root, blocks, body = sample_car()
    reader = CarReader()
    assert reader.feed(body) == blocks
    assert reader.roots == (root,)
    reader.finish()


def test_fed_one_byte_at_a_time() -> None:
    root, blocks, _ = sample_car()
    small = [(CID.of(b"one"), b"one"), (CID.of(b""), b""), (CID.of(b"three"), b"three")]
    body = encode_header(root) + b"".join(encode_frame(c, b) for c, b in small)
    body += encode_frame(*blocks[0])
    reader = CarReader()
    got: list[tuple[CID, bytes]] = []
    for i in range(len(body)):
        got += reader.feed(body[i : i + 1])
    assert got == [*small, blocks[0]]
    assert reader.roots == (root,)
    reader.finish()


def test_frame_over_max_frame_refused_before_it_arrives() -> None:
    reader = CarReader()
    reader.feed(encode_header(CID.of(b"x")))
    with pytest.raises(CarError, match="refused"):
        reader.feed(encode_varint(MAX_FRAME + 1))


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    cid = CID.of(b"x")
    block = bytes(MAX_FRAME - len(cid.to_bytes()))
    frame = encode_frame(CID.of(block), block)
    reader = CarReader()
    reader.feed(encode_header(cid))
    assert reader.feed(frame) == [(CID.of(block), block)]


def test_zero_length_frame_refused() -> None:
    reader = CarReader()
    reader.feed(encode_header(CID.of(b"x")))
    with pytest.raises(CarError):
        reader.feed(b"\x00")


def test_block_not_matching_its_cid() -> None:
    reader = CarReader()
    reader.feed(encode_header(CID.of(b"x")))
    with pytest.raises(CarError, match="does not match"):
        reader.feed(encode_frame(CID.of(b"good"), b"evil"))


def test_bad_cid_in_frame() -> None:
    reader = CarReader()
    reader.feed(encode_header(CID.of(b"x")))
    bad = b"\x02\x55\x12\x20" + bytes(32) + b"block"
    with pytest.raises(CarError, match="bad CID"):
        reader.feed(encode_varint(len(bad)) + bad)


def test_bad_frame_length() -> None:
    with pytest.raises(CarError, match="length"):
        CarReader().feed(b"\xff" * 9)


def test_truncated_stream() -> None:
    _, _, body = sample_car()
    reader = CarReader()
    reader.feed(body[:-10])
    with pytest.raises(CarError, match="inside a frame"):
        reader.finish()


def test_empty_stream() -> None:
    with pytest.raises(CarError, match="no header"):
        CarReader().finish()


def test_not_a_car_header() -> None:
    junk = b"\xa1\x63foo\x01"
    with pytest.raises(CarError, match="not a CARv1"):
        CarReader().feed(encode_varint(len(junk)) + junk)


def test_header_with_an_unsupported_root_cid_is_refused() -> None:
    """An identity-hash root (e.g. the probe CID bafkqaaa) is refused (CIDError, a ValueError)."""
    body = b"\xa2\x65roots\x81\xd8\x2a\x45\x00\x01\x55\x00\x00\x67version\x01"
    with pytest.raises(ValueError):
        CarReader().feed(encode_varint(len(body)) + body)


def test_header_cut_after_a_cid_tag_is_a_car_error() -> None:
    body = b"\xa2\x65roots\x80\x67version\x01\xd8\x2a"
    with pytest.raises(CarError):
        CarReader().feed(encode_varint(len(body)) + body)


def test_unsupported_hash_in_header_is_refused() -> None:
    body = b"\xa2\x65roots\x81\xd8\x2a\x58\x25\x00\x01\x71\x13\x20" + bytes(32)
    body += b"\x67version\x01"
    with pytest.raises(CarError):
        CarReader().feed(encode_varint(len(body)) + body)


def test_any_chunking_of_a_car_gives_the_same_verified_blocks() -> None:
    """Frames inside a chunk are views, straddling frames are assembled: same result."""
    import random

    from pacswarm.ipfs.car import encode_frame
    from pacswarm.ipfs.unixfs import import_bytes

    data = random.Random(7).randbytes(3 * 262144 + 999)
    result = import_bytes(data)
    blocks = [(i.cid, i.block) for i in result.inner] + [
        (leaf.cid, data[leaf.offset : leaf.offset + leaf.length]) for leaf in result.leaves
    ]
    car = encode_header(result.root) + b"".join(encode_frame(c, b) for c, b in blocks)
    rng = random.Random(11)
    for _ in range(30):
        reader, got, pos = CarReader(), [], 0
        while pos < len(car):
            step = rng.choice([1, 2, 7, 100, 4096, 262144, 300000, len(car)])
            got += [(cid, bytes(block)) for cid, block in reader.feed(car[pos : pos + step])]
            pos += step
        reader.finish()
        assert reader.roots == (result.root,)
        assert got == blocks
