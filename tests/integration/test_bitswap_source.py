"""Peers as sources of a real download: Bitswap from a real py-libp2p peer, and peers that fail.

Node B runs in this process (a real Node: store, gpg keyring, mirror on 127.0.0.1, IPFS host)
so the test can give its source plan the peers a swarm would find (``plan.peers``). The peers
are real too: a P2PHost holding the package's blocks, and small gateways that stay silent,
stall midway or serve the wrong file. Whatever a peer does, the package must end up cached
with the db's bytes, from the peer if it is honest, else from the mirror continuing at the
offset the peer reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import web

from pacswarm.config import load_config
from pacswarm.fetch.source import Source, Want
from pacswarm.ipfs.bitswap import BlockSource
from pacswarm.ipfs.blockstore import PackageBlockstore
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.host import P2PHost
from pacswarm.node import Node
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.swarm.reputation import Reputation
from pacswarm.swarm.sources import PeerOffer, order_offers, peer_sources
from tests.support.mirror import MirrorServer
from tests.support.testrepo import Package, TestRepo

pytestmark = pytest.mark.timeout(180)
T = TypeVar("T")
EXTRA_DB = RequestPath("extra", "x86_64", "extra.db", FileKind.DB)
CORE_DB = RequestPath("core", "x86_64", "core.db", FileKind.DB)
#: The first-byte deadline given to peers here (the node's default is 2 s).
FIRST_BYTE = 1.0
#: The stall watchdog, far above FIRST_BYTE (and the most the config allows, below pacman's
#: 10 s): a peer replaced for silence must be so by the first-byte deadline, not by this.
STALL = 9.0


def _node(tmp_path: Path, mirror: MirrorServer, gpgdir: Path) -> Node:
    """Node B, in this process, with the stall watchdog at :data:`STALL`."""
    config_file = tmp_path / "b.toml"
    config_file.write_text(
        'gateway_listen = "127.0.0.1:0"\np2p_listen = ["/ip4/127.0.0.1/tcp/0"]\n'
        f"bootstrap = []\nmdns = false\nstall_timeout = {STALL}\n"
    )
    config = load_config(config_file, {"data_dir": tmp_path / "b", "gpgdir": gpgdir})
    return Node(config, [mirror.url_template])


async def _running(node: Node, body: Callable[[], Awaitable[T]], bound: float = 40.0) -> T:
    """Run ``body`` with node B started (dbs fetched from the mirror), then stop it all."""
    node.store.open()
    await node.upstream.start()
    await node.ipfs.start()
    try:
        await node.dbs.refresh(CORE_DB)
        await node.dbs.refresh(EXTRA_DB)
        return await asyncio.wait_for(body(), bound)
    finally:
        await node.ipfs.stop()
        await node.upstream.close()
        node.store.close()


def _want(node: Node, pkg: Package) -> Want:
    repo = pkg.repo
    record = node.dbs.lookup(repo, "x86_64", pkg.filename)
    assert record is not None
    return Want(RequestPath(repo, "x86_64", pkg.filename, FileKind.PACKAGE), record)


@contextlib.asynccontextmanager
async def _peer(tmp_path: Path, blocks: BlockSource) -> AsyncIterator[P2PHost]:
    host = P2PHost(
        tmp_path / f"peer{random.random()}.key",
        ["/ip4/127.0.0.1/tcp/0"],
        bootstrap=(),
        mdns=False,
        blocks=blocks,
    )
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


def _offer(peer_id: str, root: CID, gateway: str | None = None) -> PeerOffer:
    return PeerOffer(peer_id, str(root), gateway, lan=True, busy=0)


def _use_peers(
    node: Node, session: aiohttp.ClientSession, reputation: Reputation, offers: list[PeerOffer]
) -> None:
    """What the swarm service does: the plan asks for the package's peers on every attempt."""

    def peers(want: Want) -> list[Source]:
        ordered = order_offers(offers, random.Random(0))
        return peer_sources(
            ordered, node.ipfs.host, session, reputation, node.peer_health, FIRST_BYTE
        )

    node.downloader.plan.peers = peers


def test_a_package_over_bitswap_from_a_peer_is_admitted_and_cached(
    tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, pacman_gpgdir: Path
) -> None:
    """The 20 MiB package comes from a real peer over Bitswap; the mirror sends none of it."""
    pkg = test_repo.packages["largepkg"]
    node = _node(tmp_path, mirror, pacman_gpgdir)
    mirror.set_fault("500", pkg.filename)  # the mirror cannot deliver it: only the peer can

    async def body() -> tuple[Path, float]:
        blocks = PackageBlockstore(tmp_path / "peer.sqlite", locate=lambda key: pkg.path)
        root = blocks.add_package("largepkg", pkg.path)
        async with _peer(tmp_path, blocks) as peer, aiohttp.ClientSession() as session:
            assert node.ipfs.host is not None
            await node.ipfs.host.connect(peer.listen_addrs()[0])
            _use_peers(node, session, Reputation(3, 3600), [_offer(peer.peer_id, root)])
            started = time.monotonic()
            cached = await node.downloader.fetch(_want(node, pkg))
            return cached, time.monotonic() - started

    cached, took = asyncio.run(_running(node, body))
    assert cached.read_bytes() == pkg.path.read_bytes()
    assert mirror.statuses(pkg.filename) == []  # not even asked: the peer delivered it all
    print(f"\nbitswap source: {pkg.size / took / 2**20:.1f} MiB/s ({pkg.size} bytes, {took:.2f} s)")


async def _silent_gateway(seen: list[str]) -> tuple[web.AppRunner, str]:
    """A gateway that accepts every request and never answers (nor closes)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_a_silent_peer_is_replaced_by_the_mirror_long_before_a_stall(
    tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, pacman_gpgdir: Path
) -> None:
    """A peer that accepts and sends nothing is dropped after FIRST_BYTE, not after the stall
    timeout of 9 s, which with the mirror's time would be past pacman's 10 s rule."""
    pkg = test_repo.packages["bigpkg"]
    node = _node(tmp_path, mirror, pacman_gpgdir)
    seen: list[str] = []

    async def body() -> tuple[Path, str]:
        runner, url = await _silent_gateway(seen)
        root = CID.parse("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
        try:
            async with aiohttp.ClientSession() as session:
                offer = _offer("12D3KooWSilentPeer", root, gateway=url)
                _use_peers(node, session, Reputation(3, 3600), [offer])
                cached = await node.downloader.fetch(_want(node, pkg))
                return cached, node.peer_health.state(f"peer {url}").last_error
        finally:
            await runner.cleanup()

    cached, why = asyncio.run(_running(node, body, bound=30.0))
    assert seen  # the peer was asked first
    assert f"sent no byte within {FIRST_BYTE:g} s" in why
    assert cached.read_bytes() == pkg.path.read_bytes()
    assert [h.get("Range") for _, _, h in mirror.requests_for(pkg.filename)] == [None]
