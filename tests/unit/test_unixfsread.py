"""Reading UnixFS by path (src/pacswarm/ipfs/unixfsread.py): basic and HAMT dirs, file ranges."""

from __future__ import annotations

import io
import os
import random
import re

import pytest

from pacswarm.ipfs import unixfs
from pacswarm.ipfs.cid import CID, DAG_PB, RAW
from pacswarm.ipfs.dagpb import PBLink, PBNode, decode_node, encode_node
from pacswarm.ipfs.unixfs import CHUNK_SIZE, ImportResult, build_tree, chunk_leaves, import_bytes
from pacswarm.ipfs.unixfsdir import Directory, Entry, build_directory
from pacswarm.ipfs.unixfsread import (
    BadNode,
    DirEntry,
    MissingBlock,
    NotADirectory,
    NotAFile,
    PathNotFound,
    dag_walk,
    file_size,
    is_directory,
    iter_file,
    list_directory,
    path_blocks,
    resolve_path,
    walk_path,
)
from tests.unit.test_unixfsdir import arch_like_names


class Store(dict[CID, bytes]):
    """Blocks by CID, recording every ``get`` (to prove what a walk did not read)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[CID] = []

    def get_block(self, cid: CID) -> bytes | None:
        self.reads.append(cid)
        return self.get(CID(1, cid.codec, cid.digest))

    def put(self, cid: CID, data: bytes) -> None:
        assert cid.verify(data)
        self[CID(1, cid.codec, cid.digest)] = data

    def add_file(self, data: bytes, result: ImportResult | None = None) -> Entry:
        result = result or import_bytes(data)
        for leaf in result.leaves:
            self.put(leaf.cid, data[leaf.offset : leaf.offset + leaf.length])
        for inner in result.inner:
            self.put(inner.cid, inner.block)
        tsize = result.size + sum(len(n.block) for n in result.inner)
        return Entry(result.root, tsize)

    def add_dir(self, directory: Directory) -> Entry:
        for block in directory.blocks:
            self.put(block.cid, block.data)
        return Entry(directory.root, directory.size)


def read(store: Store, cid: CID, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(iter_file(store.get_block, cid, start, end))


def folder(store: Store, files: dict[str, bytes], extra: int = 0) -> tuple[CID, dict[str, Entry]]:
    """``root/core/os/x86_64/<files>`` plus ``root/extra/os/x86_64/`` with ``extra`` entries
    (raw files holding their own name, so a HAMT one is real end to end)."""
    core = {name: store.add_file(data) for name, data in files.items()}
    extra_entries = {n: store.add_file(n.encode()) for n in arch_like_names(extra)}
    tree: dict[str, Entry] = {}
    for repo, entries in (("core", core), ("extra", extra_entries)):
        arch = store.add_dir(build_directory(entries))
        os_dir = store.add_dir(build_directory({"x86_64": arch}))
        tree[repo] = store.add_dir(build_directory({"os": os_dir}))
    root = store.add_dir(build_directory(tree))
    return root.cid, {**core, **extra_entries}


FILES = {
    "core.db": os.urandom(3000),
    "bash-5.2-1-x86_64.pkg.tar.zst": os.urandom(3 * CHUNK_SIZE + 12345),
    "bash-5.2-1-x86_64.pkg.tar.zst.sig": os.urandom(119),
    "empty": b"",
}


def test_resolve_through_basic_directories() -> None:
    store = Store()
    root, entries = folder(store, FILES)
    for name, data in FILES.items():
        cid = resolve_path(store.get_block, root, ["core", "os", "x86_64", name])
        assert cid == entries[name].cid
        assert file_size(store.get_block, cid) == len(data)
        assert read(store, cid) == data
    arch = resolve_path(store.get_block, root, ["core", "os", "x86_64"])
    assert is_directory(store.get_block, arch)
    assert resolve_path(store.get_block, root, []) == root


def test_listing_is_sorted_with_cids_and_sizes() -> None:
    store = Store()
    root, entries = folder(store, FILES)
    arch = resolve_path(store.get_block, root, ["core", "os", "x86_64"])
    listing = list_directory(store.get_block, arch)
    assert [e.name for e in listing] == sorted(FILES, key=str.encode)
    assert listing == [DirEntry(n, entries[n].cid, entries[n].size) for n in sorted(FILES)]
    assert [e.name for e in list_directory(store.get_block, root)] == ["core", "extra"]


def test_sharded_directory_resolves_and_lists_every_entry() -> None:
    store = Store()
    root, entries = folder(store, {}, extra=4000)
    arch = resolve_path(store.get_block, root, ["extra", "os", "x86_64"])
    node = decode_node(store[arch])
    assert node.data is not None and node.data[:2] == b"\x08\x05"  # a HAMT shard
    listing = list_directory(store.get_block, arch)
    assert len(listing) == 4000
    assert [e.name for e in listing] == sorted(entries, key=str.encode)
    assert all(e.cid == entries[e.name].cid and e.size == entries[e.name].size for e in listing)
    names = random.Random(3).sample(sorted(entries), 200)
    for name in names:
        cid, walked = walk_path(store.get_block, root, ["extra", "os", "x86_64", name])
        assert cid == entries[name].cid
        assert read(store, cid) == name.encode()
        # root, extra, os, then the HAMT root and its sub-shards down to the entry's slot
        assert walked[:4] == [root, walked[1], walked[2], arch]
        assert len(walked) >= 5  # 4,000 entries over 256 slots: every slot is a sub-shard
        assert path_blocks(store.get_block, root, ["extra", "os", "x86_64", name]) == walked


def test_sharded_lookup_reads_only_the_path() -> None:
    store = Store()
    root, _ = folder(store, {}, extra=4000)
    name = arch_like_names(4000)[1234]
    store.reads.clear()
    _, walked = walk_path(store.get_block, root, ["extra", "os", "x86_64", name])
    assert store.reads == walked  # no sibling shard is fetched


def test_missing_names_and_wrong_kinds_are_clear_errors() -> None:
    store = Store()
    root, entries = folder(store, FILES, extra=4000)
    get = store.get_block
    with pytest.raises(PathNotFound, match="/core/os/x86_64/nope: no such file"):
        resolve_path(get, root, ["core", "os", "x86_64", "nope"])
    with pytest.raises(PathNotFound, match=re.escape("/extra/os/x86_64/nope-1-1-any.pkg.tar.zst")):
        resolve_path(get, root, ["extra", "os", "x86_64", "nope-1-1-any.pkg.tar.zst"])
    pkg = ["core", "os", "x86_64", "bash-5.2-1-x86_64.pkg.tar.zst"]
    with pytest.raises(NotADirectory, match=re.escape("bash-5.2-1-x86_64.pkg.tar.zst is")):
        resolve_path(get, root, [*pkg, "more"])
    with pytest.raises(NotADirectory):
        resolve_path(get, root, ["core", "os", "x86_64", "core.db", "x"])  # a raw leaf
    with pytest.raises(NotAFile, match="is a directory"):
        read(store, root)
    with pytest.raises(NotAFile):
        file_size(get, resolve_path(get, root, ["core"]))
    with pytest.raises(NotADirectory):
        list_directory(get, entries["core.db"].cid)
    assert not is_directory(get, entries["core.db"].cid)


def test_a_missing_block_names_the_block_and_the_path() -> None:
    store = Store()
    root, _ = folder(store, FILES)
    os_dir = resolve_path(store.get_block, root, ["core", "os"])
    del store[CID(1, DAG_PB, os_dir.digest)]
    with pytest.raises(MissingBlock, match=f"block {os_dir} is not available.*/core/os/x86_64"):
        resolve_path(store.get_block, root, ["core", "os", "x86_64"])


def test_ranges_at_chunk_boundaries() -> None:
    data = os.urandom(4 * CHUNK_SIZE + 1000)
    store = Store()
    cid = store.add_file(data).cid
    c = CHUNK_SIZE
    cases = [
        (0, None),
        (0, 1),
        (c - 1, c + 1),
        (c, 2 * c),
        (c, c + 1),
        (2 * c - 1, 2 * c),
        (4 * c, None),
        (4 * c + 999, None),
        (len(data) - 1, len(data)),
        (5, 3 * c + 17),
        (0, 10 * c),  # past the end: what there is
    ]
    for start, end in cases:
        assert read(store, cid, start, end) == data[start:end], (start, end)
    assert read(store, cid, 10, 10) == b""
    assert read(store, cid, len(data) + 5) == b""


def test_a_range_at_the_end_of_a_deep_file_skips_what_it_does_not_need(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000 chunks of 1 KiB, 4 links a node: 5 levels; the last byte reads one block a level."""
    monkeypatch.setattr(unixfs, "MAX_LINKS", 4)
    data = os.urandom(1000 * 1024)
    result = build_tree(list(chunk_leaves(io.BytesIO(data), 1024)))
    store = Store()
    cid = store.add_file(data, result).cid
    depth = 1 + 5  # root + 4 inner levels (4^5 = 1024 >= 1000 leaves) + the leaf
    store.reads.clear()
    assert read(store, cid, len(data) - 1) == data[-1:]
    assert len(store.reads) == depth
    store.reads.clear()
    assert read(store, cid, 500 * 1024 + 3, 500 * 1024 + 9) == data[500 * 1024 + 3 :][:6]
    assert len(store.reads) == depth
    for start, end in [(0, None), (1023, 1025), (4095, 4097), (65535, 200_000)]:
        assert read(store, cid, start, end) == data[start:end]


