"""IPNS records: what other IPFS implementations will believe, and what they must refuse.

The known key is ed25519 from seed 0x01 * 32; its name and peer ID were computed with
js-libp2p (``publicKey.toCID().toString(base36)``), not with the code under test.
"""

from __future__ import annotations

import base64

import cbor2
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.records.ipns import IPNSValidator
from libp2p.records.pb.ipns_pb2 import IpnsEntry
from libp2p.records.utils import InvalidRecordType

from pacswarm.ipfs.cid import encode_varint
from pacswarm.ipns import cbor
from pacswarm.ipns.record import (
    IpnsRecordError,
    build_record,
    cbor_data,
    format_validity,
    ipns_name,
    name_multihash,
    parse_ipns_name,
    parse_validity,
    pubsub_topic,
    routing_key,
    validate_record,
)

KNOWN_NAME = "k51qzi5uqu5djmw2yvf8kk5cdjc1ddc00o4d5sjwi6f79xzcay9j3gkddw5uu4"
KNOWN_PEER_ID = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
NOW = 1_796_181_973_029_682_354  # 2026-12-02T03:26:13.029682354Z
HOUR = 3600 * 10**9
VALUE = "/ipfs/bafkqaaa"


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return create_new_key_pair(b"\x01" * 32)


@pytest.fixture(scope="module")
def mh(key: KeyPair) -> bytes:
    return name_multihash(key.public_key)


def _record(key: KeyPair, **overrides: int) -> bytes:
    args = {"sequence": 3, "now_ns": NOW, "lifetime_ns": 48 * HOUR, "ttl_ns": 300 * 10**9}
    args.update(overrides)
    return build_record(key.private_key, VALUE, **args)


def _pb(fields: list[tuple[int, int | bytes]]) -> bytes:
    """A protobuf message from (field, value) pairs, written here independently."""
    out = b""
    for number, value in fields:
        if isinstance(value, int):
            out += encode_varint(number << 3) + encode_varint(value)
        else:
            out += encode_varint(number << 3 | 2) + encode_varint(len(value)) + value
    return out


def _fields(raw: bytes) -> dict[int, int | bytes]:
    entry = IpnsEntry()
    entry.ParseFromString(raw)
    return {f.number: v for f, v in entry.ListFields()} | {3: entry.validityType}


def _rebuild(raw: bytes, **changes: int | bytes) -> bytes:
    """The record with some fields replaced (keyword ``f<number>``), others as they were."""
    fields = _fields(raw)
    for name, value in changes.items():
        fields[int(name[1:])] = value
    return _pb(sorted(fields.items()))


def test_round_trip(key: KeyPair, mh: bytes) -> None:
    raw = _record(key)
    rec = validate_record(raw, mh, now_ns=NOW + HOUR)
    assert rec.value == VALUE.encode()
    assert rec.sequence == 3
    assert rec.ttl_ns == 300 * 10**9
    assert rec.validity == "2026-12-04T03:26:13.029682354Z"
    assert rec.validity_ns == NOW + 48 * HOUR
    assert rec.raw == raw
    # The V1 fields are there for old readers, carrying the same values.
    v1 = _fields(raw)
    assert v1[1] == VALUE.encode() and v1[5] == 3 and v1[6] == 300 * 10**9
    assert v1[4] == b"2026-12-04T03:26:13.029682354Z"
    assert 7 not in v1  # ed25519: the key is in the name, no pubKey


def test_canonical_cbor_bytes_for_a_known_case() -> None:
    data = cbor_data(b"/ipfs/bafkqaaa", 3, b"2026-12-04T03:26:13.029682354Z", 300 * 10**9)
    expected = b"".join(
        (
            b"\xa5",  # map, 5 pairs; keys by length, then bytes:
            b"\x63TTL" + b"\x1b" + (300 * 10**9).to_bytes(8, "big"),  # uint64 head
            b"\x65Value" + b"\x4e/ipfs/bafkqaaa",
            b"\x68Sequence" + b"\x03",  # "Sequence" < "Validity" (S < V)
            b"\x68Validity" + b"\x58\x1e2026-12-04T03:26:13.029682354Z",  # bytes, 1-byte len
            b"\x6cValidityType" + b"\x00",
        )
    )
    assert data == expected
    # An independent CBOR library in canonical mode agrees.
    decoded = cbor2.loads(data)
    assert cbor2.dumps(decoded, canonical=True) == data


