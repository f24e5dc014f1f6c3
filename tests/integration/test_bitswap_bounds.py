"""The Bitswap fetch against DAGs a peer chose: real py-libp2p hosts on 127.0.0.1.

We know only the root CID (from an announcement; the db's CSIZE bounds the file). A peer can
send any DAG behind it: one whose nodes link the same child many times over (a "DAG bomb"),
sizes that lie, or a DAG that never ends. Each must end in a clear :class:`FetchError`, fast,
with nothing written; an honest file of exactly ``max_size`` must still arrive, also from an
offset (what a resumed download asks for).
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from pacswarm.ipfs.bitswap import MemoryBlocks
from pacswarm.ipfs.bitswap_fetch import FetchError
from pacswarm.ipfs.cid import CID, DAG_PB, RAW
from pacswarm.ipfs.dagpb import PBLink, PBNode, encode_node
from pacswarm.ipfs.unixfs import encode_file_data, import_bytes
from tests.integration.test_p2p import (  # the loopback hosts and their checks
    _SilentBlocks,
    blocks_of,
    hosts,
    no_threads_left,  # noqa: F401 - autouse: every host's trio thread must end
    run,
)

pytestmark = pytest.mark.timeout(120)


def bomb_dag(
    fanout: int, depth: int, declared: list[int] | None = None
) -> tuple[CID, MemoryBlocks]:
    """A "DAG bomb": each level one node linking the level below ``fanout`` times.

    A 100-byte leaf and ``depth`` nodes of ~40 bytes a link (12 KB at fanout 60, depth 5)
    declare fanout**depth leaves. Sizes are honest unless ``declared`` gives the root's
    blocksizes (a root that lies to look small).
    """
    leaf = b"L" * 100
    cid, size = CID.of(leaf, RAW), len(leaf)
    blocks = MemoryBlocks([(cid, leaf)])
    for level in range(depth):
        sizes = [size] * fanout
        if declared is not None and level == depth - 1:
            sizes = declared
        links = tuple(PBLink(cid, "", size) for _ in range(fanout))
        block = encode_node(PBNode(links, encode_file_data(sum(sizes), sizes)))
        cid, size = CID.of(block, DAG_PB), size * fanout
        blocks.put(cid, block)
    return cid, blocks


def _fetch_bomb(tmp_path: Path, root: CID, blocks: MemoryBlocks, max_size: int) -> FetchError:
    """Fetch a bomb; the FetchError it raised (the test fails if it does not raise)."""

    async def main() -> FetchError:
        async with hosts(tmp_path, blocks, None) as (seeder, leecher):
            await leecher.connect(seeder.listen_addrs()[0])
            out = io.BytesIO()
            wall, cpu = time.monotonic(), time.process_time()
            with pytest.raises(FetchError) as caught:
                await leecher.fetch_file(root, out, [seeder.listen_addrs()[0]], max_size=max_size)
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            print(f"\nbomb refused after {wall * 1000:.0f} ms, {cpu * 1000:.0f} ms CPU")
            assert out.getvalue() == b""  # nothing of it reached the file
            # Generous bound (normal: tens of ms); without the bounds this never ends.
            assert wall < 5
            return caught.value

    return run(main())


def test_bitswap_dag_bomb_is_refused_at_its_root(tmp_path: Path) -> None:
    """fanout 60, depth 5: 60**5 leaves declared by 12 KB of blocks; the db says 10 MiB."""
    root, blocks = bomb_dag(60, 5)
    error = _fetch_bomb(tmp_path, root, blocks, max_size=10 * 1024 * 1024)
    assert f"block {root} declares a file of {100 * 60**5} bytes" in str(error)
    assert "more than max_size=10485760" in str(error)


def test_bitswap_dag_bomb_whose_root_lies_is_refused_at_the_next_level(tmp_path: Path) -> None:
    """The root claims 60 one-byte parts; the node it links holds 60**4 * 100 bytes."""
    root, blocks = bomb_dag(60, 5, declared=[1] * 60)
    error = _fetch_bomb(tmp_path, root, blocks, max_size=10 * 1024 * 1024)
    assert f"holds {100 * 60**4} bytes of the file where its parent declared 1" in str(error)


def test_bitswap_dag_of_many_tiny_repeats_is_refused(tmp_path: Path) -> None:
    """Honest sizes within max_size, but 1024 links to one 100-byte leaf, twice over: far
    more blocks than a file of that size has (positions count, not distinct CIDs)."""
    root, blocks = bomb_dag(1024, 2)
    error = _fetch_bomb(tmp_path, root, blocks, max_size=200 * 1024 * 1024)
    assert "blocks, more than the 12864 allowed for max_size=209715200" in str(error)


def test_bitswap_dag_of_repeats_within_the_bounds_costs_little(tmp_path: Path) -> None:
    """The worst a peer can do under a 4 GiB max_size: 4 distinct blocks, the root linking X
    127 times, X linking node Y 1024 times, Y linking a 100-byte leaf. Consistent sizes, 260k
    positions (just under the 262208 allowed): a valid 13 MB file. Its 130k copies of Y are
    expanded in place, not by searching the walk for each (130k x 65k steps)."""
    leaf = b"L" * 100
    blocks = MemoryBlocks([(CID.of(leaf, RAW), leaf)])
    cid, size = CID.of(leaf, RAW), len(leaf)
    for fanout in (1, 1024, 127):
        links = tuple(PBLink(cid, "", size) for _ in range(fanout))
        block = encode_node(PBNode(links, encode_file_data(size * fanout, [size] * fanout)))
        cid, size = CID.of(block, DAG_PB), size * fanout
        blocks.put(cid, block)

    async def main() -> tuple[int, float]:
        async with hosts(tmp_path, blocks, None) as (seeder, leecher):
            peers = [seeder.listen_addrs()[0]]
            out = io.BytesIO()
            started = time.process_time()
            await leecher.fetch_file(cid, out, peers, max_size=4 << 30)
            cpu = time.process_time() - started
            print(f"\n{len(out.getvalue())} bytes from 4 blocks: {cpu:.2f} s CPU")
            assert out.getvalue() == leaf * (127 * 1024)
            return len(out.getvalue()), cpu

    written, cpu = run(main())
    assert written == size
    assert cpu < 20  # generous: normal is about 1 s


def test_bitswap_fetch_within_max_size_and_its_edge(tmp_path: Path) -> None:
    """An honest file of exactly max_size is fetched; one byte less refuses it at the root."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    result = import_bytes(data)

    async def main() -> bytes:
        async with hosts(tmp_path, blocks_of(result, data), None) as (seeder, leecher):
            peers = [seeder.listen_addrs()[0]]
            with pytest.raises(FetchError, match=f"more than max_size={len(data) - 1}"):
                await leecher.fetch_file(result.root, io.BytesIO(), peers, max_size=len(data) - 1)
            out = io.BytesIO()
            await leecher.fetch_file(result.root, out, peers, max_size=len(data))
            return out.getvalue()

    assert run(main()) == data


