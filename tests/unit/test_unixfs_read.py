"""The one UnixFS decoder both fetchers use, and the bounds it holds a peer's DAG to. Pure.

A peer chooses the DAG behind a root CID; these are the rules that keep a hostile one from
costing more than an honest file of ``max_size`` (see ``unixfs.FileBudget``).
"""

from __future__ import annotations

import pytest

from pacswarm.ipfs.cid import CID, DAG_PB, RAW, encode_varint
from pacswarm.ipfs.dagpb import PBLink, PBNode, encode_node
from pacswarm.ipfs.unixfs import (
    FileBudget,
    UnixFSError,
    decode_file_node,
    encode_file_data,
    import_bytes,
    max_blocks_for,
)

LEAF = CID.of(b"x" * 10, RAW)


def node(sizes: list[int], data: bytes | None = None, links: int | None = None) -> bytes:
    count = len(sizes) if links is None else links
    unixfs = encode_file_data(sum(sizes), sizes) if data is None else data
    return encode_node(PBNode(tuple(PBLink(LEAF, "", 10) for _ in range(count)), unixfs))


def test_decodes_what_the_importer_makes() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: 4 leaves under one node
    result = import_bytes(data)
    root = decode_file_node(result.inner[0].block)
    assert root.blocksizes == (262144,) * 4
    assert [link.cid for link in root.links] == [leaf.cid for leaf in result.leaves]
    assert root.data == b"" and root.size == len(data)


def test_kubo_default_leaf_carries_its_bytes_inline() -> None:
    """A CIDv0 leaf: no links, the chunk in UnixFS Data (field 2), filesize (3)."""
    chunk = b"inline bytes"
    block = encode_node(PBNode((), b"\x08\x02\x12" + bytes([len(chunk)]) + chunk + b"\x18\x0c"))
    leaf = decode_file_node(block)
    assert (leaf.data, leaf.links, leaf.size) == (chunk, (), len(chunk))


def test_packed_blocksizes_are_read() -> None:
    packed = b"".join(encode_varint(10) for _ in range(3))
    data = b"\x08\x02\x18\x1e\x22" + bytes([len(packed)]) + packed
    assert decode_file_node(node([], data=data, links=3)).blocksizes == (10, 10, 10)


def test_up_to_1024_links_then_refused() -> None:
    assert len(decode_file_node(node([10] * 1024)).links) == 1024
    with pytest.raises(UnixFSError, match="1025 links, more than 1024"):
        decode_file_node(node([10] * 1025))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x0a\x02\x08\x01", r"not a UnixFS file node \(DataType 1\)"),  # a directory
        (encode_node(PBNode((), None)), "without UnixFS data"),
        (node([10, 10], links=3), "3 links but 2 blocksizes"),
        (node([10, 0]), r"empty subtree \(blocksize 0\)"),
        (node([10], data=b"\x08\x02\x18\x07\x20\x0a"), "filesize 7 is not its parts' sum 10"),
        (b"\x0a\x05\x08\x02\x12\x05A", "UnixFS data field runs past"),  # 5 bytes, 1 sent
        (b"\x0a\x05\x08\x02", "dag-pb field runs past"),  # the node's Data cut short
        (b"\x0a\x03\x08\x02\x12", "truncated or overlong varint"),
        (b"\x0a\x02\x0d\x00", "wire type 5"),
        (b"\x12\x02\x18\x01", "malformed node"),  # a link without a Hash
    ],
)
def test_refused_nodes(block: bytes, message: str) -> None:
    with pytest.raises(UnixFSError, match=message):
        decode_file_node(block)


def test_budget_refuses_a_root_declaring_more_than_max_size() -> None:
    budget = FileBudget(max_size=100)
    root = CID.of(b"root", DAG_PB)
    with pytest.raises(UnixFSError, match=f"block {root} declares a file of 101 bytes"):
        budget.node(root, decode_file_node(node([50, 51])), None)
    FileBudget(max_size=101).node(root, decode_file_node(node([50, 51])), None)


def test_budget_checks_each_part_against_its_parents_blocksize() -> None:
    budget = FileBudget(max_size=1000)
    with pytest.raises(UnixFSError, match="holds 11 bytes of the file where its parent declared"):
        budget.leaf(LEAF, 11, 10)
    with pytest.raises(UnixFSError, match=r"holds 20 bytes .* declared 10"):
        budget.node(LEAF, decode_file_node(node([10, 10])), 10)
    budget.leaf(LEAF, 10, 10)


def test_budget_counts_positions_not_distinct_cids() -> None:
    """The same child linked over and over costs a position each time."""
    assert max_blocks_for(16 * 1024 * 100) == 164
    budget = FileBudget(max_size=16 * 1024 * 100)
    parent = decode_file_node(node([10] * 100))  # 100 links, all to LEAF
    budget.node(LEAF, parent, None)  # 1 + 100 positions
    with pytest.raises(UnixFSError, match="brings the DAG to 201 blocks, more than the 164"):
        budget.node(LEAF, parent, 1000)
