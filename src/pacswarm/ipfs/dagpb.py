"""dag-pb blocks (PBNode/PBLink), encoded byte-for-byte as boxo and js-ipfs do. Pure.

Canonical form (dag-pb spec): Links (field 2) before Data (field 1); in a link, Hash (1),
Name (2, written even when empty, as boxo's importer does), Tsize (3).
"""

from __future__ import annotations

from dataclasses import dataclass

from pacswarm.ipfs.cid import CID, CIDError, decode_varint, encode_varint


@dataclass(frozen=True)
class PBLink:
    cid: CID
    name: str = ""
    tsize: int = 0


@dataclass(frozen=True)
class PBNode:
    links: tuple[PBLink, ...]
    data: bytes | None


def _field(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _field(number, 2) + encode_varint(len(value)) + value


def encode_link(link: PBLink) -> bytes:
    return (
        _bytes_field(1, link.cid.to_bytes())
        + _bytes_field(2, link.name.encode())
        + _field(3, 0)
        + encode_varint(link.tsize)
    )


def encode_node(node: PBNode) -> bytes:
    out = b"".join(_bytes_field(2, encode_link(link)) for link in node.links)
    if node.data is not None:
        out += _bytes_field(1, node.data)
    return out


def _iter_fields(buf: bytes | memoryview) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for varint (0) and length-delimited (2) fields."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = decode_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = decode_varint(buf, pos)
            fields.append((number, wire, value))
        elif wire == 2:
            length, pos = decode_varint(buf, pos)
            if pos + length > len(buf):
                raise CIDError("dag-pb field runs past the end of the block")
            fields.append((number, wire, bytes(buf[pos : pos + length])))
            pos += length
        else:
            raise CIDError(f"unsupported protobuf wire type {wire}")
    return fields


def decode_node(block: bytes | memoryview) -> PBNode:
    """Parse a dag-pb block. Raises :class:`CIDError` for a malformed one."""
    links: list[PBLink] = []
    data: bytes | None = None
    for number, wire, value in _iter_fields(block):
        if number == 2 and wire == 2 and isinstance(value, bytes):
            cid: CID | None = None
            name, tsize = "", 0
            for n, w, v in _iter_fields(value):
                if n == 1 and w == 2 and isinstance(v, bytes):
                    cid, _ = CID.from_bytes(v)
                elif n == 2 and w == 2 and isinstance(v, bytes):
                    name = v.decode("utf-8", "replace")
                elif n == 3 and w == 0 and isinstance(v, int):
                    tsize = v
            if cid is None:
                raise CIDError("dag-pb link without a Hash")
            links.append(PBLink(cid, name, tsize))
        elif number == 1 and wire == 2 and isinstance(value, bytes):
            data = value
    return PBNode(tuple(links), data)
