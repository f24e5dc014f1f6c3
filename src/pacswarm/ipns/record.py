"""IPNS records (the IPNS record spec): build, validate, and the name's three spellings. Pure.

A record is the protobuf ``IpnsEntry``. What counts is V2: ``data`` (field 9), a DAG-CBOR map
{Sequence, TTL, Validity, ValidityType, Value}, signed as ``signatureV2`` (field 8) over
``b"ipns-signature:" + data``. For older readers we also fill the V1 fields (1-6) with the same
values and a ``signatureV1`` over ``value + validity + b"EOL"``, as boxo and Helia do by
default; a validator must never trust them, only check they agree with ``data``. ``pubKey``
(7) is left out: an ed25519 key is inlined in the name itself (identity multihash).

Validity is RFC 3339 UTC to the nanosecond as boxo (kubo) writes it, Go's ``RFC3339Nano``:
trailing zeros of the fraction dropped, and the fraction too when it is zero
(``2026-12-04T03:26:13.02Z``, ``2026-12-04T03:26:13Z``). Helia always writes nine digits; every
reader parses both. TTL is in nanoseconds. The clock is a parameter (``now_ns``), so everything
here is deterministic.

Why hand-rolled protobuf: seven scalar fields, and we want to know which V1 fields were
*present* (proto3 bindings cannot tell ``sequence = 0`` from absent).
"""

from __future__ import annotations

import base64
import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from libp2p.crypto.keys import PrivateKey, PublicKey
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from pacswarm.errors import PacswarmError
from pacswarm.ipfs.cid import CIDError, decode_base, decode_varint, encode_base, encode_varint
from pacswarm.ipns import cbor

MAX_RECORD_SIZE = 10 * 1024
SIGNATURE_V2_PREFIX = b"ipns-signature:"
LIBP2P_KEY = 0x72
IDENTITY_MULTIHASH = 0x00
VALIDITY_EOL = 0
ROUTING_PREFIX = b"/ipns/"
PUBSUB_TOPIC_PREFIX = "/record/"
_NS = 10**9
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"

# IpnsEntry field numbers.
_VALUE, _SIG_V1, _VALIDITY_TYPE, _VALIDITY, _SEQUENCE, _TTL, _PUBKEY, _SIG_V2, _DATA = range(1, 10)
_VARINT_FIELDS = frozenset({_VALIDITY_TYPE, _SEQUENCE, _TTL})
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)


class IpnsRecordError(PacswarmError):
    """A record that must not be built or must not be believed; the message says why."""


@dataclass(frozen=True)
class IpnsRecord:
    """A validated record: what its signed ``data`` says, plus its wire bytes."""

    value: bytes
    sequence: int
    validity_ns: int
    ttl_ns: int
    raw: bytes

    @property
    def validity(self) -> str:
        return format_validity(self.validity_ns)


# --- time ---------------------------------------------------------------------------------