def test_cbor_integer_heads_are_shortest() -> None:
    for n, head in ((23, b"\x17"), (24, b"\x18\x18"), (255, b"\x18\xff"), (256, b"\x19\x01\x00")):
        assert cbor.encode(n) == head
    assert cbor.encode(2**32) == b"\x1b" + (2**32).to_bytes(8, "big")
    assert cbor.encode(2**32 - 1) == b"\x1a\xff\xff\xff\xff"


def test_non_canonical_cbor_is_refused() -> None:
    with pytest.raises(cbor.CborError):
        cbor.decode(b"\xa2\x65Value\x00\x63TTL\x00")  # keys out of order
    with pytest.raises(cbor.CborError):
        cbor.decode(b"\x18\x05")  # 5 in a 1-byte head
    with pytest.raises(cbor.CborError):
        cbor.decode(b"\xbf\xff")  # indefinite-length map


def test_go_validity_format() -> None:
    """Go's RFC3339Nano, as boxo writes Validity: trailing zeros (and a bare '.') dropped."""
    assert format_validity(NOW) == "2026-12-02T03:26:13.029682354Z"
    assert format_validity(NOW - 4) == "2026-12-02T03:26:13.02968235Z"
    assert format_validity(NOW - 9_682_354) == "2026-12-02T03:26:13.02Z"
    assert format_validity(0) == "1970-01-01T00:00:00Z"
    assert format_validity(10**9 + 1) == "1970-01-01T00:00:01.000000001Z"
    assert parse_validity("2026-12-02T03:26:13.029682354Z") == NOW
    assert parse_validity("2026-12-02T05:26:13.029682354+02:00") == NOW
    assert parse_validity("2026-12-02T03:26:13Z") == NOW - 29_682_354


def test_tampered_value_is_refused(key: KeyPair, mh: bytes) -> None:
    raw = _record(key)
    # V1 value changed, signed data intact: V1 disagrees with V2.
    with pytest.raises(IpnsRecordError, match="disagrees"):
        validate_record(_rebuild(raw, f1=b"/ipfs/bafkqaab"), mh, now_ns=NOW)
    # Signed data's Value changed (same length): signatureV2 no longer verifies.
    data = _fields(raw)[9]
    forged = data.replace(b"/ipfs/bafkqaaa", b"/ipfs/bafkqaab")
    with pytest.raises(IpnsRecordError, match="signatureV2"):
        validate_record(_rebuild(raw, f9=forged, f1=b"/ipfs/bafkqaab"), mh, now_ns=NOW)


def test_tampered_signature_is_refused(key: KeyPair, mh: bytes) -> None:
    raw = _record(key)
    sig = bytearray(_fields(raw)[8])
    sig[10] ^= 1
    with pytest.raises(IpnsRecordError, match="signatureV2"):
        validate_record(_rebuild(raw, f8=bytes(sig)), mh, now_ns=NOW)


def test_tampered_sequence_is_refused(key: KeyPair, mh: bytes) -> None:
    raw = _record(key)
    with pytest.raises(IpnsRecordError, match="disagrees"):
        validate_record(_rebuild(raw, f5=99), mh, now_ns=NOW)
    data = _fields(raw)[9].replace(b"hSequence\x03", b"hSequence\x09")
    with pytest.raises(IpnsRecordError, match="signatureV2"):
        validate_record(_rebuild(raw, f9=data, f5=9), mh, now_ns=NOW)


def test_v1_ttl_and_validity_mismatch_refused(key: KeyPair, mh: bytes) -> None:
    raw = _record(key)
    with pytest.raises(IpnsRecordError, match="disagrees"):
        validate_record(_rebuild(raw, f6=1), mh, now_ns=NOW)
    with pytest.raises(IpnsRecordError, match="disagrees"):
        validate_record(_rebuild(raw, f4=b"2099-01-01T00:00:00.000000000Z"), mh, now_ns=NOW)


def test_v2_only_record_is_accepted_and_v1_only_refused(key: KeyPair, mh: bytes) -> None:
    fields = _fields(_record(key))
    v2_only = _pb([(8, fields[8]), (9, fields[9])])
    assert validate_record(v2_only, mh, now_ns=NOW).sequence == 3
    v1_only = _pb([(n, fields[n]) for n in (1, 2, 3, 4, 5, 6)])
    with pytest.raises(IpnsRecordError, match="signatureV2"):
        validate_record(v1_only, mh, now_ns=NOW)


