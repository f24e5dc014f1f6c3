"""Where a field's bytes sit in a protobuf message (to tamper with exactly that field).

Why not ``raw.index(b"\\x42\\x40")``: those two bytes also turn up by chance inside keys and
signatures (about once in 500 records), and a test would then tamper with the wrong field.
"""

from __future__ import annotations

from pacswarm.ipfs.cid import decode_varint


def field_value_offset(raw: bytes, number: int) -> int:
    """Offset of the first length-delimited field ``number``'s value in ``raw``."""
    pos = 0
    while pos < len(raw):
        tag, pos = decode_varint(raw, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = decode_varint(raw, pos)
        elif wire == 2:
            length, pos = decode_varint(raw, pos)
            if field == number:
                return pos
            pos += length
        else:
            raise ValueError(f"wire type {wire} is not used by these messages")
    raise LookupError(f"no field {number} in the message")