def format_validity(epoch_ns: int) -> str:
    """RFC 3339 UTC, byte-identical to Go's ``t.UTC().Format(time.RFC3339Nano)``."""
    seconds, frac = divmod(epoch_ns, _NS)
    stamp = datetime.fromtimestamp(seconds, UTC)
    if not 1 <= stamp.year <= 9999:
        raise IpnsRecordError(f"validity year {stamp.year} cannot be written as RFC 3339")
    fraction = f".{frac:09d}".rstrip("0").rstrip(".")
    return f"{stamp:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def parse_validity(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (any fraction, any offset)."""
    match = _RFC3339.match(text)
    if match is None:
        raise IpnsRecordError(f"validity {text!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac, zone = match.group(7) or "", match.group(8)
    try:
        datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError as e:
        raise IpnsRecordError(f"validity {text!r} is not a real date: {e}") from e
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * _NS + int(frac.ljust(9, "0"))


# --- protobuf -----------------------------------------------------------------------------


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return encode_varint(number << 3) + encode_varint(value)
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


def _parse_entry(raw: bytes) -> dict[int, int | bytes]:
    """Field number -> value of a serialized IpnsEntry (last occurrence wins, as protobuf)."""
    fields: dict[int, int | bytes] = {}
    pos = 0
    try:
        while pos < len(raw):
            tag, pos = decode_varint(raw, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                value, pos = decode_varint(raw, pos)
                fields[number] = value
            elif wire == 2:
                size, pos = decode_varint(raw, pos)
                if pos + size > len(raw):
                    raise IpnsRecordError("truncated IpnsEntry protobuf")
                fields[number] = raw[pos : pos + size]
                pos += size
            else:
                raise IpnsRecordError(f"IpnsEntry field {number} has wire type {wire}")
    except CIDError as e:
        raise IpnsRecordError(f"IpnsEntry protobuf is corrupt: {e}") from e
    for number, value in fields.items():
        if number in _VARINT_FIELDS and not isinstance(value, int):
            raise IpnsRecordError(f"IpnsEntry field {number} must be a varint")
        if number <= _DATA and number not in _VARINT_FIELDS and isinstance(value, int):
            raise IpnsRecordError(f"IpnsEntry field {number} must be bytes")
    return fields


# --- build --------------------------------------------------------------------------------


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def cbor_data(value: bytes, sequence: int, validity: bytes, ttl_ns: int) -> bytes:
    """The canonical DAG-CBOR ``data`` field for these values (what signatureV2 signs)."""
    return cbor.encode(
        {
            "Value": value,
            "Validity": validity,
            "ValidityType": VALIDITY_EOL,
            "Sequence": sequence,
            "TTL": ttl_ns,
        }
    )


def build_record(
    private_key: PrivateKey,
    value: bytes | str,
    *,
    sequence: int,
    now_ns: int,
    lifetime_ns: int,
    ttl_ns: int,
) -> bytes:
    """A signed V1+V2 IpnsEntry: ``value`` (e.g. ``/ipfs/<cid>``) valid until now + lifetime."""
    path = _as_bytes(value)
    if not path:
        raise IpnsRecordError("an IPNS record needs a value (e.g. /ipfs/<cid>)")
    for label, n in (("sequence", sequence), ("TTL", ttl_ns), ("lifetime", lifetime_ns)):
        if not 0 <= n < 2**64:
            raise IpnsRecordError(f"{label} {n} is outside 0 .. 2**64-1")
    validity = format_validity(now_ns + lifetime_ns).encode("ascii")
    data = cbor_data(path, sequence, validity, ttl_ns)
    signature_v1 = private_key.sign(path + validity + b"EOL")
    signature_v2 = private_key.sign(SIGNATURE_V2_PREFIX + data)
    raw = b"".join(
        (
            _field(_VALUE, path),
            _field(_SIG_V1, signature_v1),
            _field(_VALIDITY_TYPE, VALIDITY_EOL),
            _field(_VALIDITY, validity),
            _field(_SEQUENCE, sequence),
            _field(_TTL, ttl_ns),
            _field(_SIG_V2, signature_v2),
            _field(_DATA, data),
        )
    )
    if len(raw) > MAX_RECORD_SIZE:
        raise IpnsRecordError(
            f"record would be {len(raw)} bytes, over the spec's {MAX_RECORD_SIZE}: "
            "shorten the value"
        )
    return raw


# --- validate -----------------------------------------------------------------------------


def _public_key(fields: dict[int, int | bytes], name_multihash: bytes) -> PublicKey:
    """The key that must have signed: the record's ``pubKey``, or the one inlined in the name."""
    embedded = fields.get(_PUBKEY)
    try:
        if isinstance(embedded, bytes):
            key = deserialize_public_key(embedded)
            if ID.from_pubkey(key).to_bytes() != name_multihash:
                raise IpnsRecordError("the record's pubKey does not belong to this IPNS name")
            return key
        if len(name_multihash) < 2 or name_multihash[0] != IDENTITY_MULTIHASH:
            raise IpnsRecordError("the name does not inline its key and the record has none")
        size, start = decode_varint(name_multihash, 1)
        if start + size != len(name_multihash):
            raise IpnsRecordError("the name's identity multihash has the wrong length")
        return deserialize_public_key(name_multihash[start:])
    except IpnsRecordError:
        raise
    except Exception as e:
        raise IpnsRecordError(f"cannot read the public key of this IPNS name: {e}") from e


def _signed_data(
    raw: bytes,
) -> tuple[dict[int, int | bytes], bytes, bytes, dict[str, cbor.Value]]:
    """The parsed entry, signatureV2, data, and the decoded data map (not yet verified)."""
    if len(raw) > MAX_RECORD_SIZE:
        raise IpnsRecordError(f"record is {len(raw)} bytes, over the spec's {MAX_RECORD_SIZE}")
    fields = _parse_entry(raw)
    signature, data = fields.get(_SIG_V2), fields.get(_DATA)
    if not isinstance(signature, bytes) or not signature:
        raise IpnsRecordError("record has no signatureV2 (V1-only records are not accepted)")
    if not isinstance(data, bytes) or not data:
        raise IpnsRecordError("record has no data field (V1-only records are not accepted)")
    try:
        decoded = cbor.decode(data)
    except cbor.CborError as e:
        raise IpnsRecordError(f"record data is not canonical DAG-CBOR: {e}") from e
    if not isinstance(decoded, dict):
        raise IpnsRecordError("record data is not a DAG-CBOR map")
    return fields, signature, data, decoded


def _check_v1(fields: dict[int, int | bytes], expected: dict[int, int | bytes]) -> None:
    """Every V1 field present must equal what the signed data says (they are unsigned V2)."""
    for number, want in expected.items():
        if number in fields and fields[number] != want:
            raise IpnsRecordError(f"V1 field {number} disagrees with the signed V2 data")


def validate_record(raw: bytes, name_multihash: bytes, *, now_ns: int) -> IpnsRecord:
    """The record if ``raw`` is a valid, unexpired record for the name; else IpnsRecordError.

    ``name_multihash`` is the name's identity multihash (the peer ID's bytes). Checks, in the
    spec's order: size, signatureV2 over the canonical data, field types, V1 agreement, expiry.
    """
    fields, signature, data, decoded = _signed_data(bytes(raw))
    key = _public_key(fields, name_multihash)
    if not key.verify(SIGNATURE_V2_PREFIX + data, signature):
        raise IpnsRecordError("signatureV2 does not verify: the record was altered or forged")
    value, validity = decoded.get("Value"), decoded.get("Validity")
    sequence, ttl = decoded.get("Sequence"), decoded.get("TTL", 0)
    kind = decoded.get("ValidityType")
    if not isinstance(value, bytes) or not value:
        raise IpnsRecordError("record data has no Value byte string")
    if not isinstance(validity, bytes):
        raise IpnsRecordError("record data has no Validity byte string")
    if not isinstance(sequence, int) or not isinstance(ttl, int):
        raise IpnsRecordError("record data Sequence and TTL must be unsigned integers")
    if kind != VALIDITY_EOL:
        raise IpnsRecordError(f"ValidityType {kind!r} is not EOL (0), the only one defined")
    validity_ns = parse_validity(validity.decode("ascii", errors="replace"))
    _check_v1(
        fields,
        {
            _VALUE: value,
            _VALIDITY: validity,
            _VALIDITY_TYPE: VALIDITY_EOL,
            _SEQUENCE: sequence,
            _TTL: ttl,
        },
    )
    if now_ns > validity_ns:
        raise IpnsRecordError(f"record expired at {validity.decode('ascii')}")
    return IpnsRecord(value, sequence, validity_ns, ttl, bytes(raw))


# --- names --------------------------------------------------------------------------------


def name_multihash(public_key: PublicKey) -> bytes:
    """The identity multihash of the key (the peer ID's bytes), what an IPNS name encodes."""
    return ID.from_pubkey(public_key).to_bytes()


def ipns_name(multihash: bytes) -> str:
    """``k51qzi5uqu5...``: CIDv1, codec libp2p-key (0x72), base36 lowercase (prefix ``k``)."""
    return "k" + encode_base(encode_varint(1) + encode_varint(LIBP2P_KEY) + multihash, _B36)


def parse_ipns_name(name: str) -> bytes:
    """The multihash inside a ``k...`` IPNS name (the inverse of :func:`ipns_name`)."""
    if not name.startswith("k"):
        raise IpnsRecordError(f"IPNS name {name!r} is not base36 (should start with k)")
    try:
        raw = decode_base(name[1:].lower(), _B36)
    except CIDError as e:
        raise IpnsRecordError(f"{e} in IPNS name") from None
    try:
        version, pos = decode_varint(raw, 0)
        codec, pos = decode_varint(raw, pos)
    except CIDError as e:
        raise IpnsRecordError(f"IPNS name {name!r} is not a CID: {e}") from e
    if version != 1 or codec != LIBP2P_KEY:
        raise IpnsRecordError(f"IPNS name {name!r} is not a CIDv1 libp2p-key")
    return raw[pos:]


def routing_key(multihash: bytes) -> bytes:
    """The DHT key of the record: ``b"/ipns/"`` + the raw multihash bytes (binary, not text)."""
    return ROUTING_PREFIX + multihash


def pubsub_topic(multihash: bytes) -> str:
    """The IPNS-over-PubSub topic: ``/record/`` + base64url (no padding) of the routing key."""
    encoded = base64.urlsafe_b64encode(routing_key(multihash)).rstrip(b"=")
    return PUBSUB_TOPIC_PREFIX + encoded.decode("ascii")
