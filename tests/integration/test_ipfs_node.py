"""What pacswarm verified becomes IPFS content: same CIDs as kubo, served by its gateway."""

from __future__ import annotations

import asyncio
import io
import time
import urllib.request

import aiohttp

from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.gatewayclient import fetch_car
from pacswarm.ipfs.unixfs import import_bytes
from tests.integration.conftest import NodeFactory
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.testrepo import Package, TestRepo


def _wait_for_root(node: PacswarmNode, pkg: Package, timeout: float = 20) -> CID:
    """The gateway answers for the package's CID once the import has run."""
    root = import_bytes(pkg.path.read_bytes()).root
    url = f"{node.gateway_url}/ipfs/{root}?format=raw"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200
                return root
        except urllib.error.HTTPError as e:
            assert e.code == 404, e
            assert time.monotonic() < deadline, f"{root} never appeared:\n{node.log()}"
            time.sleep(0.1)


def _cache(node: PacswarmNode, pkg: Package) -> CID:
    """Have the node download, verify and cache ``pkg`` (as pacman would), then its root CID."""
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    assert node.get(f"/core/os/x86_64/{pkg.filename}")[0] == 200
    return _wait_for_root(node, pkg)


def _fetch_car(node: PacswarmNode, root: CID) -> bytes:
    async def run() -> bytes:
        out = io.BytesIO()
        async with aiohttp.ClientSession() as session:
            await fetch_car(session, node.gateway_url, root, out, max_size=64 << 20)
        return out.getvalue()

    return asyncio.run(run())


def test_cached_package_is_served_by_cid_over_the_gateway(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    bigpkg = test_repo.packages["bigpkg"]
    root = _cache(node, bigpkg)
    assert root.codec == 0x70 and str(root).startswith("bafybei")  # a multi-chunk dag-pb root
    assert _fetch_car(node, root) == bigpkg.path.read_bytes()
    # The blockstore holds no second copy: only the cache file and a small index.
    blocks_db = node.data_dir / "ipfs" / "blocks.sqlite"
    assert blocks_db.stat().st_size < bigpkg.size // 10


def test_packages_cached_before_a_restart_are_imported(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    hello = test_repo.packages["hello"]
    _cache(node, hello)
    node.stop()
    (node.data_dir / "ipfs" / "blocks.sqlite").unlink()  # as if IPFS were new
    for extra in ("blocks.sqlite-wal", "blocks.sqlite-shm"):
        (node.data_dir / "ipfs" / extra).unlink(missing_ok=True)
    node.start()
    _wait_for_root(node, hello)


def test_bit_rot_in_the_cache_is_detected_and_the_package_dropped(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    bigpkg = test_repo.packages["bigpkg"]
    root = _cache(node, bigpkg)
    cached = node.data_dir / "cache/core/x86_64" / bigpkg.filename
    with open(cached, "r+b") as f:  # flip one byte in the first chunk
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    first_leaf = import_bytes(bigpkg.path.read_bytes()).leaves[0].cid
    req = f"{node.gateway_url}/ipfs/{first_leaf}?format=raw"
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("a corrupt block was served")
    except urllib.error.HTTPError as e:
        assert e.code == 404
    deadline = time.monotonic() + 10
    while cached.exists():
        assert time.monotonic() < deadline, "the corrupt package stayed in the cache"
        time.sleep(0.05)
    # pacman asking again gets a fresh, verified copy from the mirror.
    status, _, body = node.get(f"/core/os/x86_64/{bigpkg.filename}")
    assert status == 200 and body == bigpkg.path.read_bytes()
    assert _wait_for_root(node, bigpkg) == root


def test_evicting_a_package_removes_its_blocks(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    """Eviction goes through the running node; here driven in-process on its real parts."""
    from pacswarm.config import load_config
    from pacswarm.node import Node
    from pacswarm.requestpath import FileKind, RequestPath

    node = make_node([mirror.url_template])
    hello = test_repo.packages["hello"]
    root = _cache(node, hello)
    node.stop()

    async def evict() -> bool:
        config = load_config(node.config, {"data_dir": node.data_dir, "gpgdir": node.gpgdir})
        local = Node(config, [mirror.url_template])
        local.store.open()
        await local.ipfs.start()
        try:
            rp = RequestPath("core", "x86_64", hello.filename, FileKind.PACKAGE)
            assert local.ipfs.blocks is not None and local.ipfs.blocks.has(root)
            local.evict(rp)
            return local.ipfs.blocks.has(root) or local.store.cache_path(rp).exists()
        finally:
            await local.ipfs.stop()
            local.store.close()

    assert asyncio.run(evict()) is False
