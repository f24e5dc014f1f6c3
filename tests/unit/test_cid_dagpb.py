"""CIDs (v0/v1, base32/base58/base16) and dag-pb blocks: the names every block is checked by."""

from __future__ import annotations

import base64
import hashlib

import pytest

from pacswarm.ipfs.cid import (
    CID,
    DAG_PB,
    RAW,
    CIDError,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
)
from pacswarm.ipfs.dagpb import PBLink, PBNode, decode_node, encode_link, encode_node

EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # sha256 of b""
HELLO_RAW = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"  # b"hello world"
EMPTY_DIR_V0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"  # the well-known empty dir
EMPTY_DIR_BLOCK = b"\x0a\x02\x08\x01"


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varint_round_trip(n: int) -> None:
    encoded = encode_varint(n)
    assert decode_varint(encoded + b"junk") == (n, len(encoded))


def test_varint_truncated_or_overlong() -> None:
    with pytest.raises(CIDError):
        decode_varint(b"\x80")
    with pytest.raises(CIDError):
        decode_varint(b"\xff" * 10)


def test_base58_round_trip_keeps_leading_zeros() -> None:
    for data in (b"", b"\0", b"\0\0\x01\x02", hashlib.sha256(b"x").digest()):
        assert b58decode(b58encode(data)) == data
    with pytest.raises(CIDError):
        b58decode("0OIl")


def test_known_cids() -> None:
    assert str(CID.of(b"")) == EMPTY_RAW
    assert str(CID.of(b"hello world")) == HELLO_RAW
    assert str(CID.of(EMPTY_DIR_BLOCK, DAG_PB, version=0)) == EMPTY_DIR_V0
    assert CID.parse(EMPTY_DIR_V0).verify(EMPTY_DIR_BLOCK)


def test_v1_string_forms_round_trip() -> None:
    cid = CID.of(b"hello world")
    raw = cid.to_bytes()
    assert raw[:4] == b"\x01\x55\x12\x20"
    forms = {
        str(cid),
        "b" + base64.b32encode(raw).decode().lower().rstrip("="),
        "z" + b58encode(raw),
        "f" + raw.hex(),
    }
    assert len(forms) == 3
    for text in forms:
        assert CID.parse(text) == cid
        assert str(CID.parse(text)) == HELLO_RAW


def test_v0_round_trip_and_relation_to_v1() -> None:
    v0 = CID.parse(EMPTY_DIR_V0)
    assert (v0.version, v0.codec) == (0, DAG_PB)
    assert v0.to_bytes() == b"\x12\x20" + v0.digest
    assert str(v0) == EMPTY_DIR_V0
    v1 = CID(1, DAG_PB, v0.digest)
    assert str(v1).startswith("bafy")
    assert CID.parse(str(v1)) == v1
    assert CID.from_bytes(v0.to_bytes()) == (v0, 34)
    assert CID.from_bytes(v1.to_bytes() + b"tail") == (v1, 36)


def test_cid_v0_only_names_dag_pb() -> None:
    with pytest.raises(CIDError):
        CID.of(b"x", RAW, version=0)


def test_verify() -> None:
    cid = CID.of(b"block")
    assert cid.verify(b"block")
    assert cid.verify(memoryview(b"block"))
    assert not cid.verify(b"Block")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" + EMPTY_RAW[1:],
        "B" + EMPTY_RAW[1:].upper(),  # base32upper: not a base we accept
        EMPTY_RAW + "!",
        EMPTY_RAW[:-3],  # truncated digest
        EMPTY_RAW + "aa",  # trailing bytes
        "bafkqaaa",  # identity multihash
        "zz",
        "z0OIl",
        "f0",
        "f" + "02551220" + "00" * 32,  # CID version 2
        "f" + "01711220" + "00" * 32,  # dag-cbor codec
        "f" + "01551320" + "00" * 32,  # sha2-512 code
        "f" + "01551210" + "00" * 16,  # short digest
        "Qm" + "0" * 44,
        "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3N",  # 45 characters
        "../../etc/passwd",
    ],
)
def test_bad_cid_strings_raise_cid_error(text: str) -> None:
    with pytest.raises(CIDError):
        CID.parse(text)


def test_cid_error_is_a_value_error() -> None:
    assert issubclass(CIDError, ValueError)


# -- dag-pb ---------------------------------------------------------------------------------


def test_dag_pb_round_trip() -> None:
    a, b = CID.of(b"a"), CID.of(b"b", DAG_PB)
    node = PBNode((PBLink(a, "", 1), PBLink(b, "named ünïcode", 2**40)), b"\x08\x02\x18\x05")
    block = encode_node(node)
    assert decode_node(block) == node
    assert decode_node(memoryview(block)) == node


def test_dag_pb_without_data_or_links() -> None:
    assert decode_node(encode_node(PBNode((), None))) == PBNode((), None)
    assert encode_node(PBNode((), None)) == b""
    assert decode_node(EMPTY_DIR_BLOCK) == PBNode((), b"\x08\x01")
    assert encode_node(PBNode((), b"\x08\x01")) == EMPTY_DIR_BLOCK


def test_dag_pb_canonical_field_order() -> None:
    """Links (field 2) before Data (field 1); Name written even when empty (as boxo)."""
    cid = CID.of(b"leaf")
    link = encode_link(PBLink(cid, "", 4))
    assert link == b"\x0a\x24" + cid.to_bytes() + b"\x12\x00\x18\x04"
    block = encode_node(PBNode((PBLink(cid, "", 4),), b"D"))
    assert block == b"\x12" + bytes([len(link)]) + link + b"\x0a\x01D"


@pytest.mark.parametrize(
    "block",
    [
        b"\x0a\x05ab",  # Data runs past the end
        b"\x0d\x00\x00\x00\x00",  # fixed32 wire type
        b"\x12\x02\x18\x01",  # link without a Hash
        b"\x12\x03\x0a\x01\x01",  # link with a truncated CID
        b"\x0a",  # a key with no value
    ],
)
def test_dag_pb_malformed(block: bytes) -> None:
    with pytest.raises(CIDError):
        decode_node(block)
