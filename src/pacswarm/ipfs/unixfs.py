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

Reading is here too (:class:`FileBudget`, :func:`decode_file_node`): the one decoder of UnixFS
file nodes, with the one set of bounds, that both fetchers (Bitswap and the trustless gateway
client) walk a peer's DAG with.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pacswarm.ipfs.cid import CID, DAG_PB, RAW, CIDError, decode_varint, encode_varint
from pacswarm.ipfs.dagpb import PBLink, PBNode, decode_node, encode_node

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
class Child:
    """A subtree as its parent links to it."""

    cid: CID
    data_size: int  # file bytes under it (the parent's blocksize for it)
    tsize: int  # encoded bytes under it (what a link's Tsize counts)


def _parent(children: list[Child], version: int, out: list[Inner]) -> Child:
    data = encode_file_data(sum(c.data_size for c in children), [c.data_size for c in children])
    node = PBNode(tuple(PBLink(c.cid, "", c.tsize) for c in children), data)
    block = encode_node(node)
    cid = CID.of(block, DAG_PB, version=version)
    out.append(Inner(cid, block))
    return Child(
        cid, sum(c.data_size for c in children), len(block) + sum(c.tsize for c in children)
    )


def balanced_root(level: list[Child], version: int = 1) -> tuple[Child, list[Inner]]:
    """boxo's balanced layout over ``level`` (two or more subtrees, in file order).

    ``version`` is the CID version of the inner nodes: 1 for ``ipfs add --cid-version=1``,
    0 for kubo's default add (whose dag-pb leaves the caller makes).
    """
    inner: list[Inner] = []
    while len(level) > 1:
        per_node = MAX_LINKS  # read at call time: tests shrink it to make deep trees
        level = [
            _parent(level[i : i + per_node], version, inner) for i in range(0, len(level), per_node)
        ]
    return level[0], inner


def build_tree(leaves: list[Leaf]) -> ImportResult:
    """The balanced DAG over ``leaves`` (already chunked, in file order)."""
    size = sum(leaf.length for leaf in leaves)
    if not leaves:
        empty = CID.of(b"", RAW)
        return ImportResult(empty, 0, [Leaf(empty, 0, 0)], [])
    if len(leaves) == 1:
        return ImportResult(leaves[0].cid, size, list(leaves), [])
    root, inner = balanced_root([Child(leaf.cid, leaf.length, leaf.length) for leaf in leaves])
    return ImportResult(root.cid, size, list(leaves), inner)


