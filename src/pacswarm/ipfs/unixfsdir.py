"""UnixFS v1 directories, byte-identical to kubo's (boxo ``ipld/unixfs/io``). Pure.

A directory is one of two shapes, chosen from its entries alone:

* **basic**: one dag-pb node, links sorted by name bytes, ``Data`` = UnixFS ``Directory``;
* **HAMT sharded**, when the estimated size sum(len(name) + len(CID bytes)) exceeds
  :data:`SHARD_THRESHOLD` (strictly, as kubo >= 0.40 and Helia do): a tree of
  ``HAMTShard`` nodes, fanout 256, keyed by murmur3-x64-64 of the name (8 bits a level,
  most significant first). A slot holding one entry links to it as ``"%02X" + name``; a slot
  holding several links to a sub-shard as ``"%02X"``. Links are in slot order.

Every link's Tsize is the cumulative size of what it points at (for a sub-shard: its block's
length plus its links' Tsizes), as boxo's ``ipld.MakeLink`` computes it.

:class:`DirectoryBuilder` keeps the shard tree and each shard's encoded block, so updating one
entry of a 15,000-entry folder re-encodes only the shards on that entry's path (see
bench/bench_folder.py); :func:`build_directory` is the one-shot form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pacswarm.ipfs.cid import CID, DAG_PB, encode_varint
from pacswarm.ipfs.dagpb import PBLink, PBNode, encode_node
from pacswarm.ipfs.murmur3 import murmur3_x64_64

SHARD_THRESHOLD = 262_144  # boxo's HAMTShardingSize: 256 KiB of estimated link bytes
FANOUT = 256
HASH_MURMUR3_X64_64 = 0x22  # multicodec of the HAMT's hash function
_DIRECTORY = 1  # UnixFS Data.DataType.Directory
_HAMT_SHARD = 5  # UnixFS Data.DataType.HAMTShard
_MAX_DEPTH = 8  # a 64-bit hash gives 8 levels of 8 bits
DIRECTORY_DATA = b"\x08" + encode_varint(_DIRECTORY)


class DirectoryError(ValueError):
    """An entry a UnixFS directory cannot hold (bad name, or a 64-bit hash collision)."""


@dataclass(frozen=True)
class Entry:
    """What a directory links to under one name: the CID and its total (cumulative) size."""

    cid: CID
    size: int


@dataclass(frozen=True)
class Block:
    cid: CID
    data: bytes


@dataclass(frozen=True)
class Directory:
    """A built directory: its root, the root link's Tsize, and its dag-pb blocks."""

    root: CID
    size: int
    sharded: bool
    blocks: tuple[Block, ...]  # every block of the directory itself, root first


def link_estimate(name: str, cid: CID) -> int:
    """boxo's per-link size estimate: name bytes plus binary CID bytes."""
    return len(name.encode()) + len(cid.to_bytes())


def estimated_size(entries: Mapping[str, Entry]) -> int:
    return sum(link_estimate(name, e.cid) for name, e in entries.items())


def check_name(name: str) -> None:
    """A directory entry name: non-empty, no ``/``, no NUL, not ``.`` or ``..``."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise DirectoryError(
            f"{name!r} cannot be a directory entry name (empty, '.', '..', or contains '/' or NUL)"
        )


def encode_basic(entries: Mapping[str, Entry], version: int = 1) -> Block:
    """The basic directory node: links sorted by the names' UTF-8 bytes."""
    names = sorted(entries, key=str.encode)
    links = tuple(PBLink(entries[n].cid, n, entries[n].size) for n in names)
    block = encode_node(PBNode(links, DIRECTORY_DATA))
    return Block(CID.of(block, DAG_PB, version=version), block)


