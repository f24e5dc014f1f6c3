"""CARv1 (Content Addressable aRchive) framing: writing and streaming-verified reading. Pure.

A CAR is ``varint(len) header`` then ``varint(len) cid block`` frames. The header is the
dag-cbor map ``{"roots": [cid], "version": 1}``; we write it by hand (keys sorted by length, as
dag-cbor requires) rather than pull in a CBOR library for one fixed shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacswarm.ipfs.cid import CID, CIDError, decode_varint, encode_varint

#: A frame larger than this is not a block any IPFS implementation would send (2 MiB is the
#: Bitswap limit; 1 MiB the usual maximum); refusing it bounds a hostile peer's memory use.
MAX_FRAME = 4 * 1024 * 1024
CONTENT_TYPE = "application/vnd.ipld.car"


class CarError(ValueError):
    """A CAR stream is malformed, or a block does not match its CID."""


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    return bytes([major << 5 | 25]) + n.to_bytes(2, "big")


def encode_header(root: CID) -> bytes:
    cid_bytes = b"\x00" + root.to_bytes()  # dag-cbor CID: tag 42 over identity-multibase bytes
    body = (
        b"\xa2"
        + _cbor_head(3, 5)
        + b"roots"
        + b"\x81\xd8\x2a"
        + _cbor_head(2, len(cid_bytes))
        + cid_bytes
        + _cbor_head(3, 7)
        + b"version\x01"
    )
    return encode_varint(len(body)) + body


def encode_frame(cid: CID, block: bytes | memoryview) -> bytes:
    cid_bytes = cid.to_bytes()
    return encode_varint(len(cid_bytes) + len(block)) + cid_bytes + bytes(block)


@dataclass
class CarReader:
    """Incremental parser: feed bytes as they arrive, take verified blocks out.

    Every block is checked against its CID before it is returned: a peer cannot slip in a
    block that was not asked for without the mismatch being noticed.
    """

    _buf: bytearray
    _header_seen: bool = False
    roots: tuple[CID, ...] = ()

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header_seen = False
        self.roots = ()

    def feed(self, data: bytes) -> list[tuple[CID, bytes]]:
        self._buf += data
        blocks: list[tuple[CID, bytes]] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return blocks
            if not self._header_seen:
                self.roots = _parse_header(frame)
                self._header_seen = True
                continue
            try:
                cid, used = CID.from_bytes(frame)
            except CIDError as e:
                raise CarError(f"bad CID in CAR frame: {e}") from None
            block = frame[used:]
            if not cid.verify(block):
                raise CarError(f"block does not match its CID {cid}")
            blocks.append((cid, block))

    def finish(self) -> None:
        if self._buf:
            raise CarError(f"CAR stream ends inside a frame ({len(self._buf)} bytes left)")
        if not self._header_seen:
            raise CarError("empty CAR stream (no header)")

    def _next_frame(self) -> bytes | None:
        if not self._buf:
            return None
        try:
            length, pos = decode_varint(self._buf, 0)
        except CIDError:
            if len(self._buf) >= 9:
                raise CarError("bad CAR frame length") from None
            return None
        if length > MAX_FRAME or length == 0:
            raise CarError(f"CAR frame of {length} bytes refused")
        if len(self._buf) < pos + length:
            return None
        frame = bytes(self._buf[pos : pos + length])
        del self._buf[: pos + length]
        return frame


def _parse_header(frame: bytes) -> tuple[CID, ...]:
    """Find the root CIDs in a CARv1 header (only the shape we and others write)."""
    if b"version\x01" not in frame or b"roots" not in frame:
        raise CarError("not a CARv1 header")
    roots: list[CID] = []
    pos = frame.find(b"\xd8\x2a")
    try:
        while pos != -1:
            head = frame[pos + 2]
            if head >> 5 != 2:
                raise CarError("malformed CID in CAR header")
            n = head & 0x1F
            start = pos + 3
            if n == 24:
                n, start = frame[pos + 3], pos + 4
            elif n > 24:
                raise CarError("CID in CAR header is too long")
            if start + n > len(frame):
                raise CarError("CID in CAR header runs past the header")
            raw = frame[start : start + n]
            if not raw.startswith(b"\x00"):
                raise CarError("CID in CAR header lacks the identity multibase prefix")
            roots.append(CID.from_bytes(raw[1:])[0])
            pos = frame.find(b"\xd8\x2a", start + n)
    except (IndexError, CIDError) as e:
        raise CarError(f"malformed CAR header: {e}") from None
    return tuple(roots)