def test_bitswap_fetch_deadline(tmp_path: Path) -> None:
    """A peer that keeps the fetch alive but never finishes it is cut by the deadline."""
    data = os.urandom(1024 * 1024)
    result = import_bytes(data)
    release = threading.Event()

    async def main() -> float:
        try:
            async with hosts(tmp_path, _SilentBlocks(release), None) as (silent, leecher):
                peers = [silent.listen_addrs()[0]]
                started = time.monotonic()
                with pytest.raises(FetchError, match="deadline of 1 s"):
                    await leecher.fetch_file(result.root, io.BytesIO(), peers, deadline=1.0)
                release.set()
                return time.monotonic() - started
        finally:
            release.set()

    assert run(main()) < 10  # the stall timeout (30 s) did not fire first


class _CountingBlocks(MemoryBlocks):
    """Records which blocks were served, to show what a fetch from an offset skips."""

    def __init__(self, blocks: MemoryBlocks) -> None:
        super().__init__()
        self._blocks = dict(blocks._blocks)
        self.served: list[bytes] = []

    def get(self, cid: CID) -> bytes | None:
        self.served.append(cid.digest)
        return super().get(cid)


def test_bitswap_fetch_from_an_offset_skips_the_leaves_before_it(tmp_path: Path) -> None:
    """What a resumed download asks for: the bytes from the offset, and only the leaves that
    hold them are fetched (the blocksizes say where each subtree ends)."""
    data = os.urandom(10 * 256 * 1024 + 99)  # 11 leaves under one node
    result = import_bytes(data)
    leaves = {leaf.cid.digest for leaf in result.leaves}
    offsets = [0, 1, 256 * 1024, 5 * 256 * 1024 + 7, len(data) - 1, len(data)]

    async def main() -> list[tuple[bytes, int]]:
        blocks = _CountingBlocks(blocks_of(result, data))
        got = []
        async with hosts(tmp_path, blocks, None) as (seeder, leecher):
            peers = [seeder.listen_addrs()[0]]
            for offset in offsets:
                blocks.served.clear()
                out = io.BytesIO()
                written = await leecher.fetch_file(
                    result.root, out, peers, max_size=len(data), offset=offset
                )
                assert written == len(out.getvalue())
                got.append((out.getvalue(), len(leaves & set(blocks.served))))
        return got

    for offset, (got, leaves_served) in zip(offsets, run(main()), strict=True):
        assert got == data[offset:], offset
        needed = [leaf for leaf in result.leaves if leaf.offset + leaf.length > offset]
        assert leaves_served == len(needed), offset