def encode_shard_data(bitmap: int) -> bytes:
    """UnixFS ``Data`` of a HAMT shard: Type, bitmap (big-endian, no leading zero bytes),
    hashType, fanout, in field order as Go's protobuf writes them."""
    bits = bitmap.to_bytes((bitmap.bit_length() + 7) // 8, "big")
    return (
        b"\x08"
        + encode_varint(_HAMT_SHARD)
        + b"\x12"
        + encode_varint(len(bits))
        + bits
        + b"\x28"
        + encode_varint(HASH_MURMUR3_X64_64)
        + b"\x30"
        + encode_varint(FANOUT)
    )


@dataclass
class _Leaf:
    name: str
    hash: bytes
    entry: Entry


class _Shard:
    """One HAMT node; ``encoded`` caches (block, Tsize) until a change below clears it."""

    __slots__ = ("children", "depth", "encoded")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.children: dict[int, _Leaf | _Shard] = {}
        self.encoded: tuple[Block, int] | None = None

    def insert(self, leaf: _Leaf) -> bool:
        """Add or replace ``leaf``; True if it was new."""
        self.encoded = None
        slot = leaf.hash[self.depth]
        child = self.children.get(slot)
        if child is None:
            self.children[slot] = leaf
            return True
        if isinstance(child, _Shard):
            return child.insert(leaf)
        if child.name == leaf.name:
            self.children[slot] = leaf
            return False
        if self.depth + 1 >= _MAX_DEPTH:
            raise DirectoryError(
                f"{child.name!r} and {leaf.name!r} have the same 64-bit murmur3 hash; "
                "a UnixFS HAMT cannot hold both: rename one of them"
            )
        sub = _Shard(self.depth + 1)
        sub.insert(child)
        sub.insert(leaf)
        self.children[slot] = sub
        return True

    def remove(self, name: str, key: bytes) -> bool:
        """Remove ``name``; a sub-shard left with one entry collapses into its slot, as boxo's
        does, so the tree depends only on the entries, not on their history."""
        slot = key[self.depth]
        child = self.children.get(slot)
        if child is None:
            return False
        if isinstance(child, _Leaf):
            if child.name != name:
                return False
            del self.children[slot]
        else:
            if not child.remove(name, key):
                return False
            if len(child.children) == 1:
                (only,) = child.children.values()
                if isinstance(only, _Leaf):
                    self.children[slot] = only
        self.encoded = None
        return True

    def encode(self, version: int, fresh: list[Block]) -> tuple[Block, int]:
        """This shard's block and Tsize; re-encodes only shards whose cache was cleared."""
        if self.encoded is not None:
            return self.encoded
        links: list[PBLink] = []
        bitmap = 0
        for slot in sorted(self.children):
            bitmap |= 1 << slot
            child = self.children[slot]
            if isinstance(child, _Leaf):
                links.append(PBLink(child.entry.cid, f"{slot:02X}{child.name}", child.entry.size))
            else:
                block, tsize = child.encode(version, fresh)
                links.append(PBLink(block.cid, f"{slot:02X}", tsize))
        data = encode_node(PBNode(tuple(links), encode_shard_data(bitmap)))
        block = Block(CID.of(data, DAG_PB, version=version), data)
        fresh.append(block)
        self.encoded = (block, len(data) + sum(link.tsize for link in links))
        return self.encoded

    def blocks(self) -> Iterable[Block]:
        if self.encoded is not None:
            yield self.encoded[0]
        for child in self.children.values():
            if isinstance(child, _Shard):
                yield from child.blocks()


class DirectoryBuilder:
    """A directory kept up to date entry by entry (issue 8's repo folders).

    ``set``/``remove`` are cheap (a hash and a walk down the shard tree); :meth:`build`
    re-encodes only what changed since the last build and returns the whole directory;
    :meth:`fresh_blocks` tells which blocks were new in that build (to store them).
    """

    def __init__(self, entries: Mapping[str, Entry] | None = None, version: int = 1) -> None:
        self.version = version
        self._entries: dict[str, Entry] = {}
        self._estimate = 0
        self._tree = _Shard(0)
        self._fresh: list[Block] = []
        self._basic: Block | None = None
        for name, entry in (entries or {}).items():
            self.set(name, entry)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @property
    def entries(self) -> Mapping[str, Entry]:
        return self._entries

    @property
    def estimate(self) -> int:
        return self._estimate

    @property
    def sharded(self) -> bool:
        return self._estimate > SHARD_THRESHOLD

    def set(self, name: str, entry: Entry) -> None:
        """Add ``name`` or point it at a new entry."""
        check_name(name)
        if entry.size < 0:
            raise DirectoryError(f"{name!r}: size {entry.size} is negative")
        old = self._entries.get(name)
        if old == entry:
            return
        if old is not None:
            self._estimate -= link_estimate(name, old.cid)
        self._entries[name] = entry
        self._estimate += link_estimate(name, entry.cid)
        self._tree.insert(_Leaf(name, murmur3_x64_64(name.encode()), entry))
        self._basic = None

    def remove(self, name: str) -> bool:
        """Drop ``name``; False if it was not there."""
        old = self._entries.pop(name, None)
        if old is None:
            return False
        self._estimate -= link_estimate(name, old.cid)
        self._tree.remove(name, murmur3_x64_64(name.encode()))
        self._basic = None
        return True

    def build(self) -> Directory:
        self._fresh = []
        if not self.sharded:
            if self._basic is None:
                self._basic = encode_basic(self._entries, self.version)
                self._fresh.append(self._basic)
            block = self._basic
            size = len(block.data) + sum(e.size for e in self._entries.values())
            return Directory(block.cid, size, False, (block,))
        root, size = self._tree.encode(self.version, self._fresh)
        return Directory(root.cid, size, True, tuple(self._tree.blocks()))

    def fresh_blocks(self) -> tuple[Block, ...]:
        """The blocks the last :meth:`build` encoded (the others were already built)."""
        return tuple(self._fresh)


def build_directory(entries: Mapping[str, Entry], version: int = 1) -> Directory:
    """kubo's directory over ``entries`` (name -> :class:`Entry`), in one go."""
    return DirectoryBuilder(entries, version).build()
