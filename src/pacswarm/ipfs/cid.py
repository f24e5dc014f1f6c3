"""Content identifiers (CIDv0 and CIDv1) with sha2-256 multihashes. Pure.

Only what pacswarm produces and consumes: codecs raw (0x55) and dag-pb (0x70), the sha2-256
multihash, and the base32 (``b``), base58btc (``z``, and bare ``Qm`` for CIDv0) and base16
(``f``) string forms.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class CIDError(ValueError):
    """Not a CID pacswarm understands (bad base, version, codec or hash)."""


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """(value, next position). At most 9 bytes, as the multiformats spec requires."""
    value = shift = 0
    for i in range(pos, min(pos + 9, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    raise CIDError("truncated or overlong varint")


def encode_base(data: bytes, alphabet: str) -> str:
    """Big-endian base-N (multibase's base58btc, base36): leading zero bytes as ``alphabet[0]``."""
    n, base = int.from_bytes(data, "big"), len(alphabet)
    out = ""
    while n:
        n, r = divmod(n, base)
        out = alphabet[r] + out
    return alphabet[0] * (len(data) - len(data.lstrip(b"\0"))) + out


def decode_base(text: str, alphabet: str) -> bytes:
    """The inverse of :func:`encode_base`; :class:`CIDError` names a bad character."""
    n, base = 0, len(alphabet)
    for c in text:
        digit = alphabet.find(c)
        if digit < 0:
            raise CIDError(f"invalid base{base} character {c!r}")
        n = n * base + digit
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip(alphabet[0]))) + body


def b58encode(data: bytes) -> str:
    return encode_base(data, _B58)


def b58decode(text: str) -> bytes:
    return decode_base(text, _B58)


@dataclass(frozen=True)
class CID:
    version: int
    codec: int
    digest: bytes  # the sha2-256 digest (32 bytes)

    @property
    def multihash(self) -> bytes:
        return bytes([SHA2_256, len(self.digest)]) + self.digest

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + base64.b32encode(self.to_bytes()).decode().lower().rstrip("=")

    def verify(self, data: bytes | memoryview) -> bool:
        """True if ``data`` is the block this CID names."""
        return hashlib.sha256(data).digest() == self.digest

    @classmethod
    def of(cls, data: bytes | memoryview, codec: int = RAW, version: int = 1) -> CID:
        if version == 0 and codec != DAG_PB:
            raise CIDError("CIDv0 can only name dag-pb blocks")
        return cls(version, codec, hashlib.sha256(data).digest())

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> tuple[CID, int]:
        """Parse a binary CID at the start of ``data``: (cid, bytes consumed)."""
        if len(data) >= 34 and data[0] == SHA2_256 and data[1] == 32:
            return cls(0, DAG_PB, bytes(data[2:34])), 34
        version, pos = decode_varint(data, 0)
        if version != 1:
            raise CIDError(f"unsupported CID version {version}")
        codec, pos = decode_varint(data, pos)
        code, pos = decode_varint(data, pos)
        length, pos = decode_varint(data, pos)
        if code != SHA2_256 or length != 32 or len(data) < pos + 32:
            raise CIDError("only sha2-256 multihashes are supported")
        return cls(1, codec, bytes(data[pos : pos + 32])), pos + 32

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse a CID string (``Qm...``, ``b...``, ``z...``, ``f...``)."""
        try:
            if text.startswith("Qm") and len(text) == 46:
                raw = b58decode(text)
            elif text.startswith("b"):
                body = text[1:].upper()
                raw = base64.b32decode(body + "=" * (-len(body) % 8))
            elif text.startswith("z"):
                raw = b58decode(text[1:])
            elif text.startswith("f"):
                raw = bytes.fromhex(text[1:])
            else:
                raise CIDError(f"unsupported multibase in {text[:8]!r}")
        except (ValueError, TypeError) as e:
            if isinstance(e, CIDError):
                raise
            raise CIDError(f"{text[:60]!r} is not a CID: {e}") from None
        cid, used = cls.from_bytes(raw)
        if used != len(raw):
            raise CIDError(f"{text[:60]!r} has trailing bytes")
        if cid.codec not in (RAW, DAG_PB):
            raise CIDError(f"unsupported codec 0x{cid.codec:x} (only raw and dag-pb)")
        return cid
