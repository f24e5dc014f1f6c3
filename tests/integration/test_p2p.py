"""The libp2p side on loopback: trio bridge, identity, Bitswap both ways, DHT, clean shutdown.

Every host listens on 127.0.0.1 with mDNS off and no bootstrap list: nothing here may reach
the public network. Each test checks that no thread outlives it (the trio thread must end).
"""

from __future__ import annotations

import asyncio
import importlib
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from pacswarm.ipfs.bitswap import BlockMismatchError, MemoryBlocks
from pacswarm.ipfs.bitswap_fetch import FetchError
from pacswarm.ipfs.bridge import BridgeError, TrioBridge
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.host import P2PHost
from pacswarm.ipfs.unixfs import ImportResult, import_bytes

T = TypeVar("T")
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]

pytestmark = pytest.mark.timeout(120)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    """Whatever a test starts (trio thread, zeroconf), it must stop."""
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def blocks_of(result: ImportResult, data: bytes) -> MemoryBlocks:
    leaves = [(leaf.cid, data[leaf.offset : leaf.offset + leaf.length]) for leaf in result.leaves]
    return MemoryBlocks(leaves + [(node.cid, node.block) for node in result.inner])


@asynccontextmanager
async def hosts(tmp_path: Path, *sources: MemoryBlocks | None) -> AsyncIterator[list[P2PHost]]:
    """Started loopback hosts (one per source), always stopped."""
    started: list[P2PHost] = []
    try:
        for i, source in enumerate(sources):
            host = P2PHost(tmp_path / f"key{i}", LOOPBACK, bootstrap=(), mdns=False, blocks=source)
            await host.start()
            started.append(host)
        yield started
    finally:
        for host in started:
            await host.stop()


# ── the bridge ──────────────────────────────────────────────────────────────────────────


async def _double_later(x: int) -> int:
    await trio.sleep(0.01)
    return 2 * x


async def _boom() -> None:
    await trio.sleep(0)
    raise ValueError("boom from trio")


def test_bridge_many_calls_errors_cancel_and_stop() -> None:
    cancelled = threading.Event()

    async def sleeper() -> None:
        try:
            await trio.sleep(60)
        except trio.Cancelled:
            cancelled.set()
            raise

    async def main() -> None:
        bridge = TrioBridge()
        bridge.start()
        try:
            results = await asyncio.gather(*(bridge.run(_double_later, i) for i in range(500)))
            assert results == [2 * i for i in range(500)]
            with pytest.raises(ValueError, match="boom from trio"):
                await bridge.run(_boom)
            task = asyncio.ensure_future(bridge.run(sleeper))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert cancelled.is_set()
            assert await bridge.run(_double_later, 21) == 42  # still usable after a cancel
        finally:
            await bridge.aclose()
        with pytest.raises(BridgeError):
            await bridge.run(_double_later, 1)

    run(main())


def test_bridge_stop_cancels_running_tasks() -> None:
    async def main() -> None:
        bridge = TrioBridge()
        bridge.start()
        task = asyncio.ensure_future(bridge.run(trio.sleep, 60))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await bridge.aclose()
        with pytest.raises(BridgeError):
            await task
        assert time.monotonic() - started < 5

    run(main())


def test_bridge_blocking_stop() -> None:
    bridge = TrioBridge()
    bridge.start()
    bridge.stop()
    assert not bridge.running


# ── hosts ───────────────────────────────────────────────────────────────────────────────


def test_identity_persists_across_restart(tmp_path: Path) -> None:
    async def main() -> tuple[str, str, list[str]]:
        async with hosts(tmp_path, None) as (first,):
            addrs = first.listen_addrs()
            first_id = first.peer_id
        async with hosts(tmp_path, None) as (second,):
            return first_id, second.peer_id, addrs

    first_id, second_id, addrs = run(main())
    assert first_id == second_id
    assert addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs)
    assert all(a.endswith(f"/p2p/{first_id}") for a in addrs)