def test_a_lying_file_dag_is_an_error_not_wrong_bytes() -> None:
    leaf_a, leaf_b = b"a" * 100, b"b" * 50
    store = Store()
    ca, cb = CID.of(leaf_a, RAW), CID.of(leaf_b, RAW)
    store.put(ca, leaf_a)
    store.put(cb, leaf_b)
    lie = unixfs.encode_file_data(200, [100, 100])  # b is 50 bytes, not 100
    block = encode_node(PBNode((PBLink(ca, "", 100), PBLink(cb, "", 50)), lie))
    root = CID.of(block, DAG_PB)
    store.put(root, block)
    assert file_size(store.get_block, root) == 200
    with pytest.raises(BadNode, match="holds 50 bytes where 100 were declared"):
        read(store, root)
    assert read(store, root, 0, 100) == leaf_a  # the honest part is still readable


def test_dag_walk_scopes() -> None:
    store = Store()
    root, entries = folder(store, FILES, extra=4000)
    get = store.get_block
    pkg = entries["bash-5.2-1-x86_64.pkg.tar.zst"].cid
    whole = [c for c, _ in dag_walk(get, pkg)]
    assert whole[0] == pkg and len(whole) == 1 + 4  # the file node and its four leaves
    assert [c for c, _ in dag_walk(get, pkg, "entity")] == whole
    assert [c for c, _ in dag_walk(get, pkg, "block")] == [pkg]
    core = resolve_path(get, root, ["core", "os", "x86_64"])
    assert [c for c, _ in dag_walk(get, core, "entity")] == [core]  # a basic dir is one node
    extra = resolve_path(get, root, ["extra", "os", "x86_64"])
    shards = [c for c, _ in dag_walk(get, extra, "entity")]
    assert shards[0] == extra and all(c.codec == DAG_PB for c in shards) and len(shards) > 256
    everything = {c for c, _ in dag_walk(get, root)}
    assert everything == set(store)  # "all" reaches every block of the folder
