"""The DAG-CBOR subset an IPNS record's ``data`` field uses. Pure.

Why hand-rolled: the record needs only maps with text keys, byte strings, text strings and
unsigned integers, and DAG-CBOR demands one exact encoding for them (shortest integer heads,
definite lengths, map keys sorted by encoded length, then bytewise). A general CBOR library
would have to be told each of these rules; ~80 lines state them directly. :func:`decode`
refuses anything outside the subset and anything not in canonical form, so a record whose
bytes another implementation would re-encode differently is refused here too.
"""

from __future__ import annotations

from typing import Union

Value = Union[int, bytes, str, "dict[str, Value]"]

_UINT, _BYTES, _TEXT, _MAP = 0, 2, 3, 5
_MAX_UINT64 = 2**64 - 1


class CborError(ValueError):
    """Bytes that are not canonical DAG-CBOR of the supported subset."""


def _head(major: int, n: int) -> bytes:
    """The shortest head for ``n``, as DAG-CBOR requires."""
    if not 0 <= n <= _MAX_UINT64:
        raise CborError(f"integer {n} is outside unsigned 64-bit range")
    top = major << 5
    if n < 24:
        return bytes([top | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([top | extra]) + n.to_bytes(size, "big")
    raise AssertionError("unreachable")  # pragma: no cover


def _key_order(encoded_key: bytes) -> tuple[int, bytes]:
    return (len(encoded_key), encoded_key)


def encode(value: Value) -> bytes:
    """Canonical DAG-CBOR of an unsigned int, byte string, text string or text-keyed map."""
    if isinstance(value, bool):
        raise CborError("booleans are not part of the supported subset")
    if isinstance(value, int):
        return _head(_UINT, value)
    if isinstance(value, bytes):
        return _head(_BYTES, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(_TEXT, len(raw)) + raw
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise CborError(f"map key {key!r} is not a text string")
            items.append((encode(key), encode(item)))
        items.sort(key=lambda kv: _key_order(kv[0]))
        return _head(_MAP, len(items)) + b"".join(k + v for k, v in items)
    raise CborError(f"cannot encode {type(value).__name__} as DAG-CBOR")


def _read_head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, next position) of the item at ``pos``."""
    if pos >= len(data):
        raise CborError("truncated CBOR")
    first = data[pos]
    major, info = first >> 5, first & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info > 27:
        raise CborError("indefinite lengths and reserved heads are not DAG-CBOR")
    size = 1 << (info - 24)
    if pos + 1 + size > len(data):
        raise CborError("truncated CBOR")
    return major, int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), pos + 1 + size


def _read(data: bytes, pos: int, depth: int) -> tuple[Value, int]:
    if depth > 8:
        raise CborError("CBOR nested too deeply")
    major, arg, pos = _read_head(data, pos)
    if major == _UINT:
        return arg, pos
    if major in (_BYTES, _TEXT):
        end = pos + arg
        if end > len(data):
            raise CborError("truncated CBOR string")
        raw = data[pos:end]
        if major == _BYTES:
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError as e:
            raise CborError(f"text string is not UTF-8: {e}") from e
    if major == _MAP:
        out: dict[str, Value] = {}
        for _ in range(arg):
            key, pos = _read(data, pos, depth + 1)
            if not isinstance(key, str):
                raise CborError("map key is not a text string")
            out[key], pos = _read(data, pos, depth + 1)
        return out, pos
    raise CborError(f"CBOR major type {major} is not part of the supported subset")


def decode(data: bytes) -> Value:
    """The value of canonical DAG-CBOR ``data``; :class:`CborError` if not canonical."""
    value, end = _read(bytes(data), 0, 0)
    if end != len(data):
        raise CborError(f"{len(data) - end} trailing bytes after the CBOR item")
    if encode(value) != data:
        raise CborError("not canonical DAG-CBOR (key order, duplicates or integer heads)")
    return value
