"""The Helia harness itself: a real JS IPFS peer that later interop tests run against pacswarm.

Helia <-> Helia over bitswap, Helia's CIDs against pacswarm's kubo-compatible importer, and
Helia fetching from a trustless gateway (a tiny one written here, serving blocks pacswarm's
importer computed). Skipped only when Node >= 20 or ``npm ci`` in tests/interop/helia is missing.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from pacswarm.ipfs.cid import CID, CIDError
from pacswarm.ipfs.unixfs import CHUNK_SIZE, MAX_LINKS, import_bytes
from tests.support.helia import (
    HeliaError,
    HeliaPeer,
    PubsubMessage,
    helia_available,
    unavailable_reason,
)

pytestmark = [
    pytest.mark.skipif(not helia_available(), reason=unavailable_reason()),
    pytest.mark.timeout(180),
]

MIB = 1024 * 1024


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(scope="module")
def helia_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliaPeer]:
    log = tmp_path_factory.mktemp("helia") / "a.log"
    with HeliaPeer(log_path=log) as peer:
        yield peer


@pytest.fixture(scope="module")
def helia_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliaPeer]:
    log = tmp_path_factory.mktemp("helia") / "b.log"
    with HeliaPeer(log_path=log) as peer:
        yield peer


def test_peer_identity(helia_a: HeliaPeer) -> None:
    info = helia_a.id()
    assert info["peer_id"] == helia_a.peer_id
    assert helia_a.multiaddr.startswith("/ip4/127.0.0.1/tcp/")
    assert helia_a.multiaddr.endswith(f"/p2p/{helia_a.peer_id}")


def test_bitswap_between_two_helias(tmp_path: Path, helia_a: HeliaPeer, helia_b: HeliaPeer) -> None:
    data = random_bytes(5 * MIB, seed=1)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    cid = helia_a.add(src)
    assert cid == str(import_bytes(data).root)

    assert helia_b.dial(helia_a.multiaddr) == helia_a.peer_id
    assert helia_a.peer_id in {p["peer_id"] for p in helia_b.peers()}
    out = tmp_path / "out.bin"
    assert helia_b.cat(cid, out, timeout=60) == len(data)
    assert out.read_bytes() == data


def test_cat_of_missing_cid_times_out(
    tmp_path: Path, helia_a: HeliaPeer, helia_b: HeliaPeer
) -> None:
    """Nobody has it: the call fails within its bound, and the peer stays usable."""
    helia_b.dial(helia_a.multiaddr)
    missing = str(import_bytes(random_bytes(1000, seed=99)).root)
    with pytest.raises(HeliaError, match="cat"):
        helia_b.cat(missing, tmp_path / "missing.bin", timeout=2)
    assert helia_b.id()["peer_id"] == helia_b.peer_id


@pytest.mark.parametrize(
    "size",
    [0, 1000, CHUNK_SIZE, CHUNK_SIZE + 1, MAX_LINKS * CHUNK_SIZE + 1, 5 * MIB],
    ids=["empty", "1000", "one-chunk", "chunk+1", "174-chunks+1", "5MiB"],
)
def test_cid_matches_pacswarm_importer(tmp_path: Path, helia_a: HeliaPeer, size: int) -> None:
    data = random_bytes(size, seed=size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert helia_a.add(src, timeout=120) == str(import_bytes(data).root)


class TrustlessGateway:
    """A minimal trustless gateway: ``GET /ipfs/{cid}?format=raw`` -> the raw block, or 404."""

    def __init__(self, blocks: dict[CID, bytes]) -> None:
        self.blocks = blocks
        self.requests: list[tuple[str, str, str]] = []  # (path, query, Accept)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        self.requests.append((request.path, request.query_string, accept))
        fmt = request.query.get("format")
        if fmt != "raw" and "application/vnd.ipld.raw" not in accept:
            return web.Response(status=400, text="only format=raw (application/vnd.ipld.raw)")
        try:
            cid = CID.parse(request.match_info["cid"])
        except CIDError as e:
            return web.Response(status=400, text=str(e))
        block = self.blocks.get(cid)
        if block is None:
            return web.Response(status=404, text="block not found")
        return web.Response(
            body=block,
            headers={
                "Content-Type": "application/vnd.ipld.raw",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "public, max-age=29030400, immutable",
                "Etag": f'"{cid}.raw"',
            },
        )

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_get("/ipfs/{cid}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> TrustlessGateway:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def blocks_of(data: bytes) -> dict[CID, bytes]:
    result = import_bytes(data)
    blocks = {leaf.cid: data[leaf.offset : leaf.offset + leaf.length] for leaf in result.leaves}
    blocks.update({inner.cid: inner.block for inner in result.inner})
    return blocks


@pytest.mark.parametrize("size", [1000, 3 * MIB + 7], ids=["one-block", "multi-block"])
def test_cat_from_trustless_gateway(tmp_path: Path, helia_b: HeliaPeer, size: int) -> None:
    data = random_bytes(size, seed=1000 + size)
    root = import_bytes(data).root
    blocks = blocks_of(data)
    with TrustlessGateway(blocks) as gateway:
        out = tmp_path / "out.bin"
        assert helia_b.cat_gateway(str(root), gateway.url, out, timeout=30) == size
        assert out.read_bytes() == data
        # Every block came from the gateway, asked for as a raw block.
        asked = {CID.parse(path.removeprefix("/ipfs/")) for path, _, _ in gateway.requests}
        assert asked == set(blocks)
        assert all("format=raw" in query for _, query, _ in gateway.requests)
        assert all("application/vnd.ipld.raw" in accept for _, _, accept in gateway.requests)


def test_cat_gateway_missing_block_fails(tmp_path: Path, helia_b: HeliaPeer) -> None:
    data = random_bytes(2 * CHUNK_SIZE + 1, seed=7)
    root = import_bytes(data).root
    blocks = blocks_of(data)
    del blocks[import_bytes(data).leaves[1].cid]  # a hole in the middle of the file
    with TrustlessGateway(blocks) as gateway, pytest.raises(HeliaError, match="cat_gateway"):
        helia_b.cat_gateway(str(root), gateway.url, tmp_path / "out.bin", timeout=5)


def test_gossipsub_between_two_helias(helia_a: HeliaPeer, helia_b: HeliaPeer) -> None:
    topic = "pacswarm-helia-harness"
    helia_b.dial(helia_a.multiaddr)
    helia_a.subscribe(topic)
    helia_b.subscribe(topic)
    deadline = time.monotonic() + 15
    while helia_a.peer_id not in helia_b.subscribers(topic):
        assert time.monotonic() < deadline, "the subscription never reached b"
        time.sleep(0.1)
    # The mesh forms on heartbeats (1 s) and a message published before that may reach
    # nobody: publish until one copy arrives.
    received: list[PubsubMessage] = []
    while not received:
        assert time.monotonic() < deadline, "no gossipsub message arrived"
        helia_b.publish(topic, b"hello from b")
        time.sleep(0.2)
        received = [m for m in helia_a.messages() if m.topic == topic]
    assert received[0].data == b"hello from b"
    assert received[0].sender == helia_b.peer_id


def test_main_node_with_gateway_broker(tmp_path: Path) -> None:
    """``HeliaPeer(gateways=...)``: its ordinary ``cat`` may use the gateway besides bitswap."""
    data = random_bytes(CHUNK_SIZE * 3, seed=11)
    root = import_bytes(data).root
    with TrustlessGateway(blocks_of(data)) as gateway:
        with HeliaPeer(gateways=(gateway.url,), log_path=tmp_path / "c.log") as peer:
            out = tmp_path / "out.bin"
            assert peer.cat(str(root), out, timeout=20) == len(data)
            assert out.read_bytes() == data
        assert gateway.requests
