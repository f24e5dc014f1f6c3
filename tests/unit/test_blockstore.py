"""The package blockstore: leaves are ranges of real files, and every read is verified."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacswarm.ipfs.blockstore import (
    BlockCorruptError,
    BlockReadError,
    BlockstoreError,
    MissingBlockError,
    PackageBlockstore,
)
from pacswarm.ipfs.cid import CID, DAG_PB, RAW
from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.unixfs import CHUNK_SIZE, import_bytes

KEY_A = "core/x86_64/a-1.0-1-x86_64.pkg.tar.zst"
KEY_B = "extra/x86_64/b-1.0-1-x86_64.pkg.tar.zst"


def payload(size: int, seed: int = 1) -> bytes:
    """Incompressible-looking, reproducible bytes (distinct chunks)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += (seed * 1_000_003 + counter).to_bytes(8, "little") * 4
        counter += 1
    return bytes(out[:size])


class Env:
    def __init__(self, root: Path) -> None:
        self.cache = root / "cache"
        self.cache.mkdir()
        self.corrupted: list[str] = []
        self.store = PackageBlockstore(root / "blocks.sqlite", self.locate, self.corrupted.append)

    def locate(self, key: str) -> Path:
        return self.cache / key

    def put(self, key: str, data: bytes) -> CID:
        path = self.locate(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.store.add_package(key, path)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.store.close()


def test_import_then_every_block_reads_back_verified(env: Env) -> None:
    data = payload(3 * CHUNK_SIZE + 1234)
    root = env.put(KEY_A, data)
    expected = import_bytes(data)
    assert root == expected.root
    assert env.store.root_of(KEY_A) == root
    assert env.store.keys() == [KEY_A]
    for leaf in expected.leaves:
        assert env.store.has(leaf.cid)
        assert env.store.get(leaf.cid) == data[leaf.offset : leaf.offset + leaf.length]
        assert env.store.block_size(leaf.cid) == leaf.length
    for node in expected.inner:
        assert env.store.get(node.cid) == node.block
    unknown = CID.of(b"not stored")
    assert env.store.get(unknown) is None
    assert not env.store.has(unknown)


def test_add_is_idempotent_and_survives_reopen(env: Env, tmp_path: Path) -> None:
    data = payload(CHUNK_SIZE * 2)
    root = env.put(KEY_A, data)
    assert env.store.add_package(KEY_A, env.locate(KEY_A)) == root
    env.store.close()
    again = PackageBlockstore(tmp_path / "blocks.sqlite", env.locate)
    try:
        assert again.root_of(KEY_A) == root
        assert b"".join(b for c, b in again.dag_blocks(root) if c.codec == RAW) == data
    finally:
        again.close()


def test_cidv0_names_the_same_dag_pb_block(env: Env) -> None:
    root = env.put(KEY_A, payload(CHUNK_SIZE * 2))
    v0 = CID(0, DAG_PB, root.digest)
    assert env.store.get(v0) == env.store.get(root)


def test_dag_blocks_in_dfs_preorder(env: Env) -> None:
    data = payload(5 * CHUNK_SIZE)
    root = env.put(KEY_A, data)
    blocks = list(env.store.dag_blocks(root))
    assert blocks[0][0] == root
    links = [link.cid for link in decode_node(blocks[0][1]).links]
    assert [c for c, _ in blocks[1:]] == links
    assert b"".join(b for _, b in blocks[1:]) == data


def test_dag_blocks_of_a_one_chunk_file_is_the_leaf(env: Env) -> None:
    root = env.put(KEY_A, b"tiny package")
    assert root.codec == RAW
    assert list(env.store.dag_blocks(root)) == [(root, b"tiny package")]


def test_dag_blocks_with_two_levels(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks and 3 links a node make a two-level tree out of 8 KB."""
    monkeypatch.setattr("pacswarm.ipfs.unixfs.MAX_LINKS", 3)
    data = payload(8 * 1000)
    path = env.locate(KEY_A)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    from pacswarm.ipfs import unixfs

    with open(path, "rb") as f:
        expected = unixfs.build_tree(list(unixfs.chunk_leaves(f, 1000)))
    monkeypatch.setattr(
        "pacswarm.ipfs.blockstore.import_stream",
        lambda f: unixfs.build_tree(list(unixfs.chunk_leaves(f, 1000))),
    )
    root = env.store.add_package(KEY_A, path)
    assert root == expected.root
    order = [c for c, _ in env.store.dag_blocks(root)]
    assert order[0] == root
    assert len(order) == 1 + 3 + 8
    assert b"".join(b for c, b in env.store.dag_blocks(root) if c.codec == RAW) == data
    inner = [i for i, c in enumerate(order) if c.codec == DAG_PB]
    assert inner == [0, 1, 5, 9]  # each inner node right before its own leaves


def test_corrupt_byte_on_disk(env: Env) -> None:
    data = payload(3 * CHUNK_SIZE)
    root = env.put(KEY_A, data)
    second = import_bytes(data).leaves[1]
    with open(env.locate(KEY_A), "r+b") as f:
        f.seek(second.offset + 17)
        f.write(bytes([data[second.offset + 17] ^ 1]))
    assert env.store.get(import_bytes(data).leaves[0].cid) is not None
    with pytest.raises(BlockCorruptError) as err:
        env.store.get(second.cid)
    assert err.value.key == KEY_A
    assert err.value.cid == second.cid
    assert env.corrupted == [KEY_A]
    assert env.store.root_of(KEY_A) is None
    assert not env.store.has(root)
    assert not env.store.has(second.cid)
    assert env.store.keys() == []


def test_corruption_found_mid_walk(env: Env) -> None:
    data = payload(3 * CHUNK_SIZE)
    root = env.put(KEY_A, data)
    with open(env.locate(KEY_A), "r+b") as f:
        f.truncate(2 * CHUNK_SIZE + 10)
    walk = env.store.dag_blocks(root)
    assert next(walk)[0] == root
    next(walk)
    next(walk)
    with pytest.raises(BlockCorruptError):
        next(walk)
    assert env.corrupted == [KEY_A]


def test_remove_package(env: Env) -> None:
    data = payload(2 * CHUNK_SIZE)
    root = env.put(KEY_A, data)
    env.store.remove_package(KEY_A)
    assert env.store.keys() == []
    assert env.store.get(root) is None
    assert all(not env.store.has(leaf.cid) for leaf in import_bytes(data).leaves)
    env.store.remove_package(KEY_A)  # twice is fine


def test_shared_chunk_survives_removal_of_one_package(env: Env) -> None:
    shared = payload(CHUNK_SIZE, seed=7)
    a = shared + payload(CHUNK_SIZE, seed=8)
    b = shared + payload(CHUNK_SIZE, seed=9)
    env.put(KEY_A, a)
    root_b = env.put(KEY_B, b)
    shared_cid = CID.of(shared)
    env.store.remove_package(KEY_A)
    assert env.store.get(shared_cid) == shared
    assert b"".join(x for c, x in env.store.dag_blocks(root_b) if c.codec == RAW) == b
    env.store.remove_package(KEY_B)
    assert not env.store.has(shared_cid)


def test_shared_inner_node_survives_removal_of_one_package(env: Env) -> None:
    data = payload(2 * CHUNK_SIZE)
    root = env.put(KEY_A, data)
    env.put(KEY_B, data)
    env.store.remove_package(KEY_B)
    assert env.store.get(root) is not None
    env.store.remove_package(KEY_A)
    assert env.store.get(root) is None


def test_leaf_read_from_another_package_when_the_first_file_is_gone(env: Env) -> None:
    shared = payload(CHUNK_SIZE, seed=3)
    env.put(KEY_A, shared + b"a")
    env.put(KEY_B, shared + b"b")
    env.locate(KEY_A).unlink()
    assert env.store.get(CID.of(shared)) == shared
    assert env.store.keys() == [KEY_B]
    assert env.corrupted == []  # a missing file is not corruption


def test_missing_file(env: Env) -> None:
    data = payload(2 * CHUNK_SIZE)
    root = env.put(KEY_A, data)
    env.locate(KEY_A).unlink()
    leaf = import_bytes(data).leaves[0]
    assert env.store.get(leaf.cid) is None
    assert env.store.keys() == []
    assert env.corrupted == []
    assert env.store.get(root) is None


def test_unreadable_file_is_an_error_but_not_corruption(env: Env) -> None:
    data = payload(2 * CHUNK_SIZE)
    env.put(KEY_A, data)
    path = env.locate(KEY_A)
    path.unlink()
    path.mkdir()  # reading it now fails with IsADirectoryError, as EIO or EACCES would
    with pytest.raises(BlockReadError):
        env.store.get(import_bytes(data).leaves[0].cid)
    assert env.corrupted == []
    assert env.store.keys() == [KEY_A]


def test_missing_block_mid_walk(env: Env) -> None:
    root = env.put(KEY_A, payload(2 * CHUNK_SIZE))
    os.unlink(env.locate(KEY_A))
    walk = env.store.dag_blocks(root)
    next(walk)
    with pytest.raises(MissingBlockError):
        next(walk)


def test_file_moved_by_the_cache_is_found_through_locate(env: Env) -> None:
    data = payload(2 * CHUNK_SIZE)
    root = env.put(KEY_A, data)
    moved = env.cache.with_name("moved")
    env.cache.rename(moved)
    env.cache = moved  # locate(KEY_A) now answers under moved/
    assert b"".join(b for c, b in env.store.dag_blocks(root) if c.codec == RAW) == data


def test_reads_from_four_threads(env: Env) -> None:
    data = payload(8 * CHUNK_SIZE + 5)
    root = env.put(KEY_A, data)
    env.put(KEY_B, payload(3 * CHUNK_SIZE, seed=2))
    results: list[bytes] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(5):
                blocks = env.store.dag_blocks(root)
                results.append(b"".join(b for c, b in blocks if c.codec == RAW))
                env.store.keys()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    env.store.remove_package(KEY_B)  # a write while they read
    for t in threads:
        t.join()
    assert errors == []
    assert results == [data] * 20


# -- blocks with no cache file behind them (put_blocks, add_copy: issue 8's folders) --------

FOLDER = "@folder/1"


def small_folder(names: dict[str, bytes]) -> tuple[CID, list[tuple[CID, bytes]]]:
    """A basic UnixFS directory of one-chunk files: its root and all its blocks."""
    from pacswarm.ipfs.unixfsdir import Entry, build_directory

    files = {name: (CID.of(data), data) for name, data in names.items()}
    built = build_directory({n: Entry(c, len(d)) for n, (c, d) in files.items()})
    return built.root, [(b.cid, b.data) for b in built.blocks] + list(files.values())


def test_put_blocks_serves_raw_and_dag_pb_blocks_and_survives_reopen(
    env: Env, tmp_path: Path
) -> None:
    root, blocks = small_folder({"core.db": b"db bytes", "a.sig": b"signature"})
    env.store.put_blocks(FOLDER, root, 123, blocks)
    assert env.store.root_of(FOLDER) == root
    assert env.store.keys() == [FOLDER]
    for cid, data in blocks:
        assert env.store.get(cid) == data
        assert env.store.has(cid)
        assert env.store.block_size(cid) == len(data)
    assert set(env.store.dag_blocks(root)) == set(blocks)
    env.store.close()
    again = PackageBlockstore(tmp_path / "blocks.sqlite", env.locate)
    try:
        assert set(again.dag_blocks(root)) == set(blocks)
    finally:
        again.close()


def test_put_blocks_refuses_a_block_that_does_not_match_its_cid(env: Env) -> None:
    root, blocks = small_folder({"x": b"first"})
    env.store.put_blocks(FOLDER, root, 1, blocks)
    root2, blocks2 = small_folder({"x": b"second"})
    forged = [(cid, data + b"!") if cid.codec == RAW else (cid, data) for cid, data in blocks2]
    with pytest.raises(BlockstoreError, match="does not match its CID"):
        env.store.put_blocks(FOLDER, root2, 1, forged)
    assert env.store.root_of(FOLDER) == root  # the old version is intact
    assert set(env.store.dag_blocks(root)) == set(blocks)
    assert not env.store.has(root2)
    with pytest.raises(BlockstoreError, match="neither raw nor dag-pb"):
        env.store.put_blocks(FOLDER, root, 1, [(CID(1, 0x71, CID.of(b"x").digest), b"x")])


def test_put_blocks_refcounts_shared_blocks_and_replaces_a_key(env: Env) -> None:
    shared = b"the same .sig in both"
    root1, blocks1 = small_folder({"a": shared, "b": b"only in one"})
    root2, blocks2 = small_folder({"a": shared, "c": b"only in two"})
    env.store.put_blocks("@folder/1", root1, 1, blocks1)
    env.store.put_blocks("@folder/2", root2, 1, blocks2)
    env.store.remove_package("@folder/1")
    assert env.store.get(CID.of(shared)) == shared
    assert not env.store.has(root1)
    assert not env.store.has(CID.of(b"only in one"))
    assert set(env.store.dag_blocks(root2)) == set(blocks2)
    # Replacing a key: what only the old version had goes; what both have stays.
    root3, blocks3 = small_folder({"a": shared, "d": b"new"})
    env.store.put_blocks("@folder/2", root3, 1, blocks3)
    assert env.store.root_of("@folder/2") == root3
    assert not env.store.has(root2)
    assert not env.store.has(CID.of(b"only in two"))
    assert env.store.get(CID.of(shared)) == shared
    env.store.remove_package("@folder/2")
    assert not env.store.has(CID.of(shared))
    assert env.store.keys() == []


def test_put_blocks_shares_a_block_with_a_package_without_harming_it(env: Env) -> None:
    data = payload(2 * CHUNK_SIZE)
    root = env.put(KEY_A, data)
    inner = import_bytes(data).inner[0]
    env.store.put_blocks("@copy/x", inner.cid, len(data), [(inner.cid, inner.block)])
    env.store.remove_package("@copy/x")
    assert b"".join(b for c, b in env.store.dag_blocks(root) if c.codec == RAW) == data


def test_add_copy_is_kubos_import_with_every_block_kept(env: Env) -> None:
    data = payload(3 * CHUNK_SIZE + 99, seed=5)
    key = "@db/core/x86_64/core.db"
    root = env.store.add_copy(key, data)
    assert root == import_bytes(data).root
    assert env.store.root_of(key) == root
    blocks = list(env.store.dag_blocks(root))
    assert b"".join(b for c, b in blocks if c.codec == RAW) == data
    assert len(blocks) == 1 + 4
    small = env.store.add_copy("@sig/core/x86_64/a.pkg.tar.zst.sig", b"sig")
    assert small == CID.of(b"sig") and env.store.get(small) == b"sig"
    env.store.remove_package(key)
    assert not env.store.has(root)
    assert env.corrupted == []


def rot_blob(db: Path, cid: CID) -> None:
    """Flip a byte of a stored blob behind the blockstore's back (bit rot)."""
    import sqlite3

    norm = CID(1, cid.codec, cid.digest).to_bytes()
    with sqlite3.connect(db) as sql:
        (block,) = sql.execute("SELECT block FROM inner_blocks WHERE cid=?", (norm,)).fetchone()
        sql.execute(
            "UPDATE inner_blocks SET block=? WHERE cid=?", (bytes([block[0] ^ 1]) + block[1:], norm)
        )


def test_a_rotten_copy_blob_reads_as_missing_and_never_reaches_on_corrupt(
    env: Env, tmp_path: Path
) -> None:
    """on_corrupt drops cache files by key: a copy's key must never be handed to it."""
    root, blocks = small_folder({"a.sig": b"signature bytes"})
    env.store.put_blocks(FOLDER, root, 1, blocks)
    rot_blob(tmp_path / "blocks.sqlite", CID.of(b"signature bytes"))
    rot_blob(tmp_path / "blocks.sqlite", root)
    assert env.store.get(CID.of(b"signature bytes")) is None
    assert env.store.get(root) is None
    assert env.corrupted == []
    assert not env.store.has(root)
    with pytest.raises(MissingBlockError):
        list(env.store.dag_blocks(root))
    env.store.put_blocks(FOLDER, root, 1, blocks)  # storing it again repairs it
    assert set(env.store.dag_blocks(root)) == set(blocks)
