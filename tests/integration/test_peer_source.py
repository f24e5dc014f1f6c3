"""A package from a peer's gateway enters the cache only if it passes the mirror checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import web

from pacswarm.config import load_config
from pacswarm.fetch.download import DownloadFailed
from pacswarm.fetch.peers import GatewaySource, PeerHealth
from pacswarm.fetch.source import Want
from pacswarm.ipfs.blockstore import PackageBlockstore
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.gateway import gateway_app
from pacswarm.node import Node
from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import FileKind, RequestPath
from tests.integration.conftest import NodeFactory
from tests.integration.test_ipfs_node import _wait_for_root
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo

T = TypeVar("T")
CORE_DB = RequestPath("core", "x86_64", "core.db", FileKind.DB)


def _local_node(tmp_path: Path, mirror: MirrorServer, gpgdir: Path) -> Node:
    """Node B, run in this process so the test can call its peer source directly."""
    config_file = tmp_path / "b.toml"
    config_file.write_text(
        'gateway_listen = "127.0.0.1:0"\np2p_listen = ["/ip4/127.0.0.1/tcp/0"]\n'
        "bootstrap = []\nmdns = false\n"
    )
    config = load_config(config_file, {"data_dir": tmp_path / "b", "gpgdir": gpgdir})
    return Node(config, [mirror.url_template])


async def _with_node_b(node: Node, body: Callable[[], Awaitable[T]]) -> T:
    node.store.open()
    await node.upstream.start()
    await node.ipfs.start()
    try:
        await node.dbs.refresh(CORE_DB)  # pacman -Sy: the db always comes from a mirror
        return await body()
    finally:
        await node.close_peer_session()
        await node.ipfs.stop()
        await node.upstream.close()
        node.store.close()


async def _serve(blocks: PackageBlockstore) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(gateway_app(blocks))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_package_from_a_peer_gateway_is_verified_then_cached(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    pacman_gpgdir: Path,
) -> None:
    peer = make_node([mirror.url_template], name="peer")
    bigpkg = test_repo.packages["bigpkg"]
    assert peer.get("/core/os/x86_64/core.db")[0] == 200
    assert peer.get(f"/core/os/x86_64/{bigpkg.filename}")[0] == 200
    root = _wait_for_root(peer, bigpkg)
    node = _local_node(tmp_path, mirror, pacman_gpgdir)
    rp = RequestPath("core", "x86_64", bigpkg.filename, FileKind.PACKAGE)

    async def body() -> Path:
        record = node.dbs.lookup("core", "x86_64", bigpkg.filename)
        assert record is not None
        return await node.fetch_from_peer(rp, record, peer.gateway_url, root)

    cached = asyncio.run(_with_node_b(node, body))
    assert cached == node.store.cache_path(rp)
    assert cached.read_bytes() == bigpkg.path.read_bytes()
    assert mirror.hits(bigpkg.filename) == 1  # only the peer's own download touched the mirror


@pytest.mark.parametrize("attack", ["tampered", "oversized"])
def test_a_lying_peer_gets_nothing_into_the_cache(
    attack: str, tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, pacman_gpgdir: Path
) -> None:
    """The peer serves a valid DAG under the root it announced, but not the db's package.

    The same admission as for mirrors refuses its bytes; the download goes on with the next
    source of the plan (the mirror), and the peer is penalised.
    """
    hello = test_repo.packages["hello"]
    fake = tmp_path / "fake.pkg"
    data = bytearray(hello.path.read_bytes())
    if attack == "tampered":
        data[100] ^= 0xFF  # same size, other bytes: passes every CID check, not the sha256
    else:
        data += bytes(1 << 20)  # more than the db's size: never written past it
    fake.write_bytes(bytes(data))
    node = _local_node(tmp_path, mirror, pacman_gpgdir)
    rp = RequestPath("core", "x86_64", hello.filename, FileKind.PACKAGE)

    async def body() -> tuple[Path, bool]:
        blocks = PackageBlockstore(tmp_path / "evil.sqlite", locate=lambda key: fake)
        root: CID = blocks.add_package("evil", fake)
        runner, url = await _serve(blocks)
        try:
            record = node.dbs.lookup("core", "x86_64", hello.filename)
            assert record is not None
            cached = await node.fetch_from_peer(rp, record, url, root)
            return cached, node.peer_health.penalised(f"peer {url}", time.monotonic())
        finally:
            await runner.cleanup()
            blocks.close()

    cached, penalised = asyncio.run(_with_node_b(node, body))
    assert cached.read_bytes() == hello.path.read_bytes()  # the mirror's, not the peer's
    assert penalised
    assert mirror.hits(hello.filename) == 1
    assert not list((tmp_path / "b" / "tmp").iterdir())


def test_a_lying_peer_alone_fails_the_download_and_caches_nothing(
    tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, pacman_gpgdir: Path
) -> None:
    """With the mirror gone too, a tampering peer's bytes are refused and nothing is kept."""
    hello = test_repo.packages["hello"]
    fake = tmp_path / "fake.pkg"
    data = bytearray(hello.path.read_bytes())
    data[100] ^= 0xFF
    fake.write_bytes(bytes(data))
    node = _local_node(tmp_path, mirror, pacman_gpgdir)
    rp = RequestPath("core", "x86_64", hello.filename, FileKind.PACKAGE)

    async def body() -> str:
        blocks = PackageBlockstore(tmp_path / "evil.sqlite", locate=lambda key: fake)
        root: CID = blocks.add_package("evil", fake)
        runner, url = await _serve(blocks)
        mirror.set_fault("500", hello.filename)
        try:
            record = node.dbs.lookup("core", "x86_64", hello.filename)
            assert record is not None
            with pytest.raises(DownloadFailed) as failed:
                await node.fetch_from_peer(rp, record, url, root)
            return str(failed.value)
        finally:
            await runner.cleanup()
            blocks.close()

    reason = asyncio.run(_with_node_b(node, body))
    assert "peer http://127.0.0.1" in reason and "sha256" in reason
    assert not node.store.cache_path(rp).exists()
    assert not list((tmp_path / "b" / "tmp").iterdir())


@pytest.mark.parametrize("offset", [0, 1, 5 * (1 << 20) + 17])
def test_a_peer_gateway_source_streams_from_any_offset(
    offset: int, tmp_path: Path, test_repo: TestRepo
) -> None:
    """What the download asks of a peer after another source failed mid-file: the bytes from
    that offset on, each block checked against its CID on the way."""
    pkg = test_repo.packages["largepkg"]
    data = pkg.path.read_bytes()
    rp = RequestPath("extra", "x86_64", pkg.filename, FileKind.PACKAGE)
    record = PackageRecord(pkg.filename, "largepkg", "1.0-1", pkg.size, pkg.sha256, None)

    async def body() -> tuple[bytes, bool]:
        blocks = PackageBlockstore(tmp_path / "peer.sqlite", locate=lambda key: pkg.path)
        root: CID = blocks.add_package("largepkg", pkg.path)
        runner, url = await _serve(blocks)
        health = PeerHealth(60.0)
        try:
            async with aiohttp.ClientSession() as session:
                source = GatewaySource(url, root, session, health)
                got = b"".join([c async for c in source.stream(Want(rp, record), offset)])
                return got, source.can_deliver(Want(rp, record), offset)
        finally:
            await runner.cleanup()
            blocks.close()

    got, deliverable = asyncio.run(body())
    assert deliverable
    assert got == data[offset:]
