"""UnixFS directories (src/pacswarm/ipfs/unixfsdir.py): murmur3, basic and HAMT shapes."""

from __future__ import annotations

import random

import pytest

from pacswarm.ipfs.cid import CID, DAG_PB, RAW
from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.murmur3 import murmur3_x64_64, murmur3_x64_64_py, murmur3_x64_128_py
from pacswarm.ipfs.unixfsdir import (
    SHARD_THRESHOLD,
    DirectoryBuilder,
    DirectoryError,
    Entry,
    build_directory,
    estimated_size,
)


def arch_like_names(n: int, seed: int = 8) -> list[str]:
    """``n`` distinct package filenames shaped like Arch's (name-ver-rel-arch.pkg.tar.zst)."""
    rng = random.Random(seed)
    words = ["lib", "python", "perl", "haskell", "ttf", "kde", "gst", "qt6", "rust", "go"]
    names: set[str] = set()
    while len(names) < n:
        base = f"{rng.choice(words)}-{rng.choice(words)}{rng.randrange(10_000)}"
        ver = f"{rng.randrange(30)}.{rng.randrange(100)}.{rng.randrange(10)}-{rng.randrange(1, 5)}"
        names.add(f"{base}-{ver}-{rng.choice(['x86_64', 'any'])}.pkg.tar.zst")
    return sorted(names)


def raw_cid(name: str) -> CID:
    return CID.of(name.encode(), RAW)


def boundary_names(extra: int) -> list[str]:
    """4,096 names of 28 bytes (64 estimated bytes each with a raw CIDv1 of 36 bytes): exactly
    the 262,144 threshold; ``extra`` bytes more on the last name."""
    names = [f"{i:06d}".ljust(28, "-") for i in range(4096)]
    names[-1] += "+" * extra
    return names


def entries_of(names: list[str]) -> dict[str, Entry]:
    """Entries as if each file held its own name (raw leaf CIDs; what the Helia test imports)."""
    return {n: Entry(raw_cid(n), len(n.encode())) for n in names}


# Helia's importer (kubo settings) on the same 15,000 files: tests/interop/test_unixfsdir_helia.py
HELIA_15000_ROOT = "bafybeif4srgffpnq7rk34jyjubzt6erugqcyuhseifb57bdpq6dk2bdu5y"


def test_murmur3_vectors() -> None:
    # MurmurHash3_x64_128 reference vectors (seed 0), little-endian h1||h2 as usually printed
    fox = b"The quick brown fox jumps over the lazy dog"
    assert murmur3_x64_128_py(fox)[0].to_bytes(8, "little").hex() == "6c1b07bc7bbc4be3"
    assert murmur3_x64_128_py(fox)[1].to_bytes(8, "little").hex() == "47939ac4a93c437a"
    assert murmur3_x64_128_py(b"") == (0, 0)
    # the HAMT hash: h1 big-endian, first byte = first level's slot
    assert murmur3_x64_64(fox).hex() == "e34bbc7bbc071b6c"
    assert murmur3_x64_64(b"hello").hex() == "cbd8a7b341bd9b02"
    rng = random.Random(3)
    for n in range(0, 70):  # every tail length, one and several 16-byte blocks
        data = rng.randbytes(n)
        assert murmur3_x64_64_py(data) == murmur3_x64_64(data), n


def test_small_directory_is_one_sorted_node() -> None:
    names = ["b.pkg.tar.zst", "a.pkg.tar.zst.sig", "Z.db", "a.pkg.tar.zst", "\u00e9.files"]
    entries = entries_of(names)
    built = build_directory(entries)
    assert not built.sharded and len(built.blocks) == 1
    block = built.blocks[0]
    assert built.root == CID.of(block.data, DAG_PB) and built.root.version == 1
    node = decode_node(block.data)
    assert node.data == b"\x08\x01"  # UnixFS Directory, nothing else
    assert [link.name for link in node.links] == sorted(names, key=str.encode)
    assert all(link.cid == entries[link.name].cid for link in node.links)
    assert all(link.tsize == entries[link.name].size for link in node.links)
    assert built.size == len(block.data) + sum(e.size for e in entries.values())


def test_threshold_is_strict() -> None:
    at = entries_of(boundary_names(0))
    assert estimated_size(at) == SHARD_THRESHOLD
    assert not build_directory(at).sharded
    over = build_directory(entries_of(boundary_names(1)))
    assert over.sharded
    root = decode_node(over.blocks[0].data)
    assert root.data is not None and root.data[:2] == b"\x08\x05"


def walk(blocks: dict[CID, bytes], cid: CID, depth: int, found: dict[str, CID]) -> None:
    """Check one shard's invariants and collect the entries under it."""
    node = decode_node(blocks[cid])
    slots = [int(link.name[:2], 16) for link in node.links]
    assert slots == sorted(set(slots))
    bitmap = sum(1 << s for s in slots)
    bits = bitmap.to_bytes((bitmap.bit_length() + 7) // 8, "big")
    assert node.data == b"\x08\x05\x12" + bytes([len(bits)]) + bits + b"\x28\x22\x30\x80\x02"
    for slot, link in zip(slots, node.links, strict=True):
        assert link.name[:2] == f"{slot:02X}"
        if len(link.name) == 2:
            sub = decode_node(blocks[link.cid])
            assert link.tsize == len(blocks[link.cid]) + sum(x.tsize for x in sub.links)
            walk(blocks, link.cid, depth + 1, found)
        else:
            name = link.name[2:]
            assert murmur3_x64_64(name.encode())[depth] == slot
            assert name not in found
            found[name] = link.cid


def test_15000_packages_shard_as_kubo_does() -> None:
    entries = entries_of(arch_like_names(15_000))
    built = build_directory(entries)
    assert built.sharded
    assert str(built.root) == HELIA_15000_ROOT
    blocks = {b.cid: b.data for b in built.blocks}
    found: dict[str, CID] = {}
    walk(blocks, built.root, 0, found)
    assert found == {n: e.cid for n, e in entries.items()}


def test_incremental_updates_equal_a_fresh_build() -> None:
    names = arch_like_names(15_000)
    builder = DirectoryBuilder(entries_of(names))
    builder.build()
    new = names[100]
    builder.set(new, Entry(raw_cid("other"), 5))
    updated = builder.build()
    assert 1 <= len(builder.fresh_blocks()) <= 8  # only the path from the root to the entry
    expected = entries_of(names)
    expected[new] = Entry(raw_cid("other"), 5)
    assert updated.root == build_directory(expected).root
    # removing entries collapses sub-shards: the tree depends only on what is left
    for name in names[:5000]:
        assert builder.remove(name)
    assert not builder.remove(names[0])
    assert builder.build().root == build_directory(entries_of(names[5000:])).root
    # and below the threshold the folder is basic again
    for name in names[5000:13_000]:
        builder.remove(name)
    small = builder.build()
    assert not small.sharded
    assert small.root == build_directory(entries_of(names[13_000:])).root


def test_bad_names_are_refused() -> None:
    builder = DirectoryBuilder()
    for bad in ["", ".", "..", "a/b", "nul\0"]:
        with pytest.raises(DirectoryError, match="cannot be a directory entry name"):
            builder.set(bad, Entry(raw_cid("x"), 1))
    assert len(builder) == 0
