"""Reading UnixFS v1 DAGs by path: directories (basic and HAMT), listings, file byte ranges. Pure.

The gateway's ``/ipfs/<cid>/<path>`` (and so pacman's ``Server = .../ipfs/<root>/$repo/os/$arch``)
walks the repo folder of :mod:`pacswarm.ipfs.unixfsdir` with these functions. Everything reads
blocks through ``get(cid) -> bytes | None`` (the blockstore, or a network fetcher), so this
module does no I/O of its own and tests feed it a dict.

Why walk by blocksizes: a ``Range`` at the end of a 1 GB package must read the few blocks
that hold those bytes, not the 4,000 before them. A File node lists the file bytes under each
link (``blocksizes``), so :func:`iter_file` skips whole subtrees without fetching them.

HAMT shards (kubo's sharded directories, fanout 256, murmur3-x64-64 of the name): the entry
``name`` sits under the link named ``"%02X" % hash[depth]`` + name, or under a sub-shard named
``"%02X" % hash[depth]`` alone, one hash byte per level (see ``unixfsdir`` and the field notes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pacswarm.ipfs.cid import CID, DAG_PB, RAW, CIDError, decode_varint
from pacswarm.ipfs.dagpb import PBNode, decode_node
from pacswarm.ipfs.murmur3 import murmur3_x64_64
from pacswarm.ipfs.unixfs import UnixFSError, decode_file_node
from pacswarm.ipfs.unixfsdir import FANOUT, HASH_MURMUR3_X64_64

Getter = Callable[[CID], "bytes | None"]

RAW_NODE, DIRECTORY, FILE, METADATA, SYMLINK, HAMT_SHARD = 0, 1, 2, 3, 4, 5
_MAX_HAMT_DEPTH = 8  # a 64-bit hash gives 8 levels of 8 bits
_MAX_FILE_DEPTH = 32  # no importer builds deeper (174^6 chunks of 256 KiB is 7 EiB)


class UnixFSReadError(Exception):
    """A path or range cannot be served from this DAG; the message says why."""


class PathNotFound(UnixFSReadError, LookupError):
    """No entry of that name in the directory."""


class NotADirectory(UnixFSReadError):
    """A path goes on below something that is not a directory (a file)."""


class NotAFile(UnixFSReadError):
    """Bytes were asked of a directory (or a symlink)."""


class MissingBlock(UnixFSReadError, LookupError):
    """A block the walk needs is not available from ``get``."""

    def __init__(self, cid: CID, where: str = "") -> None:
        at = f" (needed for {where})" if where else ""
        super().__init__(f"block {cid} is not available here{at}")
        self.cid = cid


class BadNode(UnixFSReadError):
    """A block is not a UnixFS node we can read (malformed, unknown type, wrong sizes)."""


@dataclass(frozen=True)
class DirEntry:
    """One listed entry: its name, CID and cumulative size (the link's Tsize)."""

    name: str
    cid: CID
    size: int


@dataclass(frozen=True)
class _Dir:
    node: PBNode
    kind: int  # DIRECTORY or HAMT_SHARD


def fetch_block(get: Getter, cid: CID, where: str = "") -> bytes:
    """``get(cid)`` or :class:`MissingBlock`."""
    block = get(cid)
    if block is None:
        raise MissingBlock(cid, where)
    return block


def unixfs_type(data: bytes | None) -> tuple[int, int | None, int | None]:
    """(DataType, hashType, fanout) of a UnixFS ``Data`` message; :class:`BadNode` if none."""
    if data is None:
        raise BadNode("dag-pb node without UnixFS data")
    kind, hash_type, fanout, pos = -1, None, None, 0
    try:
        while pos < len(data):
            key, pos = decode_varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = decode_varint(data, pos)
                if number == 1:
                    kind = value
                elif number == 5:
                    hash_type = value
                elif number == 6:
                    fanout = value
            elif wire == 2:
                length, pos = decode_varint(data, pos)
                pos += length
            else:
                raise BadNode(f"UnixFS data with wire type {wire}")
    except CIDError as e:
        raise BadNode(f"malformed UnixFS data: {e}") from None
    if pos > len(data) or kind < 0:
        raise BadNode("truncated UnixFS data")
    return kind, hash_type, fanout


def _decode(cid: CID, block: bytes) -> tuple[PBNode, int]:
    try:
        node = decode_node(block)
    except CIDError as e:
        raise BadNode(f"block {cid} is not dag-pb: {e}") from None
    kind = unixfs_type(node.data)[0]
    return node, kind


def is_directory(get: Getter, cid: CID) -> bool:
    """True for a basic directory or a HAMT shard (raw blocks are files)."""
    if cid.codec != DAG_PB:
        return False
    return _decode(cid, fetch_block(get, cid))[1] in (DIRECTORY, HAMT_SHARD)


def _as_dir(cid: CID, block: bytes, where: str) -> _Dir:
    if cid.codec != DAG_PB:
        raise NotADirectory(f"{where or cid} is a file, not a directory")
    node, kind = _decode(cid, block)
    if kind not in (DIRECTORY, HAMT_SHARD):
        raise NotADirectory(f"{where or cid} is not a directory (UnixFS type {kind})")
    if kind == HAMT_SHARD:
        _, hash_type, fanout = unixfs_type(node.data)
        if hash_type != HASH_MURMUR3_X64_64 or fanout != FANOUT:
            raise BadNode(
                f"HAMT shard {cid} uses hash 0x{hash_type or 0:x} fanout {fanout}; only "
                f"murmur3-x64-64 with fanout {FANOUT} (kubo's and Helia's) is read here"
            )
    return _Dir(node, kind)


def _hamt_lookup(
    get: Getter, cid: CID, shard: PBNode, name: str, where: str, visited: list[CID]
) -> CID:
    """The entry ``name`` of the HAMT rooted at ``shard``; appends the sub-shards walked."""
    digest = murmur3_x64_64(name.encode())
    for depth in range(_MAX_HAMT_DEPTH):
        prefix = f"{digest[depth]:02X}"
        sub = None
        for link in shard.links:
            if link.name == prefix:
                sub = link.cid
                break
            if link.name == prefix + name:
                return link.cid
        if sub is None:
            raise PathNotFound(f"{where}: no such file or directory")
        visited.append(sub)
        shard = _as_dir(sub, fetch_block(get, sub, where), where).node
        cid = sub
    raise BadNode(f"HAMT under {cid} is deeper than {_MAX_HAMT_DEPTH} levels")


def walk_path(get: Getter, root: CID, segments: Sequence[str]) -> tuple[CID, list[CID]]:
    """(the CID at ``root/segments...``, every block walked to reach it, root first).

    The walked blocks are the directories and HAMT shards on the way, not the terminal: a
    trustless CAR of the path sends them first so the client can verify the path itself.
    """
    cid, visited, walked = root, [], ""
    for name in segments:
        parent = walked or "/"
        walked = f"{walked}/{name}"
        block = fetch_block(get, cid, walked)
        directory = _as_dir(cid, block, parent)
        visited.append(cid)
        if directory.kind == DIRECTORY:
            found = next((ln.cid for ln in directory.node.links if ln.name == name), None)
            if found is None:
                raise PathNotFound(f"{walked}: no such file or directory")
            cid = found
        else:
            cid = _hamt_lookup(get, cid, directory.node, name, walked, visited)
    return cid, visited


def resolve_path(get: Getter, root: CID, segments: Sequence[str]) -> CID:
    """The CID at ``root/segments...``: raises :class:`PathNotFound`, :class:`NotADirectory`,
    :class:`MissingBlock` or :class:`BadNode`."""
    return walk_path(get, root, segments)[0]


def path_blocks(get: Getter, root: CID, segments: Sequence[str]) -> list[CID]:
    """The blocks a client needs to verify ``root/segments...`` (root and shards first)."""
    return walk_path(get, root, segments)[1]


def list_directory(get: Getter, cid: CID) -> list[DirEntry]:
    """Every entry of the directory ``cid``, sorted by name bytes; a HAMT is flattened."""
    directory = _as_dir(cid, fetch_block(get, cid), str(cid))
    if directory.kind == DIRECTORY:
        entries = [DirEntry(ln.name, ln.cid, ln.tsize) for ln in directory.node.links]
    else:
        entries = list(_hamt_entries(get, cid, directory.node, 0))
    return sorted(entries, key=lambda e: e.name.encode())


def _hamt_entries(get: Getter, cid: CID, shard: PBNode, depth: int) -> Iterator[DirEntry]:
    if depth >= _MAX_HAMT_DEPTH:
        raise BadNode(f"HAMT shard {cid} is deeper than {_MAX_HAMT_DEPTH} levels")
    for link in shard.links:
        if len(link.name) < 2:
            raise BadNode(f"HAMT shard {cid} has a link named {link.name!r}")
        if len(link.name) == 2:
            sub = _as_dir(link.cid, fetch_block(get, link.cid), str(cid)).node
            yield from _hamt_entries(get, link.cid, sub, depth + 1)
        else:
            yield DirEntry(link.name[2:], link.cid, link.tsize)


def file_size(get: Getter, cid: CID) -> int:
    """Bytes of the file ``cid`` (its root block alone is read)."""
    block = fetch_block(get, cid)
    if cid.codec == RAW:
        return len(block)
    if cid.codec != DAG_PB:
        raise BadNode(f"{cid}: codec 0x{cid.codec:x} is not a UnixFS file")
    _check_file(cid, block)
    try:
        return decode_file_node(block).size
    except UnixFSError as e:
        raise BadNode(f"block {cid}: {e}") from None


def _check_file(cid: CID, block: bytes) -> None:
    kind = _decode(cid, block)[1]
    if kind in (DIRECTORY, HAMT_SHARD):
        raise NotAFile(f"{cid} is a directory, not a file")
    if kind not in (RAW_NODE, FILE):
        raise NotAFile(f"{cid} is not a file (UnixFS type {kind})")


def iter_file(get: Getter, cid: CID, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes ``[start, end)`` of the file ``cid`` (``end`` None: to the end), in pieces.

    Only the blocks holding those bytes (and their ancestors) are fetched: subtrees before
    ``start`` or after ``end`` are skipped by their parent's blocksizes. Each block's size is
    checked against what its parent declared, so a lying DAG is an error, never wrong bytes.
    """
    if end is not None and end <= start:
        return
    yield from _iter(get, cid, start, end, None, 0)


def _iter(
    get: Getter, cid: CID, start: int, end: int | None, expected: int | None, depth: int
) -> Iterator[bytes]:
    if depth > _MAX_FILE_DEPTH:
        raise BadNode(f"file DAG deeper than {_MAX_FILE_DEPTH} levels at {cid}")
    block = fetch_block(get, cid)
    if cid.codec == RAW:
        if expected is not None and len(block) != expected:
            raise BadNode(f"leaf {cid} holds {len(block)} bytes where {expected} were declared")
        piece = block[start:end]
        if piece:
            yield piece
        return
    if cid.codec != DAG_PB:
        raise BadNode(f"{cid}: codec 0x{cid.codec:x} is not a UnixFS file")
    if depth == 0:
        _check_file(cid, block)
    try:
        node = decode_file_node(block)
    except UnixFSError as e:
        raise BadNode(f"block {cid}: {e}") from None
    if expected is not None and node.size != expected:
        raise BadNode(f"node {cid} holds {node.size} bytes where {expected} were declared")
    stop = node.size if end is None else min(end, node.size)
    if node.data and start < len(node.data):
        yield node.data[start:stop]
    pos = len(node.data)
    for link, size in zip(node.links, node.blocksizes, strict=True):
        if pos >= stop:
            break
        if pos + size > start:
            lo = max(start - pos, 0)
            yield from _iter(get, link.cid, lo, min(stop - pos, size), size, depth + 1)
        pos += size


def dag_walk(get: Getter, root: CID, scope: str = "all") -> Iterator[tuple[CID, bytes]]:
    """The blocks under ``root`` in DFS pre-order (a trustless CAR's ``order=dfs``).

    ``scope`` (the spec's ``dag-scope``): ``block`` is the root alone; ``entity`` is a file's
    whole DAG, or a directory's own blocks (its node, or its HAMT shards) without its
    entries; ``all`` is everything reachable. A block linked twice is yielded twice.
    """
    stack = [root]
    while stack:
        cid = stack.pop()
        block = fetch_block(get, cid)
        yield cid, block
        if scope == "block" or cid.codec != DAG_PB:
            continue
        try:
            node = decode_node(block)
        except CIDError as e:
            raise BadNode(f"block {cid} is not dag-pb: {e}") from None
        links = node.links
        if scope == "entity":
            kind = unixfs_type(node.data)[0]
            if kind == DIRECTORY:
                links = ()
            elif kind == HAMT_SHARD:
                links = tuple(ln for ln in links if len(ln.name) == 2)
        stack.extend(reversed([ln.cid for ln in links]))