def chunk_leaves(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[Leaf]:
    offset = 0
    while chunk := stream.read(chunk_size):
        yield Leaf(CID(1, RAW, hashlib.sha256(chunk).digest()), offset, len(chunk))
        offset += len(chunk)


def import_stream(stream: BinaryIO) -> ImportResult:
    return build_tree(list(chunk_leaves(stream)))


def import_bytes(data: bytes) -> ImportResult:
    return import_stream(io.BytesIO(data))


# -- reading a peer's DAG ------------------------------------------------------------------

#: Links accepted in one node. kubo's importer makes at most 174 (boxo's DefaultLinksPerBlock),
#: but Helia's default profile and kubo's newer ``unixfs-v1-2025`` profile make 1024 (with
#: 1 MiB chunks). More than that is no importer's output; refusing it bounds what one block can
#: make us hold (its links are decoded before any is followed).
MAX_LINKS_ACCEPTED = 1024
#: Smallest average block a file's DAG may have: every importer default chunks at 256 KiB or
#: 1 MiB, 16 times more. Below it, a peer could make us walk ``max_size`` one-byte blocks.
MIN_AVERAGE_BLOCK = 16 * 1024
#: Blocks a fetch with no ``max_size`` may walk (1 TiB in 256 KiB chunks): only for trusted DAGs.
MAX_BLOCKS_UNCAPPED = 1 << 22
#: A whole fetch's default deadline: a minute to start, then the file at 256 KiB/s, the pace
#: below which a peer is worse than any mirror. Without ``max_size``: an hour.
DEADLINE_BASE = 60.0
DEADLINE_RATE = 256 * 1024
UNCAPPED_DEADLINE = 3600.0
_RAW_TYPE = 0  # UnixFS Data.DataType.Raw (old CIDv0 leaves)


class UnixFSError(ValueError):
    """A peer's block is not a UnixFS file node we accept, or breaks the fetch's bounds.

    Raised by :func:`decode_file_node` and :class:`FileBudget`; each fetcher turns it into its
    own error (``FetchError``, ``GatewayFetchError``), which names the peer.
    """


@dataclass(frozen=True)
class FileNode:
    """A decoded UnixFS file node: inline bytes first, then one subtree per link."""

    data: bytes
    blocksizes: tuple[int, ...]
    links: tuple[PBLink, ...]

    @property
    def size(self) -> int:
        """File bytes under this node: what its parent's blocksize for it must say."""
        return len(self.data) + sum(self.blocksizes)


def decode_file_node(block: bytes | memoryview) -> FileNode:
    """Parse a dag-pb block as a UnixFS file node; :class:`UnixFSError` if it is not one.

    Refused: malformed dag-pb or UnixFS Data, a type other than File or Raw (a directory, a
    symlink), more than :data:`MAX_LINKS_ACCEPTED` links, a blocksize missing for a link or
    zero (no importer links an empty subtree), a filesize that is not the sum of the parts.
    """
    try:
        node = decode_node(block)
        if node.data is None:
            raise UnixFSError("dag-pb node without UnixFS data")
        kind, inline, filesize, blocksizes = _parse_unixfs(node.data)
    except CIDError as e:
        raise UnixFSError(f"malformed node: {e}") from None
    if kind not in (_RAW_TYPE, _FILE):
        raise UnixFSError(f"not a UnixFS file node (DataType {kind})")
    if len(node.links) > MAX_LINKS_ACCEPTED:
        raise UnixFSError(f"{len(node.links)} links, more than {MAX_LINKS_ACCEPTED}")
    if len(blocksizes) != len(node.links):
        raise UnixFSError(f"{len(node.links)} links but {len(blocksizes)} blocksizes")
    if 0 in blocksizes:
        raise UnixFSError("a link to an empty subtree (blocksize 0)")
    result = FileNode(inline, tuple(blocksizes), node.links)
    if filesize is not None and filesize != result.size:
        raise UnixFSError(f"filesize {filesize} is not its parts' sum {result.size}")
    return result


def _parse_unixfs(data: bytes) -> tuple[int, bytes, int | None, list[int]]:
    """(DataType, inline Data, filesize, blocksizes) of a UnixFS ``Data`` message."""
    kind, inline, filesize, sizes, pos = -1, b"", None, [], 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = decode_varint(data, pos)
            if number == 1:
                kind = value
            elif number == 3:
                filesize = value
            elif number == 4:
                sizes.append(value)
        elif wire == 2:
            length, pos = decode_varint(data, pos)
            if pos + length > len(data):
                raise UnixFSError("UnixFS data field runs past the end of the node")
            if number == 2:
                inline = data[pos : pos + length]
            elif number == 4:  # packed blocksizes (proto3 writers)
                sizes.extend(_packed_varints(data[pos : pos + length]))
            pos += length
        else:
            raise UnixFSError(f"UnixFS data with wire type {wire}")
    return kind, inline, filesize, sizes


def _packed_varints(data: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = decode_varint(data, pos)
        values.append(value)
    return values


def max_blocks_for(max_size: int | None) -> int:
    """Blocks (positions in the DAG, root included) a fetch of ``max_size`` bytes may walk."""
    if max_size is None:
        return MAX_BLOCKS_UNCAPPED
    return 64 + max_size // MIN_AVERAGE_BLOCK


def default_deadline(max_size: int | None) -> float:
    """Seconds a whole fetch of at most ``max_size`` bytes may take by default."""
    if max_size is None:
        return UNCAPPED_DEADLINE
    return DEADLINE_BASE + max_size / DEADLINE_RATE


class FileBudget:
    """The bounds of one file fetch, counted by position in the DAG, not by CID.

    Why positions: a node may link one child many times, and each link is a part of the file
    to walk. 8 KB of blocks, one node per level linking the next one 60 times, 5 levels deep,
    declare 60^5 leaves. So every node's size must be what its parent's blocksize declared for
    it (the root's at most ``max_size``), and every link counts against
    :func:`max_blocks_for`: such a DAG is refused at its first block, before a link is
    followed, and any DAG costs work in proportion to ``max_size`` at most.

    Tsize (a link's encoded size) is not checked: nothing verifies it and nobody uses it; the
    blocksizes bound the walk instead. Pure: the fetchers feed it what arrives.
    """

    def __init__(self, max_size: int | None) -> None:
        self.max_size = max_size
        self.max_blocks = max_blocks_for(max_size)
        self.positions = 1  # the root

    def decode(self, cid: CID, block: bytes | memoryview) -> FileNode:
        """:func:`decode_file_node`, the error naming the block."""
        try:
            return decode_file_node(block)
        except UnixFSError as e:
            raise UnixFSError(f"block {cid}: {e}") from None

    def node(self, cid: CID, node: FileNode, expected: int | None) -> None:
        """Check a decoded node that sits where ``expected`` bytes are due; count its links."""
        self._check_size(cid, node.size, expected)
        self.positions += len(node.links)
        if self.positions > self.max_blocks:
            raise UnixFSError(
                f"block {cid} brings the DAG to {self.positions} blocks, more than the"
                f" {self.max_blocks} allowed for max_size={self.max_size}"
            )

    def leaf(self, cid: CID, length: int, expected: int | None) -> None:
        """Check a raw leaf of ``length`` bytes that sits where ``expected`` bytes are due."""
        self._check_size(cid, length, expected)

    def _check_size(self, cid: CID, size: int, expected: int | None) -> None:
        if expected is not None and size != expected:
            raise UnixFSError(
                f"block {cid} holds {size} bytes of the file where its parent declared {expected}"
            )
        if self.max_size is not None and size > self.max_size:
            raise UnixFSError(
                f"block {cid} declares a file of {size} bytes, more than max_size={self.max_size}"
            )