def test_expired_record_is_refused(key: KeyPair, mh: bytes) -> None:
    raw = _record(key, lifetime_ns=HOUR)
    assert validate_record(raw, mh, now_ns=NOW + HOUR).sequence == 3  # the last instant
    with pytest.raises(IpnsRecordError, match=r"expired at 2026-12-02T04:26:13\.029682354Z"):
        validate_record(raw, mh, now_ns=NOW + HOUR + 1)


def test_record_for_another_name_is_refused(key: KeyPair) -> None:
    other = name_multihash(create_new_key_pair(b"\x02" * 32).public_key)
    with pytest.raises(IpnsRecordError, match="signatureV2"):
        validate_record(_record(key), other, now_ns=NOW)


def test_size_limit(key: KeyPair, mh: bytes) -> None:
    with pytest.raises(IpnsRecordError, match="10240"):
        build_record(
            key.private_key,
            "/ipfs/" + "a" * 5000,
            sequence=1,
            now_ns=NOW,
            lifetime_ns=HOUR,
            ttl_ns=0,
        )
    # A valid record padded with an unknown field: exactly 10 KiB passes, one byte more not.
    raw = _record(key)
    at_limit = raw + _pb([(15, b"x" * (10 * 1024 - len(raw) - 3))])  # 3: tag + 2-byte length
    assert len(at_limit) == 10 * 1024
    assert validate_record(at_limit, mh, now_ns=NOW).sequence == 3
    padded = raw + _pb([(15, b"x" * (10 * 1024 - len(raw) - 2))])
    with pytest.raises(IpnsRecordError, match="over the spec's 10240"):
        validate_record(padded, mh, now_ns=NOW)


def test_name_routing_key_and_topic_of_a_known_key(key: KeyPair, mh: bytes) -> None:
    assert mh == ID.from_base58(KNOWN_PEER_ID).to_bytes()
    assert mh[:2] == b"\x00\x24"  # identity multihash, 36 bytes: the key is inlined
    assert ipns_name(mh) == KNOWN_NAME
    assert len(KNOWN_NAME) == 62 and KNOWN_NAME.startswith("k51qzi5uqu5")
    assert parse_ipns_name(KNOWN_NAME) == mh
    assert routing_key(mh) == b"/ipns/" + mh
    topic = "/record/L2lwbnMvACQIARIgiojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"
    assert pubsub_topic(mh) == topic
    assert base64.urlsafe_b64decode(topic[8:] + "=") == b"/ipns/" + mh


def test_py_libp2p_validator_accepts_ours_and_refuses_tampered(key: KeyPair, mh: bytes) -> None:
    """py-libp2p's IPNSValidator (registered by its KadDHT) is an independent implementation.

    It checks expiry against the wall clock, so the record is built valid from now.
    """
    import time

    raw = _record(key, now_ns=time.time_ns())
    libp2p_key = "/ipns/" + mh.hex()
    IPNSValidator().validate(libp2p_key, raw)
    details = IPNSValidator().validate_with_details(libp2p_key, raw)
    assert details.value == VALUE.encode() and details.sequence == 3
    assert details.has_v1_fields and details.public_key_inlined
    whole_seconds = _record(key, now_ns=time.time_ns() // 10**9 * 10**9)  # "...:13Z"
    IPNSValidator().validate(libp2p_key, whole_seconds)
    sig = bytearray(_fields(raw)[8])
    sig[0] ^= 1
    with pytest.raises(InvalidRecordType):
        IPNSValidator().validate(libp2p_key, _rebuild(raw, f8=bytes(sig)))
    with pytest.raises(InvalidRecordType):
        IPNSValidator().validate(libp2p_key, _rebuild(raw, f5=4))
    with pytest.raises(InvalidRecordType, match="expired"):
        expired = _record(key, now_ns=time.time_ns() - 2 * HOUR, lifetime_ns=HOUR)
        IPNSValidator().validate(libp2p_key, expired)


@pytest.mark.parametrize("cut", [0, 1, 17, 100, -1])
def test_garbage_and_truncated_records_are_clear_errors(key: KeyPair, mh: bytes, cut: int) -> None:
    raw = _record(key)
    with pytest.raises(IpnsRecordError):
        validate_record(raw[:cut], mh, now_ns=NOW)
    with pytest.raises(IpnsRecordError):
        validate_record(b"\xff" * cut if cut > 0 else b"\xff", mh, now_ns=NOW)
