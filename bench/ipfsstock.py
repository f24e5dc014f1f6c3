"""py-libp2p 0.8.1's own Bitswap client (``BitswapClient`` + ``MerkleDag.fetch_file``) as a
baseline fetcher for bench_ipfs.py, run in an ``ipfsnode.py fetch --mode stock`` child.

The host is built like pacswarm's (``pacswarm.ipfs.host._build_host``: Noise + Yamux, which is
all the pacswarm server speaks); the Bitswap client on it is py-libp2p's, untouched. It keeps
every block in its memory blockstore and returns the file as one ``bytes``, as it does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import multiaddr  # type: ignore[import-untyped]
import trio
from libp2p.bitswap import BitswapClient, MemoryBlockStore
from libp2p.bitswap.dag import MerkleDag
from libp2p.peer.peerinfo import info_from_p2p_addr

from pacswarm.ipfs.host import _build_host
from pacswarm.ipfs.identity import load_or_create_identity


async def _fetch(root: str, peer: str, timeout: float) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory(prefix="stock-") as tmp:
        key = load_or_create_identity(Path(tmp) / "identity.key")
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = _build_host(key, listen, mdns=False)
    async with host.run(listen), trio.open_nursery() as nursery:
        bitswap = BitswapClient(host, MemoryBlockStore())
        await bitswap.start()
        bitswap.set_nursery(nursery)
        info = info_from_p2p_addr(multiaddr.Multiaddr(peer))
        with trio.fail_after(30):
            await host.connect(info)
        dag = MerkleDag(bitswap)
        cpu0, t0 = time.process_time(), time.perf_counter()
        with trio.fail_after(timeout):
            data, _name = await dag.fetch_file(root, peer_id=info.peer_id, timeout=30.0)
        result = len(data), time.perf_counter() - t0, time.process_time() - cpu0
        await bitswap.stop()
        nursery.cancel_scope.cancel()
    return result


def fetch_stock(root: str, peer: str, timeout: float) -> tuple[int, float, float]:
    """(bytes, seconds, CPU seconds) of one stock fetch of ``root`` from ``peer``."""
    return trio.run(_fetch, root, peer, timeout)


async def _serve(package: str, ready: str) -> None:
    """py-libp2p's own Bitswap serving pacswarm's blocks of ``package`` (same CIDs)."""
    import json
    import os
    import signal

    from pacswarm.ipfs.unixfs import import_stream

    data = Path(package).read_bytes()
    with open(package, "rb") as f:
        result = import_stream(f)
    with tempfile.TemporaryDirectory(prefix="stock-") as tmp:
        key = load_or_create_identity(Path(tmp) / "identity.key")
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = _build_host(key, listen, mdns=False)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with host.run(listen), trio.open_nursery() as nursery:
            bitswap = BitswapClient(host, MemoryBlockStore())
            await bitswap.start()
            bitswap.set_nursery(nursery)
            for leaf in result.leaves:
                await bitswap.add_block(
                    str(leaf.cid), data[leaf.offset : leaf.offset + leaf.length]
                )
            for inner in result.inner:
                await bitswap.add_block(str(inner.cid), inner.block)
            del data
            peer = host.get_id().to_base58()
            addrs = [f"{a}" if "/p2p/" in str(a) else f"{a}/p2p/{peer}" for a in host.get_addrs()]
            tmp_ready = ready + ".tmp"
            Path(tmp_ready).write_text(
                json.dumps({"root": str(result.root), "addrs": addrs, "pid": os.getpid()})
            )
            os.replace(tmp_ready, ready)
            async for _ in signals:
                break
            await bitswap.stop()
            nursery.cancel_scope.cancel()


def serve_stock(package: str, ready: str) -> None:
    trio.run(_serve, package, ready)