def test_bitswap_fetch_20mib(tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024)
    result = import_bytes(data)
    assert result.inner, "a 20 MiB file must have dag-pb nodes above its leaves"

    async def main() -> tuple[int, bytes, float]:
        async with hosts(tmp_path, blocks_of(result, data), None) as (seeder, leecher):
            await leecher.connect(seeder.listen_addrs()[0])
            out = io.BytesIO()
            started = time.perf_counter()
            written = await leecher.fetch_file(result.root, out, [seeder.listen_addrs()[0]])
            return written, out.getvalue(), time.perf_counter() - started

    written, got, seconds = run(main())
    assert written == len(data)
    assert got == data
    print(f"\nBitswap py -> py, 20 MiB: {len(data) / seconds / 1e6:.1f} MB/s")


def test_bitswap_fetch_single_block_and_empty_file(tmp_path: Path) -> None:
    small = b"hello world\n"
    empty = b""
    blocks = MemoryBlocks()
    for data in (small, empty):
        for cid, block in blocks_of(import_bytes(data), data)._blocks.items():
            blocks._blocks[cid] = block

    async def main() -> list[bytes]:
        async with hosts(tmp_path, blocks, None) as (seeder, leecher):
            outs = []
            for data in (small, empty):
                out = io.BytesIO()
                peers = [seeder.listen_addrs()[0]]
                await leecher.fetch_file(import_bytes(data).root, out, peers)
                outs.append(out.getvalue())
            return outs

    assert run(main()) == [small, empty]
    assert str(import_bytes(small).root) == (
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    )


