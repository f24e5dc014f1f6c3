"""A UnixFS file importer that gives the same CIDs as ``ipfs add --cid-version=1``. Pure.

kubo's defaults: fixed 256 KiB chunks, raw leaves (CIDv1), dag-pb inner nodes of at most 174
links, and boxo's *balanced* layout: leaves are grouped 174 to a node, those nodes 174 to a
parent, and so on, every node full except the rightmost of each level::

    N = 400 leaves:              root (File, 3 links)
                     /                 |                 \\
              node(174)            node(174)           node(52)
             /   ...   \\          /  ...  \\           /  ...  \\
          leaf ...  leaf        leaf ... leaf       leaf ... leaf

A file of one chunk is just its raw leaf; an empty file is the empty raw block. Grouping
level by level gives exactly boxo's tree: its depth-first filling also leaves every subtree
full but the last, and wraps a lone trailing leaf in its own node (the 174k+1 case).

The importer only reads the file; leaves stay byte ranges of it (see the blockstore).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pacswarm.ipfs.cid import CID, DAG_PB, RAW, encode_varint
from pacswarm.ipfs.dagpb import PBLink, PBNode, encode_node

CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174
_FILE = 2  # UnixFS Data.DataType.File


def encode_file_data(filesize: int, blocksizes: list[int]) -> bytes:
    """UnixFS ``Data`` of a File node with raw leaves (no inline data); proto2, not packed."""
    out = b"\x08" + encode_varint(_FILE) + b"\x18" + encode_varint(filesize)
    return out + b"".join(b"\x20" + encode_varint(size) for size in blocksizes)


@dataclass(frozen=True)
class Leaf:
    cid: CID
    offset: int
    length: int


@dataclass(frozen=True)
class Inner:
    cid: CID
    block: bytes


@dataclass
class ImportResult:
    """Everything the blockstore needs: leaves as file ranges, inner nodes as bytes."""

    root: CID
    size: int
    leaves: list[Leaf] = field(default_factory=list)
    inner: list[Inner] = field(default_factory=list)


@dataclass(frozen=True)
class _Child:
    cid: CID
    data_size: int  # file bytes under it
    tsize: int  # encoded bytes under it (what a link's Tsize counts)


def _parent(children: list[_Child], out: list[Inner]) -> _Child:
    data = encode_file_data(sum(c.data_size for c in children), [c.data_size for c in children])
    node = PBNode(tuple(PBLink(c.cid, "", c.tsize) for c in children), data)
    block = encode_node(node)
    cid = CID.of(block, DAG_PB)
    out.append(Inner(cid, block))
    return _Child(
        cid, sum(c.data_size for c in children), len(block) + sum(c.tsize for c in children)
    )


def build_tree(leaves: list[Leaf]) -> ImportResult:
    """The balanced DAG over ``leaves`` (already chunked, in file order)."""
    size = sum(leaf.length for leaf in leaves)
    if not leaves:
        empty = CID.of(b"", RAW)
        return ImportResult(empty, 0, [Leaf(empty, 0, 0)], [])
    if len(leaves) == 1:
        return ImportResult(leaves[0].cid, size, list(leaves), [])
    inner: list[Inner] = []
    level = [_Child(leaf.cid, leaf.length, leaf.length) for leaf in leaves]
    while len(level) > 1:
        level = [_parent(level[i : i + MAX_LINKS], inner) for i in range(0, len(level), MAX_LINKS)]
    return ImportResult(level[0].cid, size, list(leaves), inner)


def chunk_leaves(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[Leaf]:
    offset = 0
    while chunk := stream.read(chunk_size):
        yield Leaf(CID(1, RAW, hashlib.sha256(chunk).digest()), offset, len(chunk))
        offset += len(chunk)


def import_stream(stream: BinaryIO) -> ImportResult:
    return build_tree(list(chunk_leaves(stream)))


def import_bytes(data: bytes) -> ImportResult:
    return import_stream(io.BytesIO(data))
