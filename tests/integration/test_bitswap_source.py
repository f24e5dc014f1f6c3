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
from tests.integration.test_peer_source import _serve
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


class _Stalls:
    """The peer's blocks until ``after`` of them were served, then a stall: the peer's
    Bitswap writers break on the next block, its answers stop and the connection stays open,
    so nothing more arrives."""

    def __init__(self, blocks: PackageBlockstore, after: int) -> None:
        self._blocks = blocks
        self._after = after
        self.served = 0

    def get(self, cid: CID) -> bytes | None:
        if self.served >= self._after:
            raise RuntimeError("this peer stopped serving")
        self.served += 1
        return self._blocks.get(cid)

    def has(self, cid: CID) -> bool:
        return self._blocks.has(cid)


async def _written(node: Node, want: Want, at_least: int) -> None:
    """Wait until the download of ``want`` holds ``at_least`` bytes."""
    while (dl := node.downloader.active(want.rp)) is None or dl.written < at_least:
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("mode", ["stall", "die"])
def test_a_bitswap_peer_that_stalls_or_dies_midway_is_continued_by_the_mirror_at_its_offset(
    mode: str, tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, pacman_gpgdir: Path
) -> None:
    """Its bytes stream into the download as they arrive, so the mirror is asked only for
    the rest (a Range from the peer's offset), and our Bitswap side stops fetching."""
    pkg = test_repo.packages["largepkg"]
    node = _node(tmp_path, mirror, pacman_gpgdir)

    async def body() -> tuple[Path, int, str]:
        blocks = PackageBlockstore(tmp_path / "peer.sqlite", locate=lambda key: pkg.path)
        root = blocks.add_package("largepkg", pkg.path)
        served = _Stalls(blocks, after=30) if mode == "stall" else blocks  # ~7 MiB of 20
        async with _peer(tmp_path, served) as peer, aiohttp.ClientSession() as session:
            assert node.ipfs.host is not None and node.ipfs.host.bitswap is not None
            await node.ipfs.host.connect(peer.listen_addrs()[0])
            _use_peers(node, session, Reputation(3, 3600), [_offer(peer.peer_id, root)])
            want = _want(node, pkg)
            fetch = asyncio.ensure_future(node.downloader.fetch(want))
            if mode == "die":
                await _written(node, want, 5 << 20)
                await peer.stop()  # its connections close mid-transfer
            cached = await fetch
            why = node.peer_health.state(f"peer bitswap {peer.peer_id}").last_error
            return cached, len(node.ipfs.host.bitswap.sinks), why

    cached, fetching, why = asyncio.run(_running(node, body, bound=60.0))
    assert cached.read_bytes() == pkg.path.read_bytes()
    ranges = [h.get("Range", "") for _, _, h in mirror.requests_for(pkg.filename)]
    assert len(ranges) == 1 and ranges[0].startswith("bytes="), ranges
    offset = int(ranges[0].removeprefix("bytes=").split("-")[0])
    assert 0 < offset < pkg.size  # the peer's bytes were kept: the mirror sent only the rest
    assert fetching == 0  # the Bitswap fetch from the peer was cancelled on the trio side
    # A stall is judged by the watchdog. A dead peer is left as soon as its connection is
    # seen gone; when the machine is loaded, py-libp2p may notice the closed connection only
    # after the watchdog has (seen as "stalled: 0 bytes"): either way the mirror continued.
    causes = ("stalled",) if mode == "stall" else ("the peer disconnected", "stalled: 0 bytes")
    assert any(cause in why for cause in causes), why


async def _flipping_gateway(upstream: str) -> tuple[web.AppRunner, str]:
    """A peer gateway that relays an honest gateway's CAR with one byte flipped mid-stream:
    a block that no longer matches its CID."""

    async def handler(request: web.Request) -> web.StreamResponse:
        async with aiohttp.ClientSession() as client:
            url = f"{upstream}{request.path_qs}"
            async with client.get(url, headers={"Accept": request.headers["Accept"]}) as resp:
                body = bytearray(await resp.read())
                if resp.status == 200 and len(body) > 512:
                    body[len(body) // 2] ^= 0xFF
                kept = {k: resp.headers[k] for k in ("Content-Type",) if k in resp.headers}
                return web.Response(status=resp.status, body=bytes(body), headers=kept)

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("attack", ["wrong file", "wrong blocks"])
def test_a_peer_serving_garbage_is_struck_then_left_out(
    attack: str, tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, pacman_gpgdir: Path
) -> None:
    """Each time the package is needed the lying peer is asked first and the mirror's copy is
    cached; after ``strikes`` strikes the swarm's sources no longer include the peer."""
    hello = test_repo.packages["hello"]
    served = tmp_path / "served.pkg"
    data = bytearray(hello.path.read_bytes())
    if attack == "wrong file":
        data[100] ^= 0xFF  # a valid DAG of another file: only the sha256 can tell
    served.write_bytes(bytes(data))
    node = _node(tmp_path, mirror, pacman_gpgdir)
    strikes = 2

    async def body() -> tuple[list[int], bool, list[Source]]:
        blocks = PackageBlockstore(tmp_path / "evil.sqlite", locate=lambda key: served)
        root = blocks.add_package("evil", served)
        honest, url = await _serve(blocks)
        relay, url = (await _flipping_gateway(url)) if attack == "wrong blocks" else (None, url)
        reputation = Reputation(strikes, 3600)
        asked: list[int] = []
        try:
            async with aiohttp.ClientSession() as session:
                offer = _offer("12D3KooWLiar", root, gateway=url)
                _use_peers(node, session, reputation, [offer])
                for _ in range(strikes + 1):
                    want = _want(node, hello)
                    asked.append(len(node.downloader.plan.peers(want)))
                    cached = await node.downloader.fetch(want)
                    assert cached.read_bytes() == hello.path.read_bytes()
                    node.evict(want.rp)  # needed again: a new download each round
                banned = reputation.ignored("12D3KooWLiar", time.monotonic())
                left = peer_sources([offer], None, session, reputation, node.peer_health, 1.0)
                return asked, banned, left
        finally:
            if relay is not None:
                await relay.cleanup()
            await honest.cleanup()
            blocks.close()

    asked, banned, left = asyncio.run(_running(node, body))
    assert asked == [1, 1, 0]  # asked while it had strikes left, then left out
    assert banned and left == []
    assert mirror.hits(hello.filename) == strikes + 1  # every copy cached came from the mirror