def test_corrupt_block_fails_fast_with_clear_error(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    result = import_bytes(data)
    blocks = blocks_of(result, data)
    victim = result.leaves[5]
    blocks.put(victim.cid, b"X" * victim.length)  # wrong bytes under a real CID

    async def main() -> float:
        async with hosts(tmp_path, blocks, None) as (seeder, leecher):
            started = time.monotonic()
            with pytest.raises(BlockMismatchError, match="corrupt or wrong block"):
                await leecher.fetch_file(result.root, io.BytesIO(), [seeder.listen_addrs()[0]])
            return time.monotonic() - started

    assert run(main()) < 10


def test_missing_block_fails_with_dont_have(tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024)
    result = import_bytes(data)
    blocks = blocks_of(result, data)
    del blocks._blocks[result.leaves[2].cid.digest]

    async def main() -> None:
        async with hosts(tmp_path, blocks, None) as (seeder, leecher):
            with pytest.raises(FetchError, match="no peer has block"):
                await leecher.fetch_file(result.root, io.BytesIO(), [seeder.listen_addrs()[0]])

    run(main())


def test_fetch_moves_on_from_a_peer_without_the_blocks(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    result = import_bytes(data)

    async def main() -> bytes:
        async with hosts(tmp_path, MemoryBlocks(), blocks_of(result, data), None) as trio_hosts:
            empty, seeder, leecher = trio_hosts
            out = io.BytesIO()
            peers = [empty.listen_addrs()[0], seeder.listen_addrs()[0]]
            await leecher.fetch_file(result.root, out, peers)
            return out.getvalue()

    assert run(main()) == data


def test_peer_without_bitswap_is_skipped_or_reported(tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024)
    result = import_bytes(data)

    async def main() -> bytes:
        async with hosts(tmp_path, None, blocks_of(result, data), None) as trio_hosts:
            mute, seeder, leecher = trio_hosts
            assert mute.bitswap is not None
            await mute.bridge.run(mute.bitswap.stop)  # no Bitswap protocol handlers any more
            with pytest.raises(FetchError, match="no peer reachable over Bitswap"):
                await leecher.fetch_file(result.root, io.BytesIO(), [mute.listen_addrs()[0]])
            out = io.BytesIO()
            peers = [mute.listen_addrs()[0], seeder.listen_addrs()[0]]
            await leecher.fetch_file(result.root, out, peers)
            return out.getvalue()

    assert run(main()) == data


def test_cancelled_fetch_leaves_host_usable(tmp_path: Path) -> None:
    data = os.urandom(8 * 1024 * 1024)
    result = import_bytes(data)

    async def main() -> bytes:
        async with hosts(tmp_path, blocks_of(result, data), None) as (seeder, leecher):
            peers = [seeder.listen_addrs()[0]]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(leecher.fetch_file(result.root, io.BytesIO(), peers), 0.05)
            out = io.BytesIO()
            await leecher.fetch_file(result.root, out, peers)
            return out.getvalue()

    assert run(main()) == data


def test_dht_provide_and_find(tmp_path: Path) -> None:
    cid = CID.of(b"pacswarm dht test")

    async def main() -> tuple[list[str], str]:
        async with hosts(tmp_path, None, None, None) as (provider, middle, seeker):
            await provider.connect(middle.listen_addrs()[0])
            await seeker.connect(middle.listen_addrs()[0])
            await asyncio.sleep(1)  # identify, then the routing tables take the peers in
            await provider.provide(cid)
            found = await seeker.find_providers(cid, 5)
            return [p.peer_id for p in found], provider.peer_id

    found, provider_id = run(main())
    assert provider_id in found


def test_fetch_finds_providers_on_the_dht(tmp_path: Path) -> None:
    data = os.urandom(600 * 1024)
    result = import_bytes(data)

    async def main() -> bytes:
        async with hosts(tmp_path, blocks_of(result, data), None, None) as (seed, middle, leech):
            await seed.connect(middle.listen_addrs()[0])
            await leech.connect(middle.listen_addrs()[0])
            await asyncio.sleep(1)
            await seed.provide(result.root)
            out = io.BytesIO()
            # only the middle peer is connected and it lacks the blocks: the DHT must help
            providers = await leech.find_providers(result.root, 5)
            addrs = [f"{a}/p2p/{p.peer_id}" for p in providers for a in p.addrs[:1]]
            await leech.fetch_file(result.root, out, addrs[:1])
            return out.getvalue()

    assert run(main()) == data


# ── interop (skipped unless the harnesses and their runtimes exist) ─────────────────────


def _harness(name: str) -> Any:
    """tests/support/<name>.py, or a skip when it (or the peer's runtime) is unavailable."""
    try:
        module = importlib.import_module(f"tests.support.{name}")
    except Exception as e:  # pragma: no cover - depends on the checkout
        pytest.skip(f"tests/support/{name}.py unavailable: {e}")
    if not getattr(module, f"{name}_available", lambda: False)():
        pytest.skip(module.unavailable_reason())
    return module


def test_kubo_fetches_from_our_bitswap_server(tmp_path: Path) -> None:
    kubo = _harness("kubo")
    data = os.urandom(3 * 1024 * 1024 + 12345)
    result = import_bytes(data)

    async def main() -> bytes:
        async with hosts(tmp_path, blocks_of(result, data)) as (seeder,):
            with kubo.KuboPeer(tmp_path / "kubo") as peer:
                peer.connect(seeder.listen_addrs()[0])
                started = time.perf_counter()
                peer.get(str(result.root), tmp_path / "out", timeout=60)
                seconds = time.perf_counter() - started
        print(f"\nBitswap py -> kubo: {len(data) / seconds / 1e6:.1f} MB/s")
        return (tmp_path / "out").read_bytes()

    assert run(main()) == data


def test_we_fetch_from_kubo(tmp_path: Path) -> None:
    """kubo's own import: CIDv0, dag-pb leaves carrying their bytes inline."""
    kubo = _harness("kubo")
    data = os.urandom(3 * 1024 * 1024 + 999)
    (tmp_path / "file").write_bytes(data)

    async def main() -> bytes:
        with kubo.KuboPeer(tmp_path / "kubo") as peer:
            root = CID.parse(peer.add(tmp_path / "file"))
            async with hosts(tmp_path, None) as (leecher,):
                await leecher.connect(peer.multiaddr)  # time the transfer, not py's dial
                out = io.BytesIO()
                started = time.perf_counter()
                await leecher.fetch_file(root, out, [peer.multiaddr])
                seconds = time.perf_counter() - started
        print(f"\nBitswap kubo -> py: {len(data) / seconds / 1e6:.1f} MB/s")
        return out.getvalue()

    assert run(main()) == data


def test_helia_fetches_from_our_bitswap_server(tmp_path: Path) -> None:
    helia = _harness("helia")
    data = os.urandom(3 * 1024 * 1024 + 4321)
    result = import_bytes(data)

    async def main() -> bytes:
        async with hosts(tmp_path, blocks_of(result, data)) as (seeder,):
            with helia.HeliaPeer() as peer:
                peer.dial(seeder.listen_addrs()[0])
                started = time.perf_counter()
                peer.cat(str(result.root), tmp_path / "out", timeout=60)
                seconds = time.perf_counter() - started
        print(f"\nBitswap py -> Helia: {len(data) / seconds / 1e6:.1f} MB/s")
        return (tmp_path / "out").read_bytes()

    assert run(main()) == data


def test_we_fetch_from_helia(tmp_path: Path) -> None:
    helia = _harness("helia")
    data = os.urandom(3 * 1024 * 1024 + 777)
    (tmp_path / "file").write_bytes(data)

    async def main() -> bytes:
        with helia.HeliaPeer() as peer:
            root = CID.parse(peer.add(tmp_path / "file"))
            assert root == import_bytes(data).root  # same importer settings as kubo -cid-v1
            async with hosts(tmp_path, None) as (leecher,):
                await leecher.connect(peer.multiaddr)  # time the transfer, not py's dial
                out = io.BytesIO()
                started = time.perf_counter()
                await leecher.fetch_file(root, out, [peer.multiaddr])
                seconds = time.perf_counter() - started
                # again: Helia serves a CID twice only if we cancelled the first want
                again = io.BytesIO()
                await leecher.fetch_file(root, again, [peer.multiaddr])
                assert again.getvalue() == data
        print(f"\nBitswap Helia -> py: {len(data) / seconds / 1e6:.1f} MB/s")
        return out.getvalue()

    assert run(main()) == data


# ── mDNS, in a private network namespace (never multicast on the real LAN) ──────────────

MDNS_SCRIPT = """
import asyncio, sys, threading
from pathlib import Path
from pacswarm.ipfs.host import P2PHost

async def main() -> None:
    base = Path(sys.argv[1])
    a = P2PHost(base / "a.key", ["/ip4/127.0.0.1/tcp/0"], mdns=True)
    b = P2PHost(base / "b.key", ["/ip4/127.0.0.1/tcp/0"], mdns=True)
    await a.start()
    await b.start()
    try:
        for _ in range(100):
            if b.peer_id in a.connected_peers():
                break
            await asyncio.sleep(0.1)
        print("connected" if b.peer_id in a.connected_peers() else "not connected")
    finally:
        await a.stop()
        await b.stop()
    print("threads", threading.active_count())

asyncio.run(main())
"""


def test_mdns_discovers_and_connects_in_private_netns(tmp_path: Path) -> None:
    """Two hosts with mDNS on, alone in a fresh network namespace (loopback only)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare not available")
    setup = "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo"
    probe = subprocess.run([unshare, "-rn", "sh", "-c", setup], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace: {probe.stderr.decode()[-200:]}")
    script = tmp_path / "mdns_pair.py"
    script.write_text(MDNS_SCRIPT)
    command = f'{setup} && exec "$0" "$1" "$2"'
    proc = subprocess.run(
        [unshare, "-rn", "sh", "-c", command, sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "connected" in proc.stdout.splitlines(), proc.stdout + proc.stderr[-2000:]
    assert "threads 1" in proc.stdout  # zeroconf's threads and the trio threads all ended


class _SilentBlocks(MemoryBlocks):
    """Says it has every block, then never sends one (until released): a stalled peer."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def has(self, cid: CID) -> bool:
        return True

    def get(self, cid: CID) -> bytes | None:
        self.release.wait(60)
        return None


def test_fetch_moves_on_from_a_peer_that_stalls(tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024)
    result = import_bytes(data)
    release = threading.Event()

    async def main() -> tuple[bytes, float]:
        silent_blocks = _SilentBlocks(release)
        try:
            async with hosts(tmp_path, silent_blocks, blocks_of(result, data), None) as trio_hosts:
                silent, seeder, leecher = trio_hosts
                out = io.BytesIO()
                peers = [silent.listen_addrs()[0], seeder.listen_addrs()[0]]
                started = time.monotonic()
                await leecher.fetch_file(result.root, out, peers, stall_timeout=2.0)
                elapsed = time.monotonic() - started
                release.set()  # let the silent host's thread go, so it can stop
                return out.getvalue(), elapsed
        finally:
            release.set()

    got, elapsed = run(main())
    assert got == data
    # It waited out the stall timeout on the silent peer, then got everything elsewhere.
    assert 2.0 <= elapsed < 30
